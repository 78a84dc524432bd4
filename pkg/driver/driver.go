// Package driver serves the CSI Identity, Controller and Node services. Its
// handlers are thin: they validate the request, take the per-object
// in-flight lock, call the backend, and map errors to gRPC codes.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/faults"
	"github.com/tarn-csi/tarn/pkg/inflight"
	"github.com/tarn-csi/tarn/pkg/metrics"
)

const (
	// DriverName is the CSI driver name users put in StorageClasses.
	DriverName = "tarn.csi.dev"
	// TopologyKey labels the node that holds a volume.
	TopologyKey = "topology.tarn.csi.dev/node"
)

// Config is everything the driver needs; there is no package-level state.
type Config struct {
	// Endpoint is where to listen, e.g. unix:///run/tarn/csi.sock. Only
	// its owner (root) may connect: it serves the Node service, whose
	// calls mount and unmount on the host, so it is the kubelet's.
	Endpoint string
	// SidecarEndpoint, when set, is a second socket for the sidecars
	// (csi-provisioner, csi-snapshotter), open to SocketGroup: it serves
	// Identity, Controller and NodeGetInfo, and Endpoint then serves only
	// Identity and Node. Empty: Endpoint serves every service.
	SidecarEndpoint string
	// KubeletDir is the directory every staging and target path must lie
	// under (see confinePath).
	KubeletDir string
	NodeID     string
	Version    string
	Backend    backend.Backend
	// Mounter is the mount seam; nil means the real mount-utils.
	Mounter Mounter
	// MaxVolumesPerNode is reported by NodeGetInfo; 0 means no limit.
	MaxVolumesPerNode int64
	// Metrics records every CSI call; nil records nothing.
	Metrics *metrics.Metrics
	// SocketGroup, when not nil, may reach the sidecar socket too (mode
	// 0660), so that sidecars can run as a non-root user of that group.
	// It needs SidecarEndpoint: the group never reaches the Node service.
	SocketGroup *int
	// Faults is told when a node call reaches each of its fault points
	// (see package faults); nil means faults.Nop.
	Faults faults.Injector
}

// Driver implements the three CSI services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg      Config
	backend  backend.Backend
	mounter  Mounter
	faults   faults.Injector
	inFlight inflight.Set
	// openat2 resolves node paths beneath the kubelet directory; a seam so
	// that tests reach every way the kernel can fail it.
	openat2 func(dirfd int, path string, how *unix.OpenHow) (int, error)
}

// New checks the configuration and builds a driver.
func New(cfg Config) (*Driver, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("node ID is empty")
	}
	if cfg.Backend == nil {
		return nil, errors.New("no backend")
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.SocketGroup != nil && cfg.SidecarEndpoint == "" {
		return nil, errors.New("a socket group needs a sidecar endpoint: the group must not reach the Node service")
	}
	if !filepath.IsAbs(cfg.KubeletDir) {
		return nil, fmt.Errorf("kubelet directory %q is not an absolute path", cfg.KubeletDir)
	}
	cfg.KubeletDir = filepath.Clean(cfg.KubeletDir)
	inj := faults.OrNop(cfg.Faults)
	m := cfg.Mounter
	if m == nil {
		m = newMounter(inj)
	}
	if err := checkOpenat2(); err != nil {
		return nil, err
	}
	return &Driver{cfg: cfg, backend: cfg.Backend, mounter: m, faults: inj, openat2: unix.Openat2}, nil
}

// Run listens on the endpoints and serves until ctx is cancelled, then
// stops gracefully: calls in progress finish, new ones are refused.
func (d *Driver) Run(ctx context.Context) error {
	var servers []*grpc.Server
	stopAll := func() {
		for _, s := range servers {
			s.GracefulStop()
		}
	}
	errc := make(chan error, 2)
	for _, sock := range d.sockets() {
		lis, cleanup, err := listen(sock.endpoint, sock.group)
		if err != nil {
			stopAll()
			return err
		}
		defer cleanup()
		chain := append(d.interceptors(), serveOnly(sock.name, sock.serves))
		srv := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...))
		csi.RegisterIdentityServer(srv, d)
		csi.RegisterControllerServer(srv, d)
		csi.RegisterNodeServer(srv, d)
		servers = append(servers, srv)
		go func() { errc <- srv.Serve(lis) }()
		klog.InfoS("Serving CSI", "socket", sock.name, "endpoint", sock.endpoint, "driver", DriverName,
			"version", d.cfg.Version, "nodeID", d.cfg.NodeID, "backend", d.backend.Kind())
	}
	select {
	case <-ctx.Done():
		klog.InfoS("Stopping gracefully")
		stopAll()
		return nil
	case err := <-errc:
		stopAll()
		return err
	}
}

