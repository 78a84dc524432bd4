package loop

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/freeze"
	"github.com/tarn-csi/tarn/pkg/loopdev"
	"github.com/tarn-csi/tarn/pkg/metrics"
	"github.com/tarn-csi/tarn/test/testpool"
)

// recorder is a metrics.Recorder that remembers what it was told.
type recorder struct {
	mu      sync.Mutex
	actions map[string]int
	freezes []time.Duration
}

func (r *recorder) ReconcilerAction(action string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.actions == nil {
		r.actions = map[string]int{}
	}
	r.actions[action]++
}

func (r *recorder) FreezeDuration(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freezes = append(r.freezes, d)
}

func (r *recorder) frozen() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.freezes)
}

// assertActions fails the test unless r counted exactly want, with only
// the labels the metrics pre-declare: any other label would be a series
// that dashboards and alerts do not know about.
func (r *recorder) assertActions(t *testing.T, want map[string]int) {
	t.Helper()
	r.mu.Lock()
	got := maps.Clone(r.actions)
	r.mu.Unlock()
	known := []string{
		metrics.ActionIncompleteRemoved, metrics.ActionDeletedRemoved, metrics.ActionTempFileRemoved,
		metrics.ActionLeftoverUnmounted, metrics.ActionLoopDetached, metrics.ActionFilesystemThawed,
	}
	for a := range got {
		if !slices.Contains(known, a) {
			t.Errorf("reconciler action %q is not a declared label", a)
		}
	}
	if got == nil {
		got = map[string]int{}
	}
	if !maps.Equal(got, want) {
		t.Errorf("reconciler actions = %v, want %v", got, want)
	}
}

func TestSweepCountsEachRepair(t *testing.T) {
	// Each leftover is what a crash at one point leaves; setup returns the
	// actions its sweep must count.
	type leftover func(t *testing.T, b *Backend, fl *fakeLoop, dir string) map[string]int
	interruptedCreate := func(t *testing.T, b *Backend, fl *fakeLoop, dir string) map[string]int {
		half := filepath.Join(dir, stagingDir, "vol-x-1")
		mustMkdir(t, half)
		mustWrite(t, filepath.Join(half, dataFile))
		// A loop device on the half-made file, as an older Tarn's log
		// replay of a clone left it.
		fl.Attach(filepath.Join(half, dataFile), loopdev.Options{})
		// A second one killed before it attached anything.
		mustMkdir(t, filepath.Join(dir, stagingDir, "snap-y-2"))
		return map[string]int{metrics.ActionIncompleteRemoved: 2, metrics.ActionLoopDetached: 1}
	}
	interruptedDelete := func(t *testing.T, b *Backend, fl *fakeLoop, dir string) map[string]int {
		mustMkdir(t, filepath.Join(dir, trashDir, "vol-z-3", "obj"))
		return map[string]int{metrics.ActionDeletedRemoved: 1}
	}
	interruptedMetaWrite := func(t *testing.T, b *Backend, fl *fakeLoop, dir string) map[string]int {
		ctx := context.Background()
		v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "v", RequiredBytes: backend.MiB})
		if err != nil {
			t.Fatal(err)
		}
		s, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: "s", SourceVolumeID: v.ID})
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, filepath.Join(dir, volumesDir, v.ID, ".tmp-meta.json-1"))
		mustWrite(t, filepath.Join(dir, snapshotsDir, s.ID, ".tmp-meta.json-2"))
		return map[string]int{metrics.ActionTempFileRemoved: 2}
	}
	deletedBackingFile := func(t *testing.T, b *Backend, fl *fakeLoop, dir string) map[string]int {
		fl.Attach(filepath.Join(dir, "gone.img"), loopdev.Options{})
		return map[string]int{metrics.ActionLoopDetached: 1}
	}
	tests := []struct {
		name      string
		leftovers []leftover
	}{
		{"clean pool", nil},
		{"interrupted creates", []leftover{interruptedCreate}},
		{"interrupted delete", []leftover{interruptedDelete}},
		{"interrupted metadata writes", []leftover{interruptedMetaWrite}},
		{"loop device of a deleted file", []leftover{deletedBackingFile}},
		{"all at once", []leftover{interruptedCreate, interruptedDelete, interruptedMetaWrite, deletedBackingFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, fl, dir := newTestBackend(t)
			want := map[string]int{}
			for _, l := range tt.leftovers {
				for a, n := range l(t, b, fl, dir) {
					want[a] += n
				}
			}
			rec := &recorder{}
			if _, err := New(context.Background(), Config{PoolDir: dir, Loop: fl, Metrics: rec}); err != nil {
				t.Fatal(err)
			}
			rec.assertActions(t, want)
			if f := rec.frozen(); len(f) != 0 {
				t.Errorf("a sweep recorded freezes: %v", f)
			}
			// Everything was repaired: a second start has nothing to do.
			again := &recorder{}
			if _, err := New(context.Background(), Config{PoolDir: dir, Loop: fl, Metrics: again}); err != nil {
				t.Fatal(err)
			}
			again.assertActions(t, map[string]int{})
		})
	}
}

