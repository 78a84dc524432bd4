package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// fakePool answers the collector with fixed numbers, or fails.
type fakePool struct {
	capacity  backend.Capacity
	volumes   int
	snapshots int
	fail      error
	calls     int
}

func (p *fakePool) Kind() string { return "fake" }

func (p *fakePool) Capacity(ctx context.Context, params map[string]string) (backend.Capacity, error) {
	p.calls++
	if _, ok := ctx.Deadline(); !ok {
		return backend.Capacity{}, errors.New("collector called the pool without a deadline")
	}
	return p.capacity, p.fail
}

func (p *fakePool) ListVolumes(context.Context) ([]backend.Volume, error) {
	return make([]backend.Volume, p.volumes), p.fail
}

func (p *fakePool) ListSnapshots(context.Context) ([]backend.Snapshot, error) {
	return make([]backend.Snapshot, p.snapshots), p.fail
}

// scrape fetches the handler's output the way Prometheus does and parses it.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// value returns the value of the series of family name whose labels
// include want, and whether there is one.
func value(families map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	for _, m := range families[name].GetMetric() {
		if !hasLabels(m, want) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

func TestCallsAreCountedByMethodAndCode(t *testing.T) {
	m := New(Options{})
	m.ObserveCall("/csi.v1.Controller/CreateVolume", codes.OK, 20*time.Millisecond)
	m.ObserveCall("/csi.v1.Controller/CreateVolume", codes.OK, 40*time.Millisecond)
	m.ObserveCall("/csi.v1.Controller/CreateVolume", codes.InvalidArgument, time.Millisecond)
	m.ObserveCall("/csi.v1.Node/NodeStageVolume", codes.Aborted, time.Millisecond)
	m.ObserveCall("not-a-grpc-method", codes.Unknown, time.Millisecond)

	f := scrape(t, m.Handler())
	for _, tc := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"service": "csi.v1.Controller", "method": "CreateVolume", "code": "OK"}, 2},
		{map[string]string{"service": "csi.v1.Controller", "method": "CreateVolume", "code": "InvalidArgument"}, 1},
		{map[string]string{"service": "csi.v1.Node", "method": "NodeStageVolume", "code": "Aborted"}, 1},
		{map[string]string{"service": "", "method": "not-a-grpc-method", "code": "Unknown"}, 1},
	} {
		if got, ok := value(f, "tarn_csi_calls_total", tc.labels); !ok || got != tc.want {
			t.Errorf("tarn_csi_calls_total%v = %v (present %v), want %v", tc.labels, got, ok, tc.want)
		}
	}
	// The latency histogram has no code label: one series per method.
	var h *dto.Histogram
	for _, s := range f["tarn_csi_call_duration_seconds"].GetMetric() {
		if hasLabels(s, map[string]string{"method": "CreateVolume"}) {
			h = s.GetHistogram()
		}
	}
	if h == nil || h.GetSampleCount() != 3 {
		t.Fatalf("CreateVolume latency histogram = %v, want 3 samples", h)
	}
	if sum := h.GetSampleSum(); sum < 0.060 || sum > 0.062 {
		t.Errorf("CreateVolume latency sum = %v s, want 0.061", sum)
	}
	// 20 ms and 1 ms fall at or under the 25 ms bucket; 40 ms does not.
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == 0.025 && b.GetCumulativeCount() != 2 {
			t.Errorf("le=0.025 bucket = %d, want 2", b.GetCumulativeCount())
		}
	}
}

func TestRecorder(t *testing.T) {
	m := New(Options{})
	var r Recorder = m
	r.ReconcilerAction(ActionIncompleteRemoved)
	r.ReconcilerAction(ActionIncompleteRemoved)
	r.ReconcilerAction(ActionLoopDetached)
	r.FreezeDuration(3 * time.Millisecond)
	r.FreezeDuration(2 * time.Second)

	f := scrape(t, m.Handler())
	for action, want := range map[string]float64{
		ActionIncompleteRemoved: 2, ActionLoopDetached: 1,
		// Declared actions are there at zero before they ever happen.
		ActionDeletedRemoved: 0, ActionFilesystemThawed: 0,
	} {
		if got, ok := value(f, "tarn_reconciler_actions_total", map[string]string{"action": action}); !ok || got != want {
			t.Errorf("tarn_reconciler_actions_total{action=%q} = %v (present %v), want %v", action, got, ok, want)
		}
	}
	if got, _ := value(f, "tarn_freeze_duration_seconds", nil); got != 2 {
		t.Errorf("tarn_freeze_duration_seconds count = %v, want 2", got)
	}
	if sum := f["tarn_freeze_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleSum(); sum < 2.002 || sum > 2.004 {
		t.Errorf("tarn_freeze_duration_seconds sum = %v, want 2.003", sum)
	}
}

