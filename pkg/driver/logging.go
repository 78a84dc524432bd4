package driver

import (
	"context"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// Verbosity of the call log. One line per call, written when it returns,
// carries the request and the outcome together, so that a log read after an
// incident pairs them without correlating two lines. Failures are logged at
// every verbosity: they are what an operator looks for.
const (
	callLogLevel = 2
	// Probe, capability, stats, health and capacity calls come every few
	// seconds from the kubelet and the sidecars (csi-provisioner polls
	// GetCapacity per StorageClass); at the call level they would drown
	// the rest.
	quietCallLogLevel = 5
	// A call that never returns would leave no line: its start is logged
	// too, one level up.
	callStartLogLevel = 4
)

// logCalls logs every CSI call and its outcome. Requests and responses go
// through protosanitizer so that secrets never reach the log.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	level := klog.Level(callLogLevel)
	if isQuiet(info.FullMethod) {
		level = quietCallLogLevel
	}
	if klog.V(max(level, callStartLogLevel)).Enabled() {
		klog.InfoS("CSI call started", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	}
	resp, err := handler(ctx, req)
	took := time.Since(start)
	if err != nil {
		st, _ := status.FromError(err)
		klog.ErrorS(err, "CSI call failed", "method", info.FullMethod, "code", st.Code(), "duration", took,
			"request", protosanitizer.StripSecrets(req))
		return resp, err
	}
	klog.V(level).InfoS("CSI call succeeded", "method", info.FullMethod, "duration", took,
		"request", protosanitizer.StripSecrets(req), "response", protosanitizer.StripSecrets(resp))
	return resp, err
}

func isQuiet(method string) bool {
	switch method {
	case csi.Identity_Probe_FullMethodName, csi.Identity_GetPluginInfo_FullMethodName,
		csi.Identity_GetPluginCapabilities_FullMethodName,
		csi.Node_NodeGetCapabilities_FullMethodName, csi.Controller_ControllerGetCapabilities_FullMethodName,
		csi.Node_NodeGetVolumeStats_FullMethodName, csi.Node_NodeGetVolumeHealth_FullMethodName,
		csi.Node_NodeGetStorageHealth_FullMethodName,
		csi.Controller_ControllerGetVolumeHealth_FullMethodName, csi.Controller_ControllerListVolumeHealth_FullMethodName,
		csi.Controller_GetCapacity_FullMethodName:
		return true
	}
	return false
}
