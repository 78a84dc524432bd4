package driver

import (
	"context"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// logCalls logs every CSI call and its outcome. Requests and responses go
// through protosanitizer so that secrets never reach the log; Probe and
// capability calls are frequent and logged only at higher verbosity.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	quiet := isQuiet(info.FullMethod)
	if !quiet || klog.V(5).Enabled() {
		klog.V(3).InfoS("CSI call", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	}
	resp, err := handler(ctx, req)
	took := time.Since(start)
	switch {
	case err != nil:
		st, _ := status.FromError(err)
		klog.ErrorS(err, "CSI call failed", "method", info.FullMethod, "code", st.Code(), "duration", took)
	case !quiet || klog.V(5).Enabled():
		klog.V(2).InfoS("CSI call succeeded", "method", info.FullMethod, "duration", took,
			"response", protosanitizer.StripSecrets(resp))
	}
	return resp, err
}

func isQuiet(method string) bool {
	switch method {
	case "/csi.v1.Identity/Probe", "/csi.v1.Identity/GetPluginInfo", "/csi.v1.Identity/GetPluginCapabilities",
		"/csi.v1.Node/NodeGetCapabilities", "/csi.v1.Controller/ControllerGetCapabilities",
		"/csi.v1.Node/NodeGetVolumeStats":
		return true
	}
	return false
}
