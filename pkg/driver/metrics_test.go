package driver

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/backend/loop"
	"github.com/tarn-csi/tarn/pkg/metrics"
)

// TestMetricsEndpoint drives a real driver on a loop pool in a temporary
// directory (creating and deleting volumes and snapshots attaches nothing,
// so no root is needed) and scrapes its /metrics endpoint over HTTP.
func TestMetricsEndpoint(t *testing.T) {
	pool := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := loop.New(ctx, loop.Config{PoolDir: pool})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(metrics.Options{})
	if err := m.RegisterPool(b); err != nil {
		t.Fatal(err)
	}
	srv, err := m.Start(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "csi.sock")
	d, err := New(Config{Endpoint: "unix://" + socket, NodeID: "n1", KubeletDir: "/var/lib/kubelet", Backend: b, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := srv.Wait(); err != nil {
			t.Errorf("metrics endpoint: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ident, ctrl := csi.NewIdentityClient(conn), csi.NewControllerClient(conn)
	call := func(what string, err error, want codes.Code) {
		t.Helper()
		if status.Code(err) != want {
			t.Fatalf("%s: %v, want %s", what, err, want)
		}
	}

	probeCtx, probeCancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = ident.Probe(probeCtx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
	probeCancel()
	call("Probe", err, codes.OK)
	mountCap := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	var ids []string
	for _, name := range []string{"kept", "deleted"} {
		resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: mountCap,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}})
		call("CreateVolume "+name, err, codes.OK)
		ids = append(ids, resp.GetVolume().GetVolumeId())
	}
	_, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{VolumeCapabilities: mountCap})
	call("CreateVolume without a name", err, codes.InvalidArgument)
	_, err = ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: ids[0]})
	call("CreateSnapshot", err, codes.OK)
	_, err = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[1]})
	call("DeleteVolume", err, codes.OK)
	_, err = ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: ids[1]})
	call("ControllerGetVolume of the deleted volume", err, codes.NotFound)
	capResp, err := ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{})
	call("GetCapacity", err, codes.OK)

	f := scrapeURL(t, "http://"+srv.Addr().String()+"/metrics")
	ctrlSvc := "csi.v1.Controller"
	for _, tc := range []struct {
		method, code string
		want         float64
	}{
		{"CreateVolume", "OK", 2},
		{"CreateVolume", "InvalidArgument", 1},
		{"CreateSnapshot", "OK", 1},
		{"DeleteVolume", "OK", 1},
		{"ControllerGetVolume", "NotFound", 1},
		{"GetCapacity", "OK", 1},
	} {
		labels := map[string]string{"service": ctrlSvc, "method": tc.method, "code": tc.code}
		if got := series(t, f, "tarn_csi_calls_total", labels); got.GetCounter().GetValue() != tc.want {
			t.Errorf("tarn_csi_calls_total%v = %v, want %v", labels, got.GetCounter().GetValue(), tc.want)
		}
	}
	// Probe answered at least once (the client may have retried while the
	// server started).
	if got := series(t, f, "tarn_csi_calls_total", map[string]string{"method": "Probe", "code": "OK"}); got.GetCounter().GetValue() < 1 {
		t.Errorf("Probe calls = %v", got.GetCounter().GetValue())
	}
	h := series(t, f, "tarn_csi_call_duration_seconds", map[string]string{"service": ctrlSvc, "method": "CreateVolume"}).GetHistogram()
	if h.GetSampleCount() != 3 || h.GetSampleSum() <= 0 {
		t.Errorf("CreateVolume latency: %d samples summing to %v s, want 3 and more than 0", h.GetSampleCount(), h.GetSampleSum())
	}

	loopLabel := map[string]string{"backend": "loop"}
	gauge := func(name string) float64 { return series(t, f, name, loopLabel).GetGauge().GetValue() }
	if v := gauge("tarn_volumes"); v != 1 {
		t.Errorf("tarn_volumes = %v, want 1", v)
	}
	if v := gauge("tarn_snapshots"); v != 1 {
		t.Errorf("tarn_snapshots = %v, want 1", v)
	}
	if v := gauge("tarn_pool_collect_success"); v != 1 {
		t.Errorf("tarn_pool_collect_success = %v, want 1", v)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(pool, &st); err != nil {
		t.Fatal(err)
	}
	size, avail, used := gauge("tarn_pool_size_bytes"), gauge("tarn_pool_available_bytes"), gauge("tarn_pool_used_bytes")
	if want := float64(int64(st.Blocks) * st.Bsize); size != want {
		t.Errorf("tarn_pool_size_bytes = %v, want the pool filesystem's %v", size, want)
	}
	if used+avail != size {
		t.Errorf("used %v + available %v != size %v", used, avail, size)
	}
	// The temporary directory's filesystem is shared with the rest of the
	// machine, so its free space moves between GetCapacity and the scrape.
	if diff := avail - float64(capResp.GetAvailableCapacity()); diff > 256<<20 || diff < -256<<20 {
		t.Errorf("tarn_pool_available_bytes = %v, GetCapacity said %d", avail, capResp.GetAvailableCapacity())
	}
}

func scrapeURL(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	f, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return f
}

// series returns the one series of family name whose labels include want,
// failing the test when there is none.
func series(t *testing.T, f map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
next:
	for _, m := range f[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no series %s%v in the scrape", name, want)
	return nil
}
