package driver

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/metrics"
)

// interceptors are the server's unary interceptors, outermost first:
// logging, then metrics when configured, so that the recorded duration is
// the handler's own and not the time spent formatting log lines.
func (d *Driver) interceptors() []grpc.UnaryServerInterceptor {
	chain := []grpc.UnaryServerInterceptor{logCalls}
	if d.cfg.Metrics != nil {
		chain = append(chain, observeCalls(d.cfg.Metrics))
	}
	return chain
}

// observeCalls records every CSI call's method, gRPC code and duration.
// Errors that are not gRPC statuses count as Unknown, which is what the
// client sees for them too.
func observeCalls(m *metrics.Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.ObserveCall(info.FullMethod, status.Code(err), time.Since(start))
		return resp, err
	}
}
