package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

// TestStagedLoopDeviceUsesDirectIO checks that direct I/O, which the driver
// asks for by default, is what the kernel actually does for a staged
// volume on an XFS pool: the loop device under the staging mount reports
// dio=1. The kernel may quietly fall back to buffered I/O, which would
// cache every block twice.
func TestStagedLoopDeviceUsesDirectIO(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) *env
	}{
		// The tarn command without --direct-io: the shipped default.
		{"tarn serve defaults", func(t *testing.T) *env {
			e := newEnv(t, testpool.XFSReflink, GiB)
			e.serve(t)
			return e
		}},
		// loop.Config{DirectIO: true}, as startInProcess sets it.
		{"in process", func(t *testing.T) *env { return startInProcess(t, testpool.XFSReflink, GiB) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.start(t)
			id := e.createVolume(t, "dio", "ext4", 64*MiB, nil).GetVolumeId()
			a := e.stage(t, id, "ext4")

			dev := testpool.DeviceOf(t, a.staging)
			if got := loopDeviceOf(t, e.volumeFile(id)); got != dev {
				t.Fatalf("staging path %s is mounted from %s, but the volume's loop device is %s", a.staging, dev, got)
			}
			if !strings.HasPrefix(dev, "/dev/loop") {
				t.Fatalf("staging path %s is mounted from %s, want a loop device", a.staging, dev)
			}
			dio := filepath.Join("/sys/block", filepath.Base(dev), "loop", "dio")
			b, err := os.ReadFile(dio)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(b)); got != "1" {
				t.Errorf("%s = %q after NodeStageVolume, want \"1\": the volume is attached with buffered I/O", dio, got)
			}
		})
	}
}

// TestMaximumVolumeSize checks what GetCapacity's MaximumVolumeSize
// promises (README, "Capacity accounting"): it is reported, and a volume
// of that size can be created while one granularity unit more is refused
// with ResourceExhausted before anything is written.
func TestMaximumVolumeSize(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, GiB)
	// A volume already in the pool makes GetCapacity and CreateVolume
	// account for a reservation, not only for free space.
	e.createVolume(t, "already-there", "ext4", 64*MiB, nil)

	resp := e.stableCapacity(t)
	avail := resp.GetAvailableCapacity()
	if resp.GetMaximumVolumeSize() == nil {
		t.Fatalf("GetCapacity = %v: no MaximumVolumeSize", resp)
	}
	maxSize := resp.GetMaximumVolumeSize().GetValue()
	if maxSize <= 0 || maxSize > avail {
		t.Fatalf("GetCapacity: MaximumVolumeSize %d, available %d; want 0 < maximum <= available", maxSize, avail)
	}
	// CreateVolume rounds sizes up to the granularity, so the largest size
	// that can be asked for is the maximum rounded down.
	fits := maxSize / backend.SizeGranularity * backend.SizeGranularity
	if fits < backend.MinSize("ext4") {
		t.Fatalf("MaximumVolumeSize %d on an almost empty 1 GiB pool is too small to test", maxSize)
	}

	before := e.poolState(t)
	_, err := e.tryCreateVolume(t, volumeRequest("over-maximum", "ext4", fits+backend.SizeGranularity, nil))
	wantCode(t, err, codes.ResourceExhausted, "CreateVolume of MaximumVolumeSize plus one granularity unit")
	if after := e.poolState(t); !slices.Equal(before, after) {
		t.Errorf("a refused CreateVolume changed the pool: %v before, %v after", before, after)
	}

	got, err := e.tryCreateVolume(t, volumeRequest("maximum", "ext4", fits, nil))
	if err != nil {
		t.Fatalf("CreateVolume of MaximumVolumeSize %d (asked %d): %v", maxSize, fits, err)
	}
	if c := got.GetVolume().GetCapacityBytes(); c != fits {
		t.Errorf("CreateVolume of %d bytes: capacity %d", fits, c)
	}
	if left := e.capacity(t); left > capacitySlack {
		t.Errorf("GetCapacity after a volume of MaximumVolumeSize: %d bytes available, want about 0", left)
	}
}

