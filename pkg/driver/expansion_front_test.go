package driver

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestExpansionFrontSteersResizerToNodes checks the capabilities
// csi-resizer reads to pick its trivial resizer: a controller service
// without EXPAND_VOLUME, and a node service with it.
func TestExpansionFrontSteersResizerToNodes(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	front := &ExpansionFront{Endpoint: "unix://" + socket, Version: "test"}
	done := make(chan error, 1)
	go func() { done <- front.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if _, err := os.Stat(socket); !os.IsNotExist(err) {
			t.Errorf("socket left behind after stop: %v", err)
		}
	})
	conn := dialDriver(t, socket)

	id := csi.NewIdentityClient(conn)
	info, err := id.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != DriverName {
		t.Fatalf("GetPluginInfo = %v, %v; want name %s", info, err, DriverName)
	}
	plugin, err := id.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var controller, online bool
	for _, c := range plugin.GetCapabilities() {
		controller = controller || c.GetService().GetType() == csi.PluginCapability_Service_CONTROLLER_SERVICE
		online = online || c.GetVolumeExpansion().GetType() == csi.PluginCapability_VolumeExpansion_ONLINE
	}
	if !controller || !online {
		t.Errorf("plugin capabilities %v: want CONTROLLER_SERVICE and online expansion", plugin)
	}
	if probe, err := id.Probe(ctx, &csi.ProbeRequest{}); err != nil || !probe.GetReady().GetValue() {
		t.Errorf("Probe = %v, %v", probe, err)
	}

	ctrl, err := csi.NewControllerClient(conn).ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ctrl.GetCapabilities() {
		if c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_EXPAND_VOLUME {
			t.Errorf("controller advertises EXPAND_VOLUME: the resizer would call ControllerExpandVolume here, away from the volume's node")
		}
	}
	node, err := csi.NewNodeClient(conn).NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil || len(node.GetCapabilities()) != 1 ||
		node.GetCapabilities()[0].GetRpc().GetType() != csi.NodeServiceCapability_RPC_EXPAND_VOLUME {
		t.Errorf("NodeGetCapabilities = %v, %v; want EXPAND_VOLUME only", node, err)
	}
	// Everything else belongs to the nodes.
	_, err = csi.NewControllerClient(conn).CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "x"})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("CreateVolume on the front: %v, want Unimplemented", err)
	}
}

func TestSocketGroupMayConnect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "csi.sock")
	gid := 4242
	lis, cleanup, err := listen("unix://"+path, &gid)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	defer lis.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o660 {
		t.Errorf("socket mode = %v, want 0660", perm)
	}
	if got := fi.Sys().(*syscall.Stat_t).Gid; got != uint32(gid) {
		t.Errorf("socket group = %d, want %d", got, gid)
	}
}
