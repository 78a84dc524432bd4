package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// poolCollector reads the pool at each scrape instead of keeping gauges up
// to date from the call path: the numbers then come from the same place
// GetCapacity and ListVolumes answer from, survive restarts, and include
// what changed behind the driver's back (another process filling the
// pool's filesystem).
type poolCollector struct {
	pool    Pool
	timeout time.Duration

	size, available, used *prometheus.Desc
	volumes, snapshots    *prometheus.Desc
	success               *prometheus.Desc
}

func newPoolCollector(pool Pool, timeout time.Duration) *poolCollector {
	labels := prometheus.Labels{"backend": pool.Kind()}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, nil, labels)
	}
	return &poolCollector{
		pool:    pool,
		timeout: timeout,
		size:    desc("pool_size_bytes", "Size of the filesystem or volume group holding the pool."),
		available: desc("pool_available_bytes",
			"What new volumes can still be promised: free space less what existing volumes may still claim (GetCapacity's answer)."),
		used: desc("pool_used_bytes",
			"Pool size less available bytes: space allocated or reserved for existing volumes and snapshots, and whatever else shares the filesystem."),
		volumes:   desc("volumes", "Complete volumes in the pool."),
		snapshots: desc("snapshots", "Complete snapshots in the pool."),
		success: desc("pool_collect_success",
			"1 when the last scrape could read the pool's capacity, volumes and snapshots, 0 when any of them failed (those series are then absent)."),
	}
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.size, c.available, c.used, c.volumes, c.snapshots, c.success} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A failing backend call leaves
// out only its own series and sets pool_collect_success to 0, rather than
// failing the whole scrape: the call metrics matter most exactly when the
// pool is in trouble.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	ok := 1.0
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}

	if capacity, err := c.pool.Capacity(ctx, nil); err != nil {
		klog.ErrorS(err, "Metrics: cannot read pool capacity")
		ok = 0
	} else {
		gauge(c.size, float64(capacity.TotalBytes))
		gauge(c.available, float64(capacity.AvailableBytes))
		gauge(c.used, float64(max(capacity.TotalBytes-capacity.AvailableBytes, 0)))
	}
	if vols, err := c.pool.ListVolumes(ctx); err != nil {
		klog.ErrorS(err, "Metrics: cannot list volumes")
		ok = 0
	} else {
		gauge(c.volumes, float64(len(vols)))
	}
	if snaps, err := c.pool.ListSnapshots(ctx); err != nil {
		klog.ErrorS(err, "Metrics: cannot list snapshots")
		ok = 0
	} else {
		gauge(c.snapshots, float64(len(snaps)))
	}
	gauge(c.success, ok)
}
