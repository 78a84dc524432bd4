package reliability

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// The crash test's calls that must simply succeed: setting up, checking
// and tearing down around the calls that are killed.

func volumeRequest(name string, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: volSize},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
		VolumeContentSource: src}
}

// must runs a call that has to succeed.
func (c *crasher) must(what string, call func(ctx context.Context) error) {
	c.t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	if err := call(ctx); err != nil {
		c.t.Fatalf("%s: %v", what, err)
	}
}

// timed runs a call that has to succeed and returns how long it took: the
// span kills are spread over.
func (c *crasher) timed(call func(ctx context.Context) error) time.Duration {
	c.t.Helper()
	start := time.Now()
	c.must("calibration", call)
	return time.Since(start)
}

// median returns the middle of three timings: the first run of a kind of
// call is often slower (cold caches), and kills spread over it would
// mostly land after the call.
func (c *crasher) median(run func(i int) time.Duration) time.Duration {
	d := []time.Duration{run(0), run(1), run(2)}
	slices.Sort(d)
	return d[1]
}

func (c *crasher) createVolume(name string, src *csi.VolumeContentSource) string {
	c.t.Helper()
	var id string
	c.must("CreateVolume "+name, func(ctx context.Context) error {
		resp, err := c.e.ctrl.CreateVolume(ctx, volumeRequest(name, src))
		id = resp.GetVolume().GetVolumeId()
		return err
	})
	return id
}

func (c *crasher) createSnapshot(name, volID string) string {
	c.t.Helper()
	var id string
	c.must("CreateSnapshot "+name, func(ctx context.Context) error {
		resp, err := c.e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volID})
		id = resp.GetSnapshot().GetSnapshotId()
		return err
	})
	return id
}

func (c *crasher) deleteVolume(id string) {
	c.t.Helper()
	c.must("DeleteVolume "+id, func(ctx context.Context) error {
		_, err := c.e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	})
}

func (c *crasher) deleteSnapshot(id string) {
	c.t.Helper()
	c.must("DeleteSnapshot "+id, func(ctx context.Context) error {
		_, err := c.e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		return err
	})
}

func (c *crasher) volumeSize(id string) int64 {
	c.t.Helper()
	var size int64
	c.must("ControllerGetVolume "+id, func(ctx context.Context) error {
		resp, err := c.e.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
		size = resp.GetVolume().GetCapacityBytes()
		return err
	})
	return size
}

func (c *crasher) stage(id, staging string) {
	c.t.Helper()
	c.must("NodeStageVolume "+id, func(ctx context.Context) error {
		_, err := c.e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)})
		return err
	})
}

func (c *crasher) unstage(id, staging string) {
	c.t.Helper()
	c.must("NodeUnstageVolume "+id, func(ctx context.Context) error {
		_, err := c.e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		return err
	})
}

func (c *crasher) publish(id, staging, target string) {
	c.t.Helper()
	c.must("NodePublishVolume "+id, func(ctx context.Context) error {
		_, err := c.e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)})
		return err
	})
}

func (c *crasher) unpublish(id, target string) {
	c.t.Helper()
	c.must("NodeUnpublishVolume "+id, func(ctx context.Context) error {
		_, err := c.e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		return err
	})
}

// verifyVolume stages a volume and checks its file "data" (and, for a
// snapshot of the written volume, that its stream holds whole records).
func (c *crasher) verifyVolume(id, dataSHA string, stream bool) {
	c.t.Helper()
	c.verifications++
	staging := filepath.Join(c.e.work, fmt.Sprintf("verify-%d", c.verifications))
	c.stage(id, staging)
	if got := sha256Of(c.t, filepath.Join(staging, "data"), -1); got != dataSHA {
		c.t.Errorf("volume %s: data sha256 %s, want %s", id, got, dataSHA)
	}
	if stream {
		checkStream(c.t, filepath.Join(staging, "stream"))
	}
	c.unstage(id, staging)
	c.checkUnstaged(id, staging)
}

// checkStaged fails the test unless staging is mounted from the one loop
// device of the volume.
func (c *crasher) checkStaged(id, staging string) {
	c.t.Helper()
	loops := loopsUnder(c.t, filepath.Join(c.e.pool, "volumes", id))
	if len(loops) != 1 {
		c.t.Errorf("volume %s is attached %d times after a stage: %v", id, len(loops), loops)
	}
	file, err := backingFileOfMount(staging)
	if err != nil || file != c.e.volumeFile(id) {
		c.t.Errorf("%s is mounted from %q (%v), want volume %s", staging, file, err, id)
	}
}

// checkUnstaged fails the test if anything of the volume is left on the
// node after an unstage.
func (c *crasher) checkUnstaged(id, staging string) {
	c.t.Helper()
	if m := mountsUnder(c.t, staging); len(m) > 0 {
		c.t.Errorf("volume %s unstaged but still mounted: %v", id, m)
	}
	if l := loopsUnder(c.t, filepath.Join(c.e.pool, "volumes", id)); len(l) > 0 {
		c.t.Errorf("volume %s unstaged but still attached: %v", id, l)
	}
}

// runQuiet runs a tool whose outcome does not matter.
func runQuiet(argv ...string) error {
	return exec.Command(argv[0], argv[1:]...).Run()
}
