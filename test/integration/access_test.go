package integration

import (
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestOneAccessTypeAtATime checks that a volume staged with a mounted
// filesystem is never handed out as a raw device as well (writes beside a
// mounted filesystem corrupt it), nor a block-published one mounted: each
// such call is refused with FailedPrecondition and changes nothing.
func TestOneAccessTypeAtATime(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	fsVol := e.createVolume(t, "mounted", "ext4", bigVolume, nil).GetVolumeId()
	a := e.use(t, fsVol, "ext4")
	want := map[string]string{"data": writeRandomFile(t, a.path("data"), 4*MiB)}
	before := testpool.Snapshot(t)

	other := filepath.Join(e.work, "raw")
	ctx, cancel := callCtx()
	_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: fsVol, StagingTargetPath: filepath.Join(other, "staging"), VolumeCapability: capability("")})
	cancel()
	wantCode(t, err, codes.FailedPrecondition, "block NodeStageVolume of a volume whose filesystem is mounted")
	ctx, cancel = callCtx()
	_, err = e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: fsVol, StagingTargetPath: a.staging, TargetPath: filepath.Join(other, "device"), VolumeCapability: capability("")})
	cancel()
	wantCode(t, err, codes.FailedPrecondition, "block NodePublishVolume of a volume whose filesystem is mounted")
	testpool.AssertNoLeaks(t, before)
	checkFiles(t, a.target, want)
	e.release(t, a)
	e.fsckVolume(t, fsVol, "ext4")

	blockVol := e.createVolume(t, "raw", "", bigVolume, nil).GetVolumeId()
	b := e.use(t, blockVol, "")
	before = testpool.Snapshot(t)
	ctx, cancel = callCtx()
	_, err = e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: blockVol, StagingTargetPath: filepath.Join(other, "fs"), VolumeCapability: capability("ext4")})
	cancel()
	wantCode(t, err, codes.FailedPrecondition, "mount NodeStageVolume of a block-published volume")
	testpool.AssertNoLeaks(t, before)
	e.release(t, b)
}