// socket is one endpoint and the calls it serves.
type socket struct {
	name     string
	endpoint string
	group    *int
	serves   func(method string) bool
}

// sockets splits the services between the kubelet's socket and the
// sidecars': a sidecar (or any process of its group) that could call the
// Node service could mount any volume anywhere on the host as root.
func (d *Driver) sockets() []socket {
	if d.cfg.SidecarEndpoint == "" {
		return []socket{{name: "csi", endpoint: d.cfg.Endpoint, serves: func(string) bool { return true }}}
	}
	return []socket{
		{name: "kubelet", endpoint: d.cfg.Endpoint, serves: func(m string) bool {
			return strings.HasPrefix(m, identityService) || strings.HasPrefix(m, nodeService)
		}},
		{name: "sidecar", endpoint: d.cfg.SidecarEndpoint, group: d.cfg.SocketGroup, serves: func(m string) bool {
			// csi-provisioner reads the node's topology with NodeGetInfo.
			return strings.HasPrefix(m, identityService) || strings.HasPrefix(m, controllerService) ||
				m == nodeService+"NodeGetInfo"
		}},
	}
}

const (
	identityService   = "/csi.v1.Identity/"
	controllerService = "/csi.v1.Controller/"
	nodeService       = "/csi.v1.Node/"
)

// serveOnly refuses, with PermissionDenied, the calls a socket does not
// serve, before any handler sees them.
func serveOnly(name string, serves func(string) bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !serves(info.FullMethod) {
			return nil, status.Errorf(codes.PermissionDenied, "%s is not served on the %s socket", info.FullMethod, name)
		}
		return handler(ctx, req)
	}
}

// listen opens a unix socket reachable only by its owner (and group, when
// one is given), replacing a stale socket left by a previous run.
func listen(endpoint string, group *int) (net.Listener, func(), error) {
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		// Only a socket nobody answers on is stale: removing a live one
		// would cut its server off from every new client.
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			conn.Close()
			return nil, nil, fmt.Errorf("another process is serving on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, nil, fmt.Errorf("remove stale socket: %w", err)
		}
		klog.InfoS("Removed stale socket", "path", path)
	}
	// Tighten the umask window: the socket is created 0600 directly, so no
	// other user can connect between bind and chmod.
	lis, err := listenPrivate(path)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if group != nil {
		if err := os.Chown(path, -1, *group); err != nil {
			lis.Close()
			return nil, nil, fmt.Errorf("chown socket to group %d: %w", *group, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		lis.Close()
		return nil, nil, fmt.Errorf("chmod socket: %w", err)
	}
	return lis, func() { lis.Close(); _ = os.Remove(path) }, nil
}

// socketPath accepts unix:///abs/path, unix:/abs/path and a bare path.
func socketPath(endpoint string) (string, error) {
	if !strings.Contains(endpoint, "://") && !strings.HasPrefix(endpoint, "unix:") {
		if endpoint == "" {
			return "", errors.New("endpoint is empty")
		}
		return endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	if u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: only unix sockets are served", endpoint)
	}
	path := u.Path
	if path == "" {
		path = u.Opaque
	}
	if u.Host != "" {
		path = "/" + u.Host + path
	}
	if path == "" {
		return "", fmt.Errorf("endpoint %q has no path", endpoint)
	}
	return path, nil
}

// lock claims objects for one call, or answers Aborted when another call
// holds any of them.
func (d *Driver) lock(keys ...string) (func(), error) {
	release, ok := d.inFlight.TryAcquire(keys...)
	if !ok {
		return nil, errAborted(keys)
	}
	return release, nil
}
