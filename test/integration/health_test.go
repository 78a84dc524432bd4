package integration

import (
	"os"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestVolumeHealth breaks volumes behind the driver's back the way nodes
// break them, and checks that the health calls notice.
func TestVolumeHealth(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, GiB)
	id := e.createVolume(t, "patient", "ext4", 64*MiB, nil).GetVolumeId()
	a := e.use(t, id, "ext4")

	if h := e.nodeHealth(t, id, a); len(h) > 0 {
		t.Errorf("NodeGetVolumeHealth of a published volume: %v, want no problems", h)
	}

	// Someone unmounts the published filesystem directly, as a careless
	// admin or a crashed container runtime might.
	if err := unix.Unmount(a.target, 0); err != nil {
		t.Fatalf("umount %s: %v", a.target, err)
	}
	h := e.nodeHealth(t, id, a)
	if !hasProblem(h, csi.VolumeHealthErrorType_INACCESSIBLE, "NotMounted") {
		t.Errorf("NodeGetVolumeHealth after the publish path was unmounted: %v, want INACCESSIBLE/NotMounted", h)
	}
	// The CO's teardown still works on the half-gone publication.
	e.release(t, a)
	if h := e.nodeHealth(t, id, attachment{}); !hasProblem(h, csi.VolumeHealthErrorType_INACCESSIBLE, "DeviceNotAttached") {
		t.Errorf("NodeGetVolumeHealth of an unstaged volume: %v, want INACCESSIBLE/DeviceNotAttached", h)
	}

	if h := e.controllerHealth(t, id); len(h) > 0 {
		t.Errorf("ControllerGetVolumeHealth of an intact, unused volume: %v, want no problems", h)
	}
	// The backing file of an unstaged volume disappears from the pool.
	if err := os.Remove(e.volumeFile(id)); err != nil {
		t.Fatal(err)
	}
	if h := e.controllerHealth(t, id); !hasProblem(h, csi.VolumeHealthErrorType_DATA_LOSS, "BackingFileMissing") {
		t.Errorf("ControllerGetVolumeHealth after the backing file was removed: %v, want DATA_LOSS/BackingFileMissing", h)
	}
	ctx, cancel := callCtx()
	list, err := e.ctrl.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
	cancel()
	if err != nil {
		t.Fatalf("ControllerListVolumeHealth: %v", err)
	}
	if n := len(list.GetEntries()); n != 1 || list.GetEntries()[0].GetVolumeId() != id {
		t.Errorf("ControllerListVolumeHealth: %v, want just %s", list.GetEntries(), id)
	}
	// The volume can still be deleted, which is how the CO gets rid of it
	// (the cleanup does it).
}

func (e *env) nodeHealth(t *testing.T, id string, a attachment) []*csi.VolumeHealth_VolumeHealthEntry {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := e.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{
		VolumeId: id, VolumePublishPath: a.target, StagingTargetPath: a.staging})
	if err != nil {
		t.Fatalf("NodeGetVolumeHealth: %v", err)
	}
	return resp.GetVolumeHealth().GetHealthStatuses()
}

func (e *env) controllerHealth(t *testing.T, id string) []*csi.VolumeHealth_VolumeHealthEntry {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := e.ctrl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil {
		t.Fatalf("ControllerGetVolumeHealth: %v", err)
	}
	return resp.GetVolumeHealth().GetHealthStatuses()
}

func hasProblem(h []*csi.VolumeHealth_VolumeHealthEntry, kind csi.VolumeHealthErrorType, reason string) bool {
	for _, p := range h {
		if p.GetStatus() == kind && p.GetReason() == reason {
			return true
		}
	}
	return false
}
