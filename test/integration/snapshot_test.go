package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestSnapshotOfBusyVolume takes a snapshot of a mounted filesystem while a
// writer keeps appending to it, and restores it beside the still-mounted
// origin. What was written before the snapshot must be there bit for bit,
// the appended file must hold whole writes only (a frozen filesystem never
// captures half a write(2)), and the restored filesystem must be clean:
// ext4 as restored, which it is only if it was frozen rather than merely
// copied, and both once the copy was used and unmounted.
func TestSnapshotOfBusyVolume(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pool   testpool.Kind
		fsType string
	}{
		{"ext4-volume/xfs-reflink-pool", testpool.XFSReflink, "ext4"},
		// Restoring beside the mounted origin meets xfs's refusal to
		// mount two filesystems with one UUID.
		{"xfs-volume/xfs-reflink-pool", testpool.XFSReflink, "xfs"},
		// The copy path takes longer, so the freeze matters more.
		{"ext4-volume/ext4-pool", testpool.Ext4, "ext4"},
		{"xfs-volume/ext4-pool", testpool.Ext4, "xfs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startInProcess(t, tc.pool, 4*GiB)
			vol := e.createVolume(t, "busy", tc.fsType, bigVolume, nil)
			origin := e.use(t, vol.GetVolumeId(), tc.fsType)

			want := map[string]string{
				"small":         writeRandomFile(t, origin.path("small"), 4096+17),
				"dir/medium":    writeRandomFile(t, origin.path("dir/medium"), 3*MiB+5),
				"dir/sub/large": writeRandomFile(t, origin.path("dir/sub/large"), 24*MiB),
			}
			w := startAppender(t, origin.path("stream"))
			w.waitFor(t, 64)
			doneBefore := w.done.Load()
			snap := e.createSnapshot(t, "busy-snap", vol.GetVolumeId())
			startedAfter := w.started.Load()
			// Writes after the snapshot prove it was taken mid-stream and
			// that the filesystem was thawed.
			w.waitFor(t, startedAfter+16)
			w.stop(t)

			restored := e.createVolume(t, "busy-restored", tc.fsType, bigVolume, fromSnapshot(snap.GetSnapshotId())).GetVolumeId()
			if tc.fsType == "ext4" {
				// A frozen ext4 has its journal flushed and the
				// needs_recovery flag cleared, so the image must be
				// clean as it is. A frozen xfs only has its log
				// covered, not cleaned, which the first mount
				// replays; xfs_repair -n rightly reports the log as
				// dirty before that, so xfs is checked after use.
				e.fsckVolume(t, restored, tc.fsType)
			}
			dup := e.use(t, restored, tc.fsType)
			checkFiles(t, dup.target, want)
			n := checkStream(t, dup.path("stream"))
			if n < doneBefore || n > startedAfter {
				t.Errorf("snapshot holds %d appended chunks; %d were written before CreateSnapshot and %d started before it returned",
					n, doneBefore, startedAfter)
			}
			// The origin is still mounted and writable beside its copy.
			checkFiles(t, origin.target, want)
			writeRandomFile(t, origin.path("after"), 4096)
			e.release(t, dup)
			e.fsckVolume(t, restored, tc.fsType)
		})
	}
}

// fsckVolume checks an unused volume's filesystem on the loop device the
// driver attaches for it: staged for block access, the device is attached
// but nothing mounts it, so the checker sees exactly what a stage would.
func (e *env) fsckVolume(t *testing.T, volID, fsType string) {
	t.Helper()
	a := e.stage(t, volID, "")
	fsck(t, loopDeviceOf(t, e.volumeFile(volID)), fsType)
	if err := e.tryUnstage(a); err != nil {
		t.Fatal(err)
	}
}

// chunkSize is the size of one append; each is one write(2).
const chunkSize = 32 << 10

// maxChunks keeps the appender from filling the volume if the test stalls.
const maxChunks = 4096

// chunk returns the content of the i-th append: its number, repeated, so
// that a torn, missing or misplaced chunk shows.
func chunk(i int64) []byte {
	line := fmt.Sprintf("chunk %09d\n", i)
	return bytes.Repeat([]byte(line), chunkSize/len(line)+1)[:chunkSize]
}

// appender appends chunks to a file as fast as it reasonably can.
type appender struct {
	// started counts writes begun and done counts writes returned, so that
	// a snapshot must hold between done-before and started-after chunks.
	started, done atomic.Int64
	quit          chan struct{}
	wg            sync.WaitGroup
	err           error
}