// realPool opens a loop backend on a fresh XFS reflink pool with real loop
// devices, reporting to rec.
func realPool(t *testing.T, rec metrics.Recorder) (*Backend, string) {
	t.Helper()
	pool := testpool.New(t, testpool.XFSReflink, 512*backend.MiB)
	b, err := New(context.Background(), Config{PoolDir: pool, DirectIO: true, Metrics: rec})
	if err != nil {
		t.Fatal(err)
	}
	return b, pool
}

// attachFormatted creates an ext4 volume and attaches it; the device is
// detached at cleanup.
func attachFormatted(t *testing.T, b *Backend, name string) (id, dev string) {
	t.Helper()
	ctx := context.Background()
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: name, RequiredBytes: 64 * backend.MiB, FsType: "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	dev, err = b.AttachVolume(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.DetachVolume(ctx, v.ID); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	mkfs(t, dev)
	return v.ID, dev
}

func mkfs(t *testing.T, dev string) {
	t.Helper()
	if out, err := exec.Command("mkfs.ext4", "-F", "-q", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v\n%s", dev, err, out)
	}
}

// mountAt mounts dev's ext4 on a new directory mnt; it is unmounted (and
// thawed first, so that a failing test cannot hang on a frozen unmount)
// at cleanup unless the test already did.
func mountAt(t *testing.T, dev, mnt string) {
	t.Helper()
	mustMkdir(t, mnt)
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s on %s: %v", dev, mnt, err)
	}
	t.Cleanup(func() {
		if mounted, err := mountinfo.Mounted(mnt); err != nil || !mounted {
			return
		}
		_ = freeze.Thaw(mnt)
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("cleanup: unmount %s: %v", mnt, err)
		}
	})
}

