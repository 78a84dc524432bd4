package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/test/testpool"
)

// rawVolume is the size of the block volumes below: room for an XFS of
// mkfs.xfs's minimum size.
const rawVolume = 320 * MiB

// tenantImage is a filesystem image as a tenant could write it onto a raw
// block volume; its UUID names it in the kernel log.
type tenantImage struct {
	name  string
	build func(t *testing.T, path, uuid string)
}

var tenantImages = []tenantImage{
	{"xfs-dirty-log", dirtyXFSImage},
	{"ext4", ext4Image},
}

// TestBlockCopiesAreByteIdentical writes real filesystem images onto a raw
// block volume, as a tenant may, and snapshots, restores and clones it as
// block. The bytes a tenant wrote are data to Tarn: every copy must be
// the source's bytes exactly, which no UUID change, fsck or log replay
// leaves true, and the kernel must not have mounted any of them, since a
// crafted image is an attack on the kernel's filesystem code.
func TestBlockCopiesAreByteIdentical(t *testing.T) {
	for _, pool := range []testpool.Kind{testpool.XFSReflink, testpool.Ext4} {
		t.Run(string(pool), func(t *testing.T) {
			e := startInProcess(t, pool, 4*GiB)
			for _, img := range tenantImages {
				t.Run(img.name, func(t *testing.T) {
					kmsg := testpool.OpenKernelLog(t)
					src := e.createVolume(t, "raw-"+img.name, "", rawVolume, nil).GetVolumeId()
					dev := e.use(t, src, "")
					uuid := writeTenantImage(t, img, dev.target)
					want := fileSHA256(t, dev.target)
					seen := naming(kmsg.Read(t), uuid)
					if kmsg != nil && len(seen) == 0 {
						t.Logf("the kernel log did not show the image being made (%s); only byte identity is checked", uuid)
						kmsg = nil
					}
					// A pool without reflinks copies only a volume no
					// pod uses (TestInUseBlockVolumeIsNotCopiedTorn).
					e.release(t, dev)

					snap := e.createSnapshot(t, "raw-snap-"+img.name, src).GetSnapshotId()
					restored := e.createVolume(t, "raw-restored-"+img.name, "", rawVolume, fromSnapshot(snap)).GetVolumeId()
					clone := e.createVolume(t, "raw-clone-"+img.name, "", rawVolume, fromVolume(src)).GetVolumeId()
					if lines := naming(kmsg.Read(t), uuid); len(lines) > 0 {
						t.Errorf("the kernel mounted a copy of the tenant's image while it was snapshotted, restored and cloned:\n%s", strings.Join(lines, "\n"))
					}

					if got := fileSHA256(t, e.snapshotFile(snap)); got != want {
						t.Errorf("snapshot data: sha256 %s, the source device's is %s", got, want)
					}
					for _, c := range []struct{ what, id string }{{"restored volume", restored}, {"clone", clone}} {
						a := e.use(t, c.id, "")
						if got := fileSHA256(t, a.target); got != want {
							t.Errorf("%s: device sha256 %s, the source device's is %s", c.what, got, want)
						}
						e.release(t, a)
					}
					dev = e.use(t, src, "")
					if got := fileSHA256(t, dev.target); got != want {
						t.Errorf("source device changed: sha256 %s, was %s", got, want)
					}
					e.release(t, dev)
				})
			}
		})
	}
}

// writeTenantImage builds img in a scratch file and writes it onto device
// (which reads as zeros: it is a fresh volume) and returns its UUID.
func writeTenantImage(t *testing.T, img tenantImage, device string) string {
	t.Helper()
	uuid := newUUID(t)
	path := filepath.Join(t.TempDir(), img.name+".img")
	img.build(t, path, uuid)
	// Holes are skipped: the device already reads as zeros there.
	if out, err := runCmd("dd", "if="+path, "of="+device, "bs=1M", "conv=sparse,notrunc,fsync", "status=none"); err != nil {
		t.Fatalf("write %s onto %s: %v: %s", path, device, err, out)
	}
	return uuid
}

// dirtyXFSImage makes an XFS whose log holds committed transactions that
// were never written back: what a filesystem shut down mid-use leaves, and
// what kernel log recovery replays at the next mount. Its 4 KiB sectors
// are what mkfs.xfs picks on a Tarn volume, whose logical blocks are 4 KiB,
// so that the kernel would mount it there.
func dirtyXFSImage(t *testing.T, path, uuid string) {
	t.Helper()
	makeImage(t, path, 300*MiB, "mkfs.xfs", "-q", "-s", "size=4096", "-m", "uuid="+uuid)
	withImageMounted(t, path, func(mnt string) {
		writeRandomFile(t, filepath.Join(mnt, "dir", "file"), MiB)
		// The sync commits the log; the shutdown keeps it from being
		// checkpointed and marked clean at unmount.
		syncfs(t, mnt)
		runOrFail(t, "xfs_io", "-x", "-c", "shutdown", mnt)
	})
	if out, _ := runCmd("xfs_logprint", "-t", path); !bytes.Contains(out, []byte("<DIRTY>")) {
		t.Fatalf("the XFS image's log is not dirty after a shutdown:\n%s", out)
	}
}

// ext4Image makes an ext4 with files on it, cleanly unmounted, in the
// 4 KiB blocks of a Tarn volume.
// metadata_csum_seed is what lets tune2fs change its UUID without a check
// first, which Tarn formats its own volumes with.
func ext4Image(t *testing.T, path, uuid string) {
	t.Helper()
	makeImage(t, path, 64*MiB, "mkfs.ext4", "-q", "-F", "-b", "4096", "-U", uuid, "-O", "metadata_csum_seed")
	withImageMounted(t, path, func(mnt string) {
		writeRandomFile(t, filepath.Join(mnt, "dir", "file"), MiB)
	})
}

func makeImage(t *testing.T, path string, size int64, mkfs ...string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	runOrFail(t, append(mkfs, path)...)
}

// withImageMounted mounts an image file on a loop device that the unmount
// releases (mount's autoclear) for the time of use.
func withImageMounted(t *testing.T, path string, use func(mnt string)) {
	t.Helper()
	mnt := t.TempDir()
	runOrFail(t, "mount", "-o", "loop", path, mnt)
	defer runOrFail(t, "umount", mnt)
	use(mnt)
}

func runOrFail(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := runCmd(argv...); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

func newUUID(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// syncfs commits everything written to the filesystem mounted at mnt.
func syncfs(t *testing.T, mnt string) {
	t.Helper()
	f, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatalf("syncfs %s: %v", mnt, err)
	}
}

// naming picks the kernel messages that name uuid: XFS and ext4 name a
// filesystem's UUID when they mount and unmount it, so these are mounts of
// a test image or of a copy, whatever else the machine mounts meanwhile.
func naming(lines []string, uuid string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, uuid) {
			out = append(out, l)
		}
	}
	return out
}
