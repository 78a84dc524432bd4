// Package registration registers Tarn with the kubelet through the plugin
// registration API, the job node-driver-registrar does for other drivers:
// its module is not available here, and one binary is simpler to run.
//
// The kubelet watches its plugins_registry directory; a socket appearing
// there is dialled, GetInfo tells it the driver's name and CSI endpoint, and
// NotifyRegistrationStatus reports the outcome. When Tarn restarts it
// replaces its (stale) socket, which the kubelet sees as a new plugin and
// registers again.
package registration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Config says where to register and what.
type Config struct {
	// Dir is the kubelet's plugin registration directory, normally
	// /var/lib/kubelet/plugins_registry.
	Dir string
	// DriverName is the CSI driver name.
	DriverName string
	// CSIEndpoint is the path of the CSI socket as the kubelet sees it on
	// the host (it may differ from the path inside Tarn's container).
	CSIEndpoint string
}

// SocketPath is where the registration socket is created.
func (c Config) SocketPath() string {
	return filepath.Join(c.Dir, c.DriverName+"-reg.sock")
}

type server struct {
	registerapi.UnimplementedRegistrationServer
	cfg Config
	// registered reports each status the kubelet sends, for the caller.
	registered chan<- error
}

func (s server) GetInfo(ctx context.Context, req *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.cfg.DriverName,
		Endpoint:          s.cfg.CSIEndpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (s server) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	var err error
	if st.GetPluginRegistered() {
		klog.InfoS("Registered with the kubelet", "driver", s.cfg.DriverName)
	} else {
		err = fmt.Errorf("kubelet refused registration: %s", st.GetError())
		klog.ErrorS(err, "Registration with the kubelet failed", "driver", s.cfg.DriverName)
	}
	select {
	case s.registered <- err:
	default:
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Serve serves the registration socket until ctx is done. Each status the
// kubelet reports is sent on status without blocking (nil: registered).
func Serve(ctx context.Context, cfg Config, status chan<- error) error {
	if cfg.Dir == "" || cfg.DriverName == "" || cfg.CSIEndpoint == "" {
		return errors.New("registration: directory, driver name and CSI endpoint are required")
	}
	path := cfg.SocketPath()
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return fmt.Errorf("registration directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale registration socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.Remove(path)
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, server{cfg: cfg, registered: status})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	klog.InfoS("Serving kubelet plugin registration", "socket", path, "csiEndpoint", cfg.CSIEndpoint)
	select {
	case <-ctx.Done():
		srv.GracefulStop()
		return nil
	case err := <-errc:
		return err
	}
}
