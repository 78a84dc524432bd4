package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"
)

// ExpansionFront is what csi-resizer talks to in a cluster where every
// Tarn volume lives on one node. csi-resizer runs once per cluster, so it
// cannot reach the node that owns a volume; it is told instead that the
// driver has a controller without EXPAND_VOLUME and nodes with it. It then
// only records the new size on the PersistentVolume, and the owning node's
// NodeExpandVolume grows the backing file or LV and the filesystem in one
// go. It needs no pool, no privileges and no backend.
type ExpansionFront struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	Endpoint string
	Version  string
}

// Run serves until ctx is cancelled, on a socket only this user reaches.
func (f *ExpansionFront) Run(ctx context.Context) error {
	lis, cleanup, err := listen(f.Endpoint, nil)
	if err != nil {
		return err
	}
	defer cleanup()
	server := grpc.NewServer(grpc.ChainUnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(server, f)
	csi.RegisterControllerServer(server, f)
	csi.RegisterNodeServer(server, f)
	errc := make(chan error, 1)
	go func() { errc <- server.Serve(lis) }()
	klog.InfoS("Serving the node-expansion front for csi-resizer", "endpoint", f.Endpoint, "driver", DriverName, "version", f.Version)
	select {
	case <-ctx.Done():
		server.GracefulStop()
		return nil
	case err := <-errc:
		return err
	}
}

// GetPluginInfo implements csi.IdentityServer.
func (f *ExpansionFront) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: DriverName, VendorVersion: f.Version,
		Manifest: map[string]string{"role": "expansion-front"}}, nil
}

// GetPluginCapabilities implements csi.IdentityServer: csi-resizer gives
// up on a driver without a controller service.
func (f *ExpansionFront) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}},
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
			Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}}, nil
}

// Probe implements csi.IdentityServer; the front has nothing to wait for.
func (f *ExpansionFront) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// ControllerGetCapabilities implements csi.ControllerServer: no
// EXPAND_VOLUME, so that the resizer leaves the growth to the node.
func (f *ExpansionFront) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{}, nil
}

// NodeGetCapabilities implements csi.NodeServer, for the resizer's check
// that someone will grow the volume.
func (f *ExpansionFront) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{{
		Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{
			Type: csi.NodeServiceCapability_RPC_EXPAND_VOLUME}}}}}, nil
}
