// Package metrics exposes Tarn's Prometheus metrics: every CSI call by
// method and gRPC code with its latency, the pool's capacity and object
// counts (read from the backend at each scrape, so they can never drift
// from what the pool holds), and what the backend reports through Recorder
// (reconciler actions, filesystem freeze durations).
//
// Everything lives on a registry owned by a Metrics value, never on the
// client library's global default registry: two drivers in one process (as
// in tests) keep their numbers apart, and nothing registers behind the
// caller's back.
package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// namespace prefixes every Tarn metric.
const namespace = "tarn"

// Reconciler actions, the values of the action label of
// tarn_reconciler_actions_total. Backends pass these to
// Recorder.ReconcilerAction; they are pre-declared so that every series
// exists at zero from the first scrape and rate() works from the start.
const (
	// ActionIncompleteRemoved: a half-built volume or snapshot left by an
	// interrupted create was removed (loop: an entry of .staging; lvm: an
	// LV without its completion tag, at start or when a retried create
	// meets it).
	ActionIncompleteRemoved = "incomplete_object_removed"
	// ActionDeletedRemoved: an object whose deletion was interrupted was
	// removed (loop: an entry of .trash).
	ActionDeletedRemoved = "deleted_object_removed"
	// ActionTempFileRemoved: the temporary file of an interrupted
	// metadata write was removed.
	ActionTempFileRemoved = "temp_file_removed"
	// ActionLeftoverUnmounted: a mount inside a half-built object was
	// removed.
	ActionLeftoverUnmounted = "leftover_unmounted"
	// ActionLoopDetached: a loop device left by an interrupted call, or
	// backed by a deleted file, was detached.
	ActionLoopDetached = "loop_device_detached"
	// ActionFilesystemThawed: a pool volume's filesystem left frozen by a
	// killed driver was thawed.
	ActionFilesystemThawed = "filesystem_thawed"
	// ActionSuspendedResumed: an LV's device left suspended by an
	// interrupted LVM command was resumed.
	ActionSuspendedResumed = "lv_resumed"
)

// knownActions is a function, not a variable, so that nothing at package
// level can be changed.
func knownActions() []string {
	return []string{
		ActionIncompleteRemoved, ActionDeletedRemoved, ActionTempFileRemoved,
		ActionLeftoverUnmounted, ActionLoopDetached, ActionFilesystemThawed,
		ActionSuspendedResumed,
	}
}

// Recorder is what a backend reports to. The driver's Metrics implements
// it; Nop is the default for a backend built without metrics, so backend
// code can call it unconditionally.
type Recorder interface {
	// ReconcilerAction counts one repair made by the start-up sweep or a
	// later reconciliation; action is one of the Action constants.
	ReconcilerAction(action string)
	// FreezeDuration records how long writers were blocked by one
	// filesystem freeze for a snapshot or clone.
	FreezeDuration(d time.Duration)
}

// Nop is a Recorder that records nothing.
type Nop struct{}

// ReconcilerAction implements Recorder.
func (Nop) ReconcilerAction(string) {}

// FreezeDuration implements Recorder.
func (Nop) FreezeDuration(time.Duration) {}

// OrNop returns r, or Nop when r is nil.
func OrNop(r Recorder) Recorder {
	if r == nil {
		return Nop{}
	}
	return r
}

// Pool is the part of a backend that the pool metrics read at each scrape;
// backend.Backend satisfies it.
type Pool interface {
	Kind() string
	Capacity(ctx context.Context, params map[string]string) (backend.Capacity, error)
	ListVolumes(ctx context.Context) ([]backend.Volume, error)
	ListSnapshots(ctx context.Context) ([]backend.Snapshot, error)
}

// Options configures New.
type Options struct {
	// CollectTimeout bounds the backend calls of one scrape, so that a
	// hung pool cannot pile up scrapes; 0 means 10s.
	CollectTimeout time.Duration
}

// Metrics holds Tarn's metrics and the registry they are on. A nil
// *Metrics records nothing, so that code holding an optional one (or a
// typed nil inside a Recorder) need not check.
type Metrics struct {
	registry          *prometheus.Registry
	collectTimeout    time.Duration
	calls             *prometheus.CounterVec
	latency           *prometheus.HistogramVec
	reconcilerActions *prometheus.CounterVec
	freezeDuration    prometheus.Histogram
}

var _ Recorder = (*Metrics)(nil)

// callBuckets span what CSI calls take: sub-millisecond capability and
// probe calls up to a minute for mkfs or a snapshot copy on a pool without
// reflinks.
func callBuckets() []float64 {
	return []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
}

// freezeBuckets span a reflink clone (milliseconds) up to the freeze
// watchdog's default timeout and beyond, where a copy-based snapshot ends.
func freezeBuckets() []float64 {
	return []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
}

// New builds the metrics on a fresh registry, with the Go runtime and
// process collectors beside them: goroutines and open file descriptors are
// the first things to look at when a long-running driver leaks. The pool
// metrics come with RegisterPool.
func New(opts Options) *Metrics {
	if opts.CollectTimeout <= 0 {
		opts.CollectTimeout = 10 * time.Second
	}
	m := &Metrics{
		registry:       prometheus.NewRegistry(),
		collectTimeout: opts.CollectTimeout,
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "csi", Name: "calls_total",
			Help: "CSI calls served, by gRPC service, method and status code.",
		}, []string{"service", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "csi", Name: "call_duration_seconds",
			Help:    "Time to serve a CSI call, by gRPC service and method, whatever its outcome.",
			Buckets: callBuckets(),
		}, []string{"service", "method"}),
		reconcilerActions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "reconciler", Name: "actions_total",
			Help: "Repairs of what interrupted calls left behind, by action.",
		}, []string{"action"}),
		freezeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "freeze_duration_seconds",
			Help:    "How long a volume's filesystem was frozen (its writers blocked) for a snapshot or clone.",
			Buckets: freezeBuckets(),
		}),
	}
	for _, a := range knownActions() {
		m.reconcilerActions.WithLabelValues(a)
	}
	m.registry.MustRegister(m.calls, m.latency, m.reconcilerActions, m.freezeDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// RegisterPool adds the pool metrics, read from p at each scrape. It is
// separate from New because the backend records its start-up sweep
// through the Metrics, so it must be built after them; a second pool is
// refused.
func (m *Metrics) RegisterPool(p Pool) error {
	return m.registry.Register(newPoolCollector(p, m.collectTimeout))
}

// ObserveCall records one CSI call. fullMethod is gRPC's
// "/package.Service/Method"; gRPC only hands registered methods to
// interceptors, so the label values stay a small fixed set.
func (m *Metrics) ObserveCall(fullMethod string, code codes.Code, d time.Duration) {
	if m == nil {
		return
	}
	service, method := splitMethod(fullMethod)
	m.calls.WithLabelValues(service, method, code.String()).Inc()
	m.latency.WithLabelValues(service, method).Observe(d.Seconds())
}

// ReconcilerAction implements Recorder.
func (m *Metrics) ReconcilerAction(action string) {
	if m == nil {
		return
	}
	m.reconcilerActions.WithLabelValues(action).Inc()
}

// FreezeDuration implements Recorder.
func (m *Metrics) FreezeDuration(d time.Duration) {
	if m == nil {
		return
	}
	m.freezeDuration.Observe(d.Seconds())
}

// splitMethod turns "/csi.v1.Node/NodeStageVolume" into "csi.v1.Node" and
// "NodeStageVolume"; anything else is kept whole as the method.
func splitMethod(full string) (service, method string) {
	s, m, ok := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if !ok {
		return "", full
	}
	return s, m
}
