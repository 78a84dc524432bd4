package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
)

// ServeHealth serves the container probes, standing in for the
// livenessprobe sidecar. GET /healthz (liveness) is 200 while the CSI
// server answers on its socket: restarting tarn mends nothing else, and a
// restart loop over a full or read-only pool would only make unpublish and
// unstage fail. GET /readyz (readiness) is 200 while Probe says the backend
// can serve, 503 otherwise, which shows a pool in trouble without a
// restart. Both answer from a result at most healthCacheFor old, so that a
// flood of requests costs neither the socket nor the pool anything. It
// stops when ctx is done.
func (d *Driver) ServeHealth(ctx context.Context, addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health endpoint: %w", err)
	}
	srv := &http.Server{Handler: d.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	klog.InfoS("Serving health endpoint", "address", lis.Addr().String())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// healthCacheFor is how long a probe's result is reused.
const healthCacheFor = 2 * time.Second

// healthTimeout bounds one check, below the probes' own timeout.
const healthTimeout = 4 * time.Second

func (d *Driver) healthHandler() http.Handler {
	live := &cachedCheck{check: d.serving}
	ready := &cachedCheck{check: func(ctx context.Context) error {
		_, err := d.Probe(ctx, &csi.ProbeRequest{})
		return err
	}}
	mux := http.NewServeMux()
	for path, c := range map[string]*cachedCheck{"GET /healthz": live, "GET /readyz": ready} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			if err := c.result(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
	}
	return mux
}

// serving calls GetPluginInfo, which touches no backend, on the first
// socket: the CSI server is alive when it answers.
func (d *Driver) serving(ctx context.Context) error {
	path, err := socketPath(d.cfg.Endpoint)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{}); err != nil {
		return fmt.Errorf("the CSI server does not answer: %w", err)
	}
	return nil
}

// cachedCheck runs check at most once per healthCacheFor, one run at a
// time; callers meanwhile get the last result.
type cachedCheck struct {
	check func(context.Context) error
	mu    sync.Mutex
	at    time.Time
	err   error
}

func (c *cachedCheck) result() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < healthCacheFor {
		return c.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), healthTimeout)
	defer cancel()
	c.err = c.check(ctx)
	c.at = time.Now()
	return c.err
}