func TestFreezeDurationIsRecorded(t *testing.T) {
	rec := &recorder{}
	b, _ := realPool(t, rec)
	ctx := context.Background()
	id, dev := attachFormatted(t, b, "origin")
	mnt := filepath.Join(t.TempDir(), "mnt")
	mountAt(t, dev, mnt)

	// Ordered from most to least in use: each state is reached from the
	// one before.
	states := map[string]func(t *testing.T){
		"mounted": func(*testing.T) {},
		"attached": func(t *testing.T) {
			if mounted, err := mountinfo.Mounted(mnt); err != nil || !mounted {
				return
			}
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Fatal(err)
			}
		},
		"detached": func(t *testing.T) {
			if err := b.DetachVolume(ctx, id); err != nil {
				t.Fatal(err)
			}
		},
	}
	snapshot := func(n int) error {
		_, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: fmt.Sprint("snap-", n), SourceVolumeID: id})
		return err
	}
	clone := func(n int) error {
		_, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: fmt.Sprint("clone-", n), FsType: "ext4",
			RequiredBytes: 64 * backend.MiB, Source: backend.Source{VolumeID: id}})
		return err
	}
	tests := []struct {
		name   string
		state  string
		op     func(n int) error
		frozen bool
	}{
		{"snapshot of a mounted volume", "mounted", snapshot, true},
		{"clone of a mounted volume", "mounted", clone, true},
		// Only flushed: no writer was blocked.
		{"snapshot of an attached volume", "attached", snapshot, false},
		{"clone of an attached volume", "attached", clone, false},
		{"snapshot of a detached volume", "detached", snapshot, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			states[tt.state](t)
			before := len(rec.frozen())
			if err := tt.op(i); err != nil {
				t.Fatal(err)
			}
			got := rec.frozen()[before:]
			want := 0
			if tt.frozen {
				want = 1
			}
			if len(got) != want {
				t.Fatalf("recorded %d freeze durations %v, want %d", len(got), got, want)
			}
			// A reflink clone holds the freeze for milliseconds; the
			// watchdog would have cut anything near its timeout.
			for _, d := range got {
				if d <= 0 || d >= b.cfg.FreezeTimeout {
					t.Errorf("freeze duration %v, want within (0, %v)", d, b.cfg.FreezeTimeout)
				}
			}
		})
	}
	rec.assertActions(t, map[string]int{})
}

// A driver killed in the middle of a snapshot leaves a frozen filesystem,
// and an older Tarn killed during a clone's XFS log replay a mount and a
// loop device inside .staging; the next start repairs and counts each.
func TestSweepCountsKernelRepairs(t *testing.T) {
	b, pool := realPool(t, nil)
	id, dev := attachFormatted(t, b, "frozen")
	mnt := filepath.Join(t.TempDir(), "mnt")
	mountAt(t, dev, mnt)
	if err := freeze.Freeze(mnt); err != nil {
		t.Fatal(err)
	}

	half := filepath.Join(pool, stagingDir, "vol-x-1")
	mustMkdir(t, half)
	img := filepath.Join(half, dataFile)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32*backend.MiB); err != nil {
		t.Fatal(err)
	}
	kernel := &loopdev.Manager{}
	halfDev, err := kernel.Attach(img, loopdev.Options{BlockSize: deviceBlockSize})
	if err != nil {
		t.Fatal(err)
	}
	// Only if the sweep did not, and looked up again: by then the number
	// may belong to another process's device.
	t.Cleanup(func() {
		devs, _ := kernel.FindByBackingFile(img)
		for _, d := range devs {
			_ = kernel.Detach(d.Path)
		}
	})
	mkfs(t, halfDev.Path)
	mountAt(t, halfDev.Path, filepath.Join(half, "replay"))

	rec := &recorder{}
	restarted, err := New(context.Background(), Config{PoolDir: pool, DirectIO: true, Metrics: rec})
	if err != nil {
		t.Fatal(err)
	}
	rec.assertActions(t, map[string]int{
		metrics.ActionFilesystemThawed:  1,
		metrics.ActionLeftoverUnmounted: 1,
		metrics.ActionLoopDetached:      1,
		metrics.ActionIncompleteRemoved: 1,
	})
	if thawed, err := freeze.ThawFrozen(mnt); err != nil || thawed {
		t.Errorf("after the restart ThawFrozen = %v, %v: the volume was left frozen", thawed, err)
	}
	if got, err := restarted.DevicePath(context.Background(), id); err != nil || got != dev {
		t.Errorf("the sweep touched the staged volume: device %q (%v), want %q", got, err, dev)
	}

	// Thawing a filesystem that is not frozen is not a repair.
	again := &recorder{}
	if _, err := New(context.Background(), Config{PoolDir: pool, DirectIO: true, Metrics: again}); err != nil {
		t.Fatal(err)
	}
	again.assertActions(t, map[string]int{})
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
}
