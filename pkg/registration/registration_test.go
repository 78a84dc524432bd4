package registration

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestKubeletHandshake plays the kubelet's side: dial the socket found in
// the directory, read the plugin info, report the status.
func TestKubeletHandshake(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, DriverName: "tarn.csi.dev", CSIEndpoint: "/var/lib/kubelet/plugins/tarn.csi.dev/csi.sock"}
	// A socket left by a killed run must be replaced, not refused.
	stale, err := net.Listen("unix", cfg.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	ctx, cancel := context.WithCancel(context.Background())
	status := make(chan error, 1)
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, cfg, status) }()

	conn, err := grpc.NewClient("unix://"+cfg.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := registerapi.NewRegistrationClient(conn)
	var info *registerapi.PluginInfo
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		info, err = client.GetInfo(ctx, &registerapi.InfoRequest{})
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != cfg.DriverName || info.Endpoint != cfg.CSIEndpoint || len(info.SupportedVersions) == 0 {
		t.Errorf("GetInfo = %+v", info)
	}
	for _, tt := range []struct {
		registered bool
		wantErr    bool
	}{{true, false}, {false, true}} {
		if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: tt.registered, Error: "nope"}); err != nil {
			t.Fatal(err)
		}
		if got := <-status; (got != nil) != tt.wantErr {
			t.Errorf("registered=%v: status %v", tt.registered, got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tarn.csi.dev-reg.sock")); !os.IsNotExist(err) {
		t.Errorf("registration socket left after stop: %v", err)
	}
}

func TestServeNeedsConfig(t *testing.T) {
	if err := Serve(context.Background(), Config{}, nil); err == nil {
		t.Fatal("empty config accepted")
	}
}
