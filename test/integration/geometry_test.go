package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tarn-csi/tarn/test/testpool"
)

// bigVolume is the size of the volumes that tests about something else
// snapshot or clone: at 512 MiB ext4 uses 4 KiB blocks whatever the
// device's sectors, which keeps them clear of what
// TestVolumeGeometryAfterSnapshot checks.
const bigVolume = 512 * MiB

// TestVolumeGeometryAfterSnapshot checks that a volume, and the volumes
// restored or cloned from it, keep the sector size their filesystem was
// made for. A filesystem records its block or sector size when it is
// formatted: ext4 below 512 MiB uses 1 KiB blocks and xfs uses the
// device's sector size, and neither mounts on a device whose logical
// blocks are larger. A snapshot must not change what the volume's loop
// device looks like at the next stage in a way that its filesystem cannot
// live with. The 512 MiB ext4 volume (4 KiB blocks) is the control case.
func TestVolumeGeometryAfterSnapshot(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 4*GiB)
	for _, tc := range []struct {
		name   string
		fsType string
		size   int64
	}{
		{"ext4-small", "ext4", 64 * MiB},
		{"ext4-large", "ext4", 512 * MiB},
		{"xfs", "xfs", 320 * MiB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := e.createVolume(t, "geometry-"+tc.name, tc.fsType, tc.size, nil).GetVolumeId()
			a := e.use(t, id, tc.fsType)
			want := map[string]string{"data": writeRandomFile(t, a.path("data"), 4*MiB)}
			formatted := logicalBlockSize(t, loopDeviceOf(t, e.volumeFile(id)))
			snap := e.createSnapshot(t, "geometry-snap-"+tc.name, id)
			e.release(t, a)
			restored := e.createVolume(t, "geometry-restored-"+tc.name, tc.fsType, tc.size, fromSnapshot(snap.GetSnapshotId())).GetVolumeId()

			for _, v := range []struct{ what, id string }{{"origin after the snapshot", id}, {"volume restored from it", restored}} {
				what, vol := v.what, v.id
				// Staged for block access, the device is attached and
				// nothing tries to mount it yet.
				b := e.stage(t, vol, "")
				now := logicalBlockSize(t, loopDeviceOf(t, e.volumeFile(vol)))
				if err := e.tryUnstage(b); err != nil {
					t.Fatal(err)
				}
				m, err := e.tryStage(t, vol, tc.fsType)
				if err != nil {
					t.Errorf("%s cannot be staged: %v\nits loop device now has %d-byte logical blocks, the filesystem was made on a device with %d-byte ones",
						what, err, now, formatted)
					continue
				}
				checkFiles(t, e.publish(t, m).target, want)
			}
		})
	}
}

// logicalBlockSize reads a block device's logical block size from sysfs.
func logicalBlockSize(t *testing.T, device string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(device), "queue", "logical_block_size"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("logical block size of %s: %v", device, err)
	}
	return n
}
