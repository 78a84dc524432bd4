package integration

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestIncompatibleRepeatsAreRefused checks the CSI spec's AlreadyExists for
// a stage or publish that finds the volume already at its path but mounted
// otherwise than asked (another filesystem, access type, mount flag or
// read-only flag), while an identical repeat still succeeds. A refused
// call must leave the mounts as they were.
func TestIncompatibleRepeatsAreRefused(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	id := e.createVolume(t, "incompatible", "ext4", bigVolume, nil).GetVolumeId()
	a := e.stage(t, id, "ext4")

	stage := func(c *csi.VolumeCapability) error {
		ctx, cancel := callCtx()
		defer cancel()
		_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
			VolumeId: id, StagingTargetPath: a.staging, VolumeCapability: c})
		return err
	}
	publish := func(target string, c *csi.VolumeCapability, readonly bool) error {
		ctx, cancel := callCtx()
		defer cancel()
		_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
			VolumeId: id, StagingTargetPath: a.staging, TargetPath: target, VolumeCapability: c, Readonly: readonly})
		return err
	}
	// refused wants AlreadyExists with a message naming what differs.
	refused := func(err error, what string, names ...string) {
		t.Helper()
		wantCode(t, err, codes.AlreadyExists, what)
		for _, n := range names {
			if msg := status.Convert(err).Message(); !strings.Contains(msg, n) {
				t.Errorf("%s: message %q does not name %q", what, msg, n)
			}
		}
	}
	anyFs := capability("ext4")
	anyFs.GetMount().FsType = ""

	if err := stage(capability("ext4")); err != nil {
		t.Fatalf("identical NodeStageVolume: %v", err)
	}
	// No fsType asks for none in particular: the one on the volume does.
	if err := stage(anyFs); err != nil {
		t.Fatalf("NodeStageVolume without fsType on staged ext4: %v", err)
	}
	before := testpool.Snapshot(t)
	refused(stage(capability("xfs")), "NodeStageVolume asking xfs on staged ext4", "xfs", "ext4")
	refused(stage(capability("")), "block NodeStageVolume on the staging path of its filesystem", "raw block")
	refused(stage(mountCapability("ext4", "noexec")), "NodeStageVolume asking noexec on a staging mount without it", "noexec")
	testpool.AssertNoLeaks(t, before)

	e.publish(t, a)
	if err := publish(a.target, a.capability(), false); err != nil {
		t.Fatalf("identical NodePublishVolume: %v", err)
	}
	before = testpool.Snapshot(t)
	refused(publish(a.target, a.capability(), true), "read-only NodePublishVolume on a read-write publication", "read-only")
	refused(publish(a.target, capability(""), false), "block NodePublishVolume on a filesystem publication", "raw block")
	testpool.AssertNoLeaks(t, before)
	// Still the read-write publication of the staged filesystem.
	if opts := mountOptions(t, a.target); !slices.Contains(opts, "rw") {
		t.Errorf("target %s has options %v after refused calls, want rw", a.target, opts)
	}
	if opts := mountOptions(t, a.staging); !slices.Contains(opts, "rw") {
		t.Errorf("staging %s has options %v after refused calls, want rw", a.staging, opts)
	}
	want := map[string]string{"data": writeRandomFile(t, a.path("data"), MiB)}

	// And the other way round: read-only, then asked read-write.
	ro := filepath.Join(e.work, "read-only")
	if err := publish(ro, a.capability(), true); err != nil {
		t.Fatalf("read-only NodePublishVolume: %v", err)
	}
	roAttachment := attachment{volID: id, target: ro}
	t.Cleanup(func() {
		if err := e.tryUnpublish(roAttachment); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := publish(ro, a.capability(), true); err != nil {
		t.Fatalf("identical read-only NodePublishVolume: %v", err)
	}
	refused(publish(ro, a.capability(), false), "read-write NodePublishVolume on a read-only publication", "read-write")
	checkFiles(t, ro, want)

	if err := e.tryUnpublish(roAttachment); err != nil {
		t.Fatal(err)
	}
	e.release(t, a)
	e.fsckVolume(t, id, "ext4")
}

// TestRepeatOnReadOnlyStagingIsAccepted: a publication of a read-only
// staging mount is read-only whatever the publish asked (mount-utils copies
// the staging mount's ro onto the bind), so an identical retry of that
// publish must succeed, not be refused for the read-only it never asked.
func TestRepeatOnReadOnlyStagingIsAccepted(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	id := e.createVolume(t, "ro-staging", "ext4", bigVolume, nil).GetVolumeId()
	// A read-only stage cannot format: the filesystem is made first.
	e.release(t, e.stage(t, id, "ext4"))
	a := e.stageWith(t, id, "ext4", mountCapability("ext4", "ro"))
	a.cap = capability("ext4")
	e.publish(t, a)
	if opts := mountOptions(t, a.target); !slices.Contains(opts, "ro") {
		t.Fatalf("target %s of a read-only staging mount has options %v, want ro", a.target, opts)
	}
	ctx, cancel := callCtx()
	defer cancel()
	if _, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id,
		StagingTargetPath: a.staging, TargetPath: a.target, VolumeCapability: a.capability()}); err != nil {
		t.Errorf("identical NodePublishVolume on a read-only staging mount: %v", err)
	}
	e.release(t, a)
}
