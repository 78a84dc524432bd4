package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// Handler serves GET /metrics in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		// A collector error (which ours avoid, but the process collector
		// can hit) should cost its own series, not the whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      klogPrinter{},
		// Counts the handler's own errors on the same registry.
		Registry: m.registry,
		// Scrapes of a hung pool must not pile up goroutines.
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
	}))
	return mux
}

// Server is a running /metrics endpoint.
type Server struct {
	addr net.Addr
	done chan struct{}
	err  error
}

// Start listens on addr (host:port; port 0 picks one) and serves Handler
// there until ctx is done. It returns once listening, so that a bad
// address fails `tarn serve` at start rather than in a log line later.
func (m *Metrics) Start(ctx context.Context, addr string) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	s := &Server{addr: lis.Addr(), done: make(chan struct{})}
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
			return
		}
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	go func() {
		defer close(s.done)
		defer close(stopped)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Metrics endpoint stopped")
			s.err = err
		}
	}()
	klog.InfoS("Serving metrics", "address", s.addr.String(), "path", "/metrics")
	return s, nil
}

// Addr is the address the endpoint listens on.
func (s *Server) Addr() net.Addr { return s.addr }

// Wait blocks until the endpoint has stopped and returns why, nil after a
// shutdown through the context.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}

// klogPrinter routes promhttp's error log to klog.
type klogPrinter struct{}

func (klogPrinter) Println(v ...any) { klog.ErrorDepth(1, v...) }