func startAppender(t *testing.T, path string) *appender {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w := &appender{quit: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer f.Close()
		for i := int64(0); ; i++ {
			select {
			case <-w.quit:
				return
			default:
			}
			if i == maxChunks {
				w.err = errors.New("appender reached its limit before it was stopped")
				return
			}
			w.started.Add(1)
			// No fsync: the snapshot's freeze is what must flush.
			if _, err := f.Write(chunk(i)); err != nil {
				w.err = err
				return
			}
			w.done.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	t.Cleanup(func() { w.halt() })
	return w
}

func (w *appender) halt() {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
	w.wg.Wait()
}

// waitFor waits until n chunks were written.
func (w *appender) waitFor(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for w.done.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("appender wrote %d chunks in 30s, waiting for %d", w.done.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *appender) stop(t *testing.T) {
	t.Helper()
	w.halt()
	if w.err != nil {
		t.Fatalf("appender: %v", w.err)
	}
}

// checkStream verifies the appended file of a snapshot: whole chunks, in
// order, each intact. It returns how many there are.
func checkStream(t *testing.T, path string) int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data)%chunkSize != 0 {
		t.Errorf("%s is %d bytes, not a whole number of %d-byte writes: a write was torn", path, len(data), chunkSize)
	}
	n := int64(len(data) / chunkSize)
	for i := int64(0); i < n; i++ {
		if !bytes.Equal(data[i*chunkSize:(i+1)*chunkSize], chunk(i)) {
			t.Errorf("%s: chunk %d of %d is damaged", path, i, n)
			break
		}
	}
	return n
}

// TestReflinkSnapshotsAndClones checks that snapshots and clones share
// extents with their origin exactly on pools that can reflink, and that
// their content is the origin's either way.
func TestReflinkSnapshotsAndClones(t *testing.T) {
	for _, tc := range []struct {
		pool   testpool.Kind
		shared bool
	}{
		{testpool.XFSReflink, true},
		{testpool.Btrfs, true},
		{testpool.Ext4, false},
	} {
		t.Run(string(tc.pool), func(t *testing.T) {
			e := startInProcess(t, tc.pool, 4*GiB)
			vol := e.createVolume(t, "origin", "ext4", bigVolume, nil)
			origin := e.use(t, vol.GetVolumeId(), "ext4")
			want := map[string]string{"data": writeRandomFile(t, origin.path("data"), 8*MiB)}

			snap := e.createSnapshot(t, "origin-snap", vol.GetVolumeId())
			clone := e.createVolume(t, "origin-clone", "ext4", bigVolume, fromVolume(vol.GetVolumeId()))
			for what, path := range map[string]string{
				"snapshot": e.snapshotFile(snap.GetSnapshotId()),
				"clone":    e.volumeFile(clone.GetVolumeId()),
			} {
				shared, err := testpool.SharedExtents(path)
				if err != nil {
					t.Fatal(err)
				}
				if shared != tc.shared {
					t.Errorf("%s data file %s: shared extents = %v, want %v on a %s pool", what, path, shared, tc.shared, tc.pool)
				}
			}

			restored := e.createVolume(t, "origin-restored", "ext4", bigVolume, fromSnapshot(snap.GetSnapshotId()))
			for _, id := range []string{restored.GetVolumeId(), clone.GetVolumeId()} {
				a := e.use(t, id, "ext4")
				checkFiles(t, a.target, want)
			}
		})
	}
}

// TestCopiesKeepTheirOriginsUUID checks that restores and clones of a
// mounted volume keep their origin's filesystem UUID, since the driver
// runs no tool over what it copies, and that each still mounts beside its
// origin with the origin's files: XFS because the node mounts it nouuid,
// ext4 because it mounts a duplicate UUID as it is.
func TestCopiesKeepTheirOriginsUUID(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 4*GiB)
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			id := e.createVolume(t, "uuid-"+fsType, fsType, bigVolume, nil).GetVolumeId()
			a := e.use(t, id, fsType)
			want := map[string]string{"data": writeRandomFile(t, a.path("data"), MiB)}
			snap := e.createSnapshot(t, "uuid-snap-"+fsType, id)
			restored := e.createVolume(t, "uuid-restored-"+fsType, fsType, bigVolume, fromSnapshot(snap.GetSnapshotId())).GetVolumeId()
			clone := e.createVolume(t, "uuid-clone-"+fsType, fsType, bigVolume, fromVolume(id)).GetVolumeId()

			origin := filesystemUUID(t, e.volumeFile(id))
			for _, c := range []struct{ what, id string }{{"restored volume", restored}, {"clone", clone}} {
				if got := filesystemUUID(t, e.volumeFile(c.id)); got != origin {
					t.Errorf("%s has filesystem UUID %s, its origin %s: something rewrote it", c.what, got, origin)
				}
				checkFiles(t, e.use(t, c.id, fsType).target, want)
			}
		})
	}
}

// filesystemUUID reads the UUID of the filesystem in an image or device.
func filesystemUUID(t *testing.T, path string) string {
	t.Helper()
	out, err := runCmd("blkid", "-p", "-s", "UUID", "-o", "value", path)
	if err != nil {
		t.Fatalf("blkid %s: %v: %s", path, err, out)
	}
	return strings.TrimSpace(string(out))
}
