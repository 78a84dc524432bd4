package driver

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/backend/loop"
)

// startDriver serves a loop pool in a temporary directory. Nothing here
// attaches loop devices, so it needs no root.
func startDriver(t *testing.T, socket string) (pool string, conn *grpc.ClientConn) {
	t.Helper()
	pool = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	b, err := loop.New(ctx, loop.Config{PoolDir: pool})
	if err != nil {
		t.Fatal(err)
	}
	cancel = runDriver(t, Config{Endpoint: "unix://" + socket, NodeID: "n1", KubeletDir: "/var/lib/kubelet", Backend: b}, cancel)
	t.Cleanup(func() {
		cancel()
		if _, err := os.Stat(socket); !os.IsNotExist(err) {
			t.Errorf("socket left behind after stop: %v", err)
		}
	})
	return pool, dialDriver(t, socket)
}

// runDriver builds a driver from cfg and runs it until the returned stop
// is called, which also runs cancel (the context of the driver's backend)
// and fails the test if Run returned an error.
func runDriver(t *testing.T, cfg Config, cancel context.CancelFunc) (stop func()) {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return runDriverOf(t, d, cancel)
}

// runDriverOf is runDriver for a driver already built.
func runDriverOf(t *testing.T, d *Driver, cancel context.CancelFunc) (stop func()) {
	ctx, stopRun := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	return func() {
		stopRun()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// dialDriver connects to the CSI server on socket once it answers.
func dialDriver(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// Wait for the new server, not for a socket file: a stale one may be
	// there before the driver replaces it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := csi.NewIdentityClient(conn).GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
		if err == nil {
			return conn
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver did not answer: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeReplacesStaleSocketAndRestrictsIt(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "csi.sock")
	// A socket file left by a killed run.
	stale, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	_, conn := startDriver(t, socket)
	fi, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode = %v, want 0600 so only root can connect", perm)
	}
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetName() != DriverName {
		t.Errorf("name = %q", info.GetName())
	}
}

func TestServeRefusesNonSocketPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := listen("unix://"+path, nil); err == nil {
		t.Fatal("listen replaced a regular file")
	}
	if data, _ := os.ReadFile(path); string(data) != "precious" {
		t.Error("the file was touched")
	}
}

func TestProbeFollowsPool(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "csi.sock")
	pool, conn := startDriver(t, socket)
	identity := csi.NewIdentityClient(conn)
	resp, err := identity.Probe(context.Background(), &csi.ProbeRequest{})
	if err != nil || !resp.GetReady().GetValue() {
		t.Fatalf("Probe on a good pool = %v, %v", resp, err)
	}
	// The pool's working directory vanishing (an unmounted disk, say)
	// must make the driver unhealthy.
	if err := os.RemoveAll(filepath.Join(pool, ".staging")); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.Probe(context.Background(), &csi.ProbeRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Probe on a broken pool: %v, want FailedPrecondition", err)
	}
	health, err := csi.NewNodeClient(conn).NodeGetStorageHealth(context.Background(), &csi.NodeGetStorageHealthRequest{})
	if err != nil || len(health.GetBackendHealth()) != 1 ||
		health.GetBackendHealth()[0].GetStatus() != csi.StorageHealthErrorType_STORAGE_UNREACHABLE {
		t.Errorf("storage health on a broken pool = %v, %v", health, err)
	}
}

// TestLivenessIsServingReadinessIsThePool checks the two probes: liveness
// says only whether the CSI server answers, so that a full or broken pool
// never gets the node plugin restarted in a loop; readiness follows the
// pool.
func TestLivenessIsServingReadinessIsThePool(t *testing.T) {
	pool := t.TempDir()
	socket := filepath.Join(t.TempDir(), "csi.sock")
	b, err := loop.New(context.Background(), loop.Config{PoolDir: pool})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Endpoint: "unix://" + socket, NodeID: "n1", KubeletDir: "/var/lib/kubelet", Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.healthHandler())
	defer srv.Close()
	get := func(path string) int {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("liveness before the CSI server runs: %d, want 503", code)
	}
	defer runDriverOf(t, d, func() {})()
	dialDriver(t, socket)
	// Each probe answers from a result at most healthCacheFor old, so that
	// a flood of requests costs nothing; wait out the one before Run.
	time.Sleep(healthCacheFor + 100*time.Millisecond)
	for path, want := range map[string]int{"/healthz": http.StatusOK, "/readyz": http.StatusOK} {
		if code := get(path); code != want {
			t.Errorf("healthy pool, %s: %d, want %d", path, code, want)
		}
	}
	if err := os.RemoveAll(filepath.Join(pool, ".staging")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(healthCacheFor + 100*time.Millisecond)
	for path, want := range map[string]int{"/healthz": http.StatusOK, "/readyz": http.StatusServiceUnavailable} {
		if code := get(path); code != want {
			t.Errorf("broken pool, %s: %d, want %d", path, code, want)
		}
	}
}
