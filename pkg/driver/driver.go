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

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
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
	// Endpoint is where to listen, e.g. unix:///run/tarn/csi.sock.
	Endpoint string
	NodeID   string
	Version  string
	Backend  backend.Backend
	// Mounter is the mount seam; nil means the real mount-utils.
	Mounter Mounter
	// MaxVolumesPerNode is reported by NodeGetInfo; 0 means no limit.
	MaxVolumesPerNode int64
	// Metrics records every CSI call; nil records nothing.
	Metrics *metrics.Metrics
	// SocketGroup, when not nil, may reach the socket too (mode 0660), so
	// that sidecars can run as a non-root user of that group.
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
	server   *grpc.Server
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
	inj := faults.OrNop(cfg.Faults)
	m := cfg.Mounter
	if m == nil {
		m = newMounter(inj)
	}
	return &Driver{cfg: cfg, backend: cfg.Backend, mounter: m, faults: inj}, nil
}

// Run listens on the endpoint and serves until ctx is cancelled, then stops
// gracefully: calls in progress finish, new ones are refused.
func (d *Driver) Run(ctx context.Context) error {
	lis, cleanup, err := listen(d.cfg.Endpoint, d.cfg.SocketGroup)
	if err != nil {
		return err
	}
	defer cleanup()
	d.server = grpc.NewServer(grpc.ChainUnaryInterceptor(d.interceptors()...))
	csi.RegisterIdentityServer(d.server, d)
	csi.RegisterControllerServer(d.server, d)
	csi.RegisterNodeServer(d.server, d)

	errc := make(chan error, 1)
	go func() { errc <- d.server.Serve(lis) }()
	klog.InfoS("Serving CSI", "endpoint", d.cfg.Endpoint, "driver", DriverName, "version", d.cfg.Version,
		"nodeID", d.cfg.NodeID, "backend", d.backend.Kind())
	select {
	case <-ctx.Done():
		klog.InfoS("Stopping gracefully")
		d.server.GracefulStop()
		return nil
	case err := <-errc:
		return err
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