// stableCapacity returns GetCapacity once it gives the same answer three
// times in a row: XFS frees the blocks of unlinked files (the driver's
// reflink probe at start) in the background, and the test compares
// CreateVolume with an answer that must not move under it.
func (e *env) stableCapacity(t *testing.T) *csi.GetCapacityResponse {
	t.Helper()
	if out, err := runCmd("sync", "-f", e.pool); err != nil {
		t.Fatalf("sync -f %s: %v: %s", e.pool, err, out)
	}
	get := func() *csi.GetCapacityResponse {
		ctx, cancel := callCtx()
		defer cancel()
		resp, err := e.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{capability("ext4")}})
		if err != nil {
			t.Fatalf("GetCapacity: %v", err)
		}
		return resp
	}
	deadline := time.Now().Add(10 * time.Second)
	last, same := get(), 1
	for same < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("GetCapacity did not settle within 10s; last %v", last)
		}
		time.Sleep(200 * time.Millisecond)
		resp := get()
		if resp.GetAvailableCapacity() == last.GetAvailableCapacity() &&
			resp.GetMaximumVolumeSize().GetValue() == last.GetMaximumVolumeSize().GetValue() {
			same++
		} else {
			same = 1
		}
		last = resp
	}
	return last
}

// TestNodeGetVolumeStats checks that the usage a mounted volume reports is
// its filesystem's, bytes and inodes, and that the inode count follows the
// files created in it.
func TestNodeGetVolumeStats(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			id := e.createVolume(t, "stats-"+fsType, fsType, 320*MiB, nil).GetVolumeId()
			a := e.use(t, id, fsType)

			_, inodes0, _ := e.volumeStats(t, a)
			const files = 20
			for i := range files {
				writeRandomFile(t, a.path(fmt.Sprintf("dir/f%d", i)), 64<<10)
			}
			if out, err := runCmd("sync", "-f", a.target); err != nil {
				t.Fatalf("sync -f %s: %v: %s", a.target, err, out)
			}

			bytes, inodes, st := e.volumeStats(t, a)
			if bytes.GetTotal() <= 0 || bytes.GetUsed() <= 0 || bytes.GetAvailable() <= 0 ||
				bytes.GetUsed()+bytes.GetAvailable() > bytes.GetTotal() {
				t.Errorf("bytes: total %d, used %d, available %d; want all > 0 and used+available <= total",
					bytes.GetTotal(), bytes.GetUsed(), bytes.GetAvailable())
			}
			if inodes.GetTotal() <= 0 || inodes.GetUsed() <= 0 || inodes.GetAvailable() <= 0 ||
				inodes.GetUsed()+inodes.GetAvailable() > inodes.GetTotal() {
				t.Errorf("inodes: total %d, used %d, available %d; want all > 0 and used+available <= total",
					inodes.GetTotal(), inodes.GetUsed(), inodes.GetAvailable())
			}
			// The files and their directory.
			if grew := inodes.GetUsed() - inodes0.GetUsed(); grew < files+1 {
				t.Errorf("inodes used went from %d to %d after creating %d files and a directory", inodes0.GetUsed(), inodes.GetUsed(), files)
			}
			// Less than the device by the filesystem's own metadata (an XFS
			// log of this size takes a fifth of it).
			if size := bytes.GetTotal(); size > 320*MiB || size < 200*MiB {
				t.Errorf("bytes total %d for a 320 MiB volume", size)
			}

			// What statfs of the published path says, read around the call
			// so that a value caught while the filesystem moved still fits.
			for _, c := range []struct {
				what          string
				got           int64
				before, after int64
			}{
				{"bytes total", bytes.GetTotal(), st[0].total, st[1].total},
				{"bytes used", bytes.GetUsed(), st[0].used, st[1].used},
				{"bytes available", bytes.GetAvailable(), st[0].avail, st[1].avail},
				{"inodes total", inodes.GetTotal(), st[0].files, st[1].files},
				{"inodes used", inodes.GetUsed(), st[0].filesUsed, st[1].filesUsed},
				{"inodes available", inodes.GetAvailable(), st[0].filesFree, st[1].filesFree},
			} {
				if c.got < min(c.before, c.after) || c.got > max(c.before, c.after) {
					t.Errorf("%s: NodeGetVolumeStats says %d, statfs of %s said %d before and %d after", c.what, c.got, a.target, c.before, c.after)
				}
			}
			e.release(t, a)
		})
	}
}