// A backend built without metrics gets Nop or a nil *Metrics; neither may
// panic.
func TestNoOpRecorders(t *testing.T) {
	var nilMetrics *Metrics
	for _, r := range []Recorder{Nop{}, nilMetrics} {
		r.ReconcilerAction(ActionDeletedRemoved)
		r.FreezeDuration(time.Second)
	}
	nilMetrics.ObserveCall("/csi.v1.Identity/Probe", codes.OK, time.Millisecond)
}

func TestPoolIsReadAtEachScrape(t *testing.T) {
	pool := &fakePool{
		capacity: backend.Capacity{TotalBytes: 10 << 30, AvailableBytes: 4 << 30, MaximumVolumeSize: 4 << 30},
		volumes:  3, snapshots: 2,
	}
	m := New(Options{})
	if err := m.RegisterPool(pool); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterPool(pool); err == nil {
		t.Error("a second pool was registered")
	}
	f := scrape(t, m.Handler())
	backendLabel := map[string]string{"backend": "fake"}
	for name, want := range map[string]float64{
		"tarn_pool_size_bytes":      10 << 30,
		"tarn_pool_available_bytes": 4 << 30,
		"tarn_pool_used_bytes":      6 << 30,
		"tarn_volumes":              3,
		"tarn_snapshots":            2,
		"tarn_pool_collect_success": 1,
	} {
		if got, ok := value(f, name, backendLabel); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	// Leaks show first as goroutines and file descriptors.
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if _, ok := f[name]; !ok {
			t.Errorf("%s is missing", name)
		}
	}

	pool.volumes = 5
	if got, _ := value(scrape(t, m.Handler()), "tarn_volumes", backendLabel); got != 5 {
		t.Errorf("tarn_volumes after the pool changed = %v, want 5", got)
	}
	if pool.calls != 2 {
		t.Errorf("the pool was read %d times for 2 scrapes", pool.calls)
	}
}

// A failing pool costs only its own series; the scrape still succeeds.
func TestBrokenPoolKeepsTheScrapeGoing(t *testing.T) {
	m := New(Options{})
	if err := m.RegisterPool(&fakePool{fail: errors.New("pool unmounted")}); err != nil {
		t.Fatal(err)
	}
	m.ObserveCall("/csi.v1.Identity/Probe", codes.FailedPrecondition, time.Millisecond)
	f := scrape(t, m.Handler())
	if got, ok := value(f, "tarn_pool_collect_success", nil); !ok || got != 0 {
		t.Errorf("tarn_pool_collect_success = %v (present %v), want 0", got, ok)
	}
	for _, name := range []string{"tarn_pool_size_bytes", "tarn_pool_available_bytes", "tarn_volumes", "tarn_snapshots"} {
		if _, ok := f[name]; ok {
			t.Errorf("%s is exposed although the pool could not be read", name)
		}
	}
	if _, ok := value(f, "tarn_csi_calls_total", map[string]string{"code": "FailedPrecondition"}); !ok {
		t.Error("call metrics are missing when the pool is broken")
	}
}

// Two Metrics in one process (two drivers in a test) keep their numbers
// apart, and neither touches the client library's default registry.
func TestRegistriesAreIndependent(t *testing.T) {
	a, b := New(Options{}), New(Options{})
	if err := b.RegisterPool(&fakePool{}); err != nil {
		t.Fatal(err)
	}
	a.ObserveCall("/csi.v1.Identity/Probe", codes.OK, time.Millisecond)
	if _, ok := value(scrape(t, b.Handler()), "tarn_csi_calls_total", nil); ok {
		t.Error("a call observed by one Metrics shows in another")
	}
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), namespace+"_") {
			t.Errorf("%s is on the default registry", f.GetName())
		}
	}
}

func TestStartServesUntilCancelled(t *testing.T) {
	m := New(Options{})
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := m.Start(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.Addr().String()
	for path, want := range map[string]int{"/metrics": http.StatusOK, "/": http.StatusNotFound, "/healthz": http.StatusNotFound} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	resp, err := http.Post(base+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %d, want 405", resp.StatusCode)
	}

	cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Wait after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("metrics endpoint did not stop within 10s of cancel")
	}
	if _, err := http.Get(base + "/metrics"); err == nil {
		t.Error("the endpoint still answers after it stopped")
	}
}

func TestStartRefusesABadAddress(t *testing.T) {
	if _, err := New(Options{}).Start(context.Background(), "not-an-address"); err == nil {
		t.Error("Start on a malformed address succeeded")
	}
}
