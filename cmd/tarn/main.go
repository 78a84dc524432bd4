// Command tarn is the Tarn CSI driver: one binary serving the Identity,
// Controller and Node services for node-local volumes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/backend/loop"
	"github.com/tarn-csi/tarn/pkg/backend/lvm"
	"github.com/tarn-csi/tarn/pkg/driver"
	"github.com/tarn-csi/tarn/pkg/faults"
	"github.com/tarn-csi/tarn/pkg/metrics"
	"github.com/tarn-csi/tarn/pkg/registration"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		if err := serve(os.Args[2:]); err != nil {
			klog.ErrorS(err, "tarn serve failed")
			klog.Flush()
			os.Exit(1)
		}
	case "expansion-front":
		if err := expansionFront(os.Args[2:]); err != nil {
			klog.ErrorS(err, "tarn expansion-front failed")
			klog.Flush()
			os.Exit(1)
		}
	case "version", "--version", "-version":
		fmt.Println(version)
	case "help", "-h", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "tarn: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, `Usage: tarn <command> [flags]

Commands:
  serve            serve the CSI Identity, Controller and Node services
  expansion-front  answer csi-resizer so that volumes grow on their nodes
  version          print the version

Run 'tarn serve -h' for the flags of serve.
`)
}

// serveConfig holds the flags of 'tarn serve'.
type serveConfig struct {
	endpoint        string
	sidecarEndpoint string
	kubeletDir      string
	nodeID          string
	backendKind     string
	poolDir         string
	directIO        bool
	disableReflink  bool
	freezeTimeout   time.Duration
	maxVolumes      int64
	volumeGroup     string
	thinPool        string
	// registrationDir, kubeletEndpoint and healthAddress make tarn its own
	// node-driver-registrar and liveness probe in Kubernetes.
	registrationDir string
	kubeletEndpoint string
	healthAddress   string
	metricsAddress  string
	// socketGroup, when >= 0, may reach the socket: sidecars then run as
	// a non-root user in that group.
	socketGroup int
}

func parseServeFlags(args []string) (serveConfig, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	hostname, _ := os.Hostname()
	var c serveConfig
	fs.StringVar(&c.endpoint, "endpoint", "unix:///run/tarn/csi.sock", "CSI endpoint (unix socket, owner only): the kubelet's; with --sidecar-endpoint it serves only Identity and Node")
	fs.StringVar(&c.sidecarEndpoint, "sidecar-endpoint", "", "second CSI socket for the sidecars: Identity, Controller and NodeGetInfo, open to --socket-group-id; empty: --endpoint serves everything")
	fs.StringVar(&c.kubeletDir, "kubelet-dir", "/var/lib/kubelet", "the kubelet's root directory; staging and target paths must lie under it")
	fs.StringVar(&c.nodeID, "node-id", hostname, "this node's ID, also its topology value")
	fs.StringVar(&c.backendKind, "backend", "loop", "storage backend: loop or lvm")
	fs.StringVar(&c.poolDir, "pool-dir", "/var/lib/tarn/pool", "loop backend: directory holding the pool")
	fs.BoolVar(&c.directIO, "direct-io", true, "loop backend: attach loop devices with direct I/O where the pool allows it")
	fs.BoolVar(&c.disableReflink, "disable-reflink", false, "loop backend: always copy instead of reflinking snapshots and clones")
	fs.StringVar(&c.volumeGroup, "volume-group", "", "lvm backend: volume group holding the volumes")
	fs.StringVar(&c.thinPool, "thin-pool", "", "lvm backend: thin pool in the volume group; volumes are thin by default when set, thick otherwise")
	fs.DurationVar(&c.freezeTimeout, "freeze-timeout", 10*time.Second, "longest a filesystem stays frozen for a snapshot")
	fs.Int64Var(&c.maxVolumes, "max-volumes-per-node", 0, "volumes this node may hold, reported to the scheduler; 0 is no limit")
	fs.StringVar(&c.registrationDir, "registration-dir", "", "kubelet plugin registration directory (e.g. /var/lib/kubelet/plugins_registry); empty: do not register")
	fs.StringVar(&c.kubeletEndpoint, "kubelet-endpoint", "", "path of the CSI socket as the kubelet sees it; default: the --endpoint path")
	fs.StringVar(&c.healthAddress, "health-address", "", "address for GET /healthz (e.g. :9808); empty: off")
	fs.StringVar(&c.metricsAddress, "metrics-address", "", "serve Prometheus metrics at http://ADDRESS/metrics (e.g. :9809); empty: off")
	fs.IntVar(&c.socketGroup, "socket-group-id", -1, "group that may also connect to the sidecar socket (mode 0660); -1: only the owner")
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	klogFlags.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.nodeID == "" {
		return c, errors.New("--node-id is empty and the hostname is unknown")
	}
	return c, nil
}

func serve(args []string) error {
	c, err := parseServeFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Read once, here: only a binary built with the faultinject tag can be
	// armed, and the injector reaches the code through its configs.
	inj, err := faults.FromEnv(os.Getenv)
	if err != nil {
		return err
	}

	if c.backendKind == "loop" {
		if err := os.MkdirAll(c.poolDir, 0o700); err != nil {
			return fmt.Errorf("create pool directory: %w", err)
		}
	}
	lock, err := lockInstance(instanceLockPath(c))
	if err != nil {
		return err
	}
	defer lock.Close()

	var m *metrics.Metrics
	// The backend reports its start-up sweep, so it gets the metrics
	// before it opens the pool.
	var rec metrics.Recorder = metrics.Nop{}
	if c.metricsAddress != "" {
		m = metrics.New(metrics.Options{})
		if _, err := m.Start(ctx, c.metricsAddress); err != nil {
			return err
		}
		rec = m
	}
	b, err := openBackend(ctx, c, rec, inj)
	if err != nil {
		return err
	}
	if m != nil {
		if err := m.RegisterPool(b); err != nil {
			return err
		}
	}
	d, err := driver.New(driver.Config{
		Metrics:           m,
		Endpoint:          c.endpoint,
		SidecarEndpoint:   c.sidecarEndpoint,
		KubeletDir:        c.kubeletDir,
		NodeID:            c.nodeID,
		Version:           version,
		Backend:           b,
		MaxVolumesPerNode: c.maxVolumes,
		SocketGroup:       socketGroup(c.socketGroup),
		Faults:            inj,
	})
	if err != nil {
		return err
	}
	return runAll(ctx, d, c)
}

func socketGroup(gid int) *int {
	if gid < 0 {
		return nil
	}
	return &gid
}

// runAll runs the CSI server and, when configured, the kubelet registration
// and the health endpoint; the first to fail stops the others.
func runAll(ctx context.Context, d *driver.Driver, c serveConfig) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tasks := []func(context.Context) error{d.Run}
	if c.registrationDir != "" {
		endpoint := c.kubeletEndpoint
		if endpoint == "" {
			endpoint = strings.TrimPrefix(strings.TrimPrefix(c.endpoint, "unix://"), "unix:")
		}
		cfg := registration.Config{Dir: c.registrationDir, DriverName: driver.DriverName, CSIEndpoint: endpoint}
		tasks = append(tasks, func(ctx context.Context) error { return registration.Serve(ctx, cfg, nil) })
	}
	if c.healthAddress != "" {
		tasks = append(tasks, func(ctx context.Context) error { return d.ServeHealth(ctx, c.healthAddress) })
	}
	errc := make(chan error, len(tasks))
	for _, task := range tasks {
		go func() {
			err := task(ctx)
			cancel()
			errc <- err
		}()
	}
	var first error
	for range tasks {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func openBackend(ctx context.Context, c serveConfig, rec metrics.Recorder, inj faults.Injector) (backend.Backend, error) {
	switch c.backendKind {
	case "loop":
		return loop.New(ctx, loop.Config{
			PoolDir:        c.poolDir,
			DirectIO:       c.directIO,
			DisableReflink: c.disableReflink,
			FreezeTimeout:  c.freezeTimeout,
			Metrics:        rec,
			Faults:         inj,
		})
	case "lvm":
		if c.volumeGroup == "" {
			return nil, errors.New("the lvm backend needs --volume-group")
		}
		return lvm.New(ctx, lvm.Config{
			VolumeGroup:   c.volumeGroup,
			ThinPool:      c.thinPool,
			FreezeTimeout: c.freezeTimeout,
			Metrics:       rec,
			Faults:        inj,
		})
	default:
		return nil, fmt.Errorf("unknown backend %q (supported: loop, lvm)", c.backendKind)
	}
}