// statfsUsage is statfs in the units NodeGetVolumeStats reports.
type statfsUsage struct {
	total, used, avail          int64
	files, filesUsed, filesFree int64
}

func statfsOf(t *testing.T, path string) statfsUsage {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return statfsUsage{
		total: int64(st.Blocks) * st.Bsize, used: int64(st.Blocks-st.Bfree) * st.Bsize, avail: int64(st.Bavail) * st.Bsize,
		files: int64(st.Files), filesUsed: int64(st.Files - st.Ffree), filesFree: int64(st.Ffree),
	}
}

// volumeStats calls NodeGetVolumeStats on a's target and returns its BYTES
// and INODES entries, with statfs of the target just before and after.
func (e *env) volumeStats(t *testing.T, a attachment) (bytes, inodes *csi.VolumeUsage, st [2]statfsUsage) {
	t.Helper()
	st[0] = statfsOf(t, a.target)
	ctx, cancel := callCtx()
	resp, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: a.volID, VolumePath: a.target})
	cancel()
	if err != nil {
		t.Fatalf("NodeGetVolumeStats %s at %s: %v", a.volID, a.target, err)
	}
	st[1] = statfsOf(t, a.target)
	if bytes, inodes = harness.Usage(resp); bytes == nil || inodes == nil {
		t.Fatalf("NodeGetVolumeStats = %v, want a BYTES and an INODES entry", resp)
	}
	return bytes, inodes, st
}

// TestMountFlagsReachTheMounts checks that the mount flags of the volume
// capability are applied: to the filesystem mounted at the staging path,
// and to the bind mount at the target path.
func TestMountFlagsReachTheMounts(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			id := e.createVolume(t, "flags-"+fsType, fsType, 320*MiB, nil).GetVolumeId()
			a := e.stageWith(t, id, fsType, mountCapability(fsType, "noatime"))
			staging := mountOptions(t, a.staging)
			if !slices.Contains(staging, "noatime") {
				t.Errorf("staging mount %s has options %v, want noatime from the capability's mount flags", a.staging, staging)
			}
			// noexec is not on the staging mount, so a target that has it
			// got it from NodePublishVolume rather than from the mount it
			// binds.
			if slices.Contains(staging, "noexec") {
				t.Fatalf("staging mount %s has options %v: noexec without being asked", a.staging, staging)
			}
			a.cap = mountCapability(fsType, "noatime", "noexec")
			e.publish(t, a)
			target := mountOptions(t, a.target)
			for _, want := range []string{"noatime", "noexec"} {
				if !slices.Contains(target, want) {
					t.Errorf("target mount %s has options %v, want %s from the capability's mount flags", a.target, target, want)
				}
			}
			e.release(t, a)
		})
	}
}

func mountCapability(fsType string, flags ...string) *csi.VolumeCapability {
	c := capability(fsType)
	c.GetMount().MountFlags = flags
	return c
}

// mountOptions returns the per-mount options of the mount at path, as
// /proc/self/mountinfo lists them.
func mountOptions(t *testing.T, path string) []string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) == 0 {
		t.Fatalf("nothing is mounted at %s", path)
	}
	// The last entry is the visible one when mounts are stacked.
	return strings.Split(mounts[len(mounts)-1].Options, ",")
}
