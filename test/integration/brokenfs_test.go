package integration

import (
	"testing"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestReleaseAShutDownFilesystem shuts an XFS volume down under its pod,
// as the kernel does after a metadata I/O error: every access to it fails
// with EIO from then on. The kubelet's unpublish and unstage must still
// succeed and leave nothing mounted or attached, or the pod and its volume
// are stuck on the node until a reboot.
func TestReleaseAShutDownFilesystem(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	before := testpool.Snapshot(t)
	vol := e.createVolume(t, "shutdown", "xfs", bigVolume, nil).GetVolumeId()
	a := e.use(t, vol, "xfs")
	writeRandomFile(t, a.path("data"), 1*MiB)
	runOrFail(t, "xfs_io", "-x", "-c", "shutdown", a.target)
	if _, err := runCmd("stat", a.path("data")); err == nil {
		t.Fatal("the filesystem still answers after its shutdown; the test proves nothing")
	}
	e.release(t, a)
	testpool.AssertNoLeaks(t, before)
}
