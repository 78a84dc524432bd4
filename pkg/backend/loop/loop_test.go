package loop

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/loopdev"
)

// fakeLoop stands in for the kernel so that these unit tests reach the
// backend's branches without root; the integration and sanity tests use
// real loop devices.
type fakeLoop struct {
	mu       sync.Mutex
	attached map[string]string // device -> backing file
	next     int
	failWith error
}

func (f *fakeLoop) Attach(file string, _ loopdev.Options) (loopdev.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failWith != nil {
		return loopdev.Device{}, f.failWith
	}
	if f.attached == nil {
		f.attached = map[string]string{}
	}
	dev := "/dev/fakeloop" + string(rune('0'+f.next))
	f.next++
	f.attached[dev] = file
	return loopdev.Device{Path: dev, BackingFile: file}, nil
}

func (f *fakeLoop) Detach(dev string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.attached, dev)
	return nil
}

func (f *fakeLoop) FindByBackingFile(file string) ([]loopdev.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []loopdev.Device
	for dev, b := range f.attached {
		if b == file {
			out = append(out, loopdev.Device{Path: dev, BackingFile: b})
		}
	}
	return out, nil
}

func (f *fakeLoop) List() ([]loopdev.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []loopdev.Device
	for dev, b := range f.attached {
		_, err := os.Stat(b)
		out = append(out, loopdev.Device{Path: dev, BackingFile: b, Deleted: err != nil})
	}
	return out, nil
}

func (f *fakeLoop) RefreshSize(string) error { return nil }

func newTestBackend(t *testing.T) (*Backend, *fakeLoop, string) {
	t.Helper()
	dir := t.TempDir()
	fl := &fakeLoop{}
	b, err := New(context.Background(), Config{PoolDir: dir, Loop: fl})
	if err != nil {
		t.Fatal(err)
	}
	return b, fl, dir
}

func TestCreateVolumeIdempotence(t *testing.T) {
	ctx := context.Background()
	b, _, _ := newTestBackend(t)
	base := backend.VolumeRequest{Name: "pvc-a", RequiredBytes: 10 * backend.MiB, FsType: "ext4"}
	first, err := b.CreateVolume(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	if first.SizeBytes != 16*backend.MiB {
		t.Errorf("size = %d, want the ext4 minimum of 16 MiB", first.SizeBytes)
	}
	tests := []struct {
		name    string
		mutate  func(*backend.VolumeRequest)
		wantErr error
	}{
		{"same request", func(*backend.VolumeRequest) {}, nil},
		{"compatible range", func(r *backend.VolumeRequest) { r.RequiredBytes = 12 * backend.MiB; r.LimitBytes = 20 * backend.MiB }, nil},
		{"larger size", func(r *backend.VolumeRequest) { r.RequiredBytes = 32 * backend.MiB }, backend.ErrAlreadyExists},
		{"limit below size", func(r *backend.VolumeRequest) { r.LimitBytes = 12 * backend.MiB }, backend.ErrAlreadyExists},
		{"other filesystem", func(r *backend.VolumeRequest) { r.FsType = "xfs" }, backend.ErrAlreadyExists},
		{"other source", func(r *backend.VolumeRequest) { r.Source.SnapshotID = backend.SnapshotIDFor("x") }, backend.ErrAlreadyExists},
		{"other parameters", func(r *backend.VolumeRequest) { r.Parameters = map[string]string{"fsType": "ext4"} }, backend.ErrAlreadyExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := base
			tt.mutate(&req)
			got, err := b.CreateVolume(ctx, req)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got.ID != first.ID {
				t.Errorf("ID = %q, want %q", got.ID, first.ID)
			}
		})
	}
}

func TestCreateVolumeErrors(t *testing.T) {
	ctx := context.Background()
	b, _, dir := newTestBackend(t)
	tests := []struct {
		name    string
		req     backend.VolumeRequest
		wantErr error
	}{
		{"empty name", backend.VolumeRequest{}, backend.ErrInvalid},
		{"range inverted", backend.VolumeRequest{Name: "a", RequiredBytes: 10 * backend.MiB, LimitBytes: backend.MiB}, backend.ErrOutOfRange},
		{"xfs too small for limit", backend.VolumeRequest{Name: "b", LimitBytes: 100 * backend.MiB, FsType: "xfs"}, backend.ErrOutOfRange},
		{"missing snapshot", backend.VolumeRequest{Name: "c", Source: backend.Source{SnapshotID: backend.SnapshotIDFor("nope")}}, backend.ErrNotFound},
		{"missing volume", backend.VolumeRequest{Name: "d", Source: backend.Source{VolumeID: backend.VolumeIDFor("nope")}}, backend.ErrNotFound},
		{"malformed source", backend.VolumeRequest{Name: "e", Source: backend.Source{VolumeID: "../../etc"}}, backend.ErrNotFound},
		{"two sources", backend.VolumeRequest{Name: "f", Source: backend.Source{VolumeID: "a", SnapshotID: "b"}}, backend.ErrInvalid},
		{"unknown parameter", backend.VolumeRequest{Name: "h", Parameters: map[string]string{"thin": "yes"}}, backend.ErrInvalid},
		{"beyond the pool", backend.VolumeRequest{Name: "g", RequiredBytes: 1 << 60}, backend.ErrNoSpace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := b.CreateVolume(ctx, tt.req); !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
	for _, sub := range []string{volumesDir, stagingDir} {
		entries, _ := os.ReadDir(filepath.Join(dir, sub))
		if len(entries) != 0 {
			t.Errorf("failed creates left %d entries in %s", len(entries), sub)
		}
	}
}

func TestDeleteVolumeInUseAndIdempotent(t *testing.T) {
	ctx := context.Background()
	b, _, _ := newTestBackend(t)
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "pvc", RequiredBytes: backend.MiB})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := b.AttachVolume(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := b.AttachVolume(ctx, v.ID); again != dev {
		t.Errorf("second attach gave %q, want the existing %q", again, dev)
	}
	if err := b.DeleteVolume(ctx, v.ID); !errors.Is(err, backend.ErrInUse) {
		t.Fatalf("delete of attached volume: %v, want ErrInUse", err)
	}
	if err := b.DetachVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := b.DeleteVolume(ctx, v.ID); err != nil {
			t.Fatalf("delete #%d: %v", i+1, err)
		}
	}
	if _, err := b.GetVolume(ctx, v.ID); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("get after delete: %v", err)
	}
	if err := b.DeleteVolume(ctx, "not-an-id"); err != nil {
		t.Errorf("delete of malformed id must succeed (nothing to delete): %v", err)
	}
}

func TestAttachFailureIsReported(t *testing.T) {
	ctx := context.Background()
	b, fl, _ := newTestBackend(t)
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "pvc", RequiredBytes: backend.MiB})
	if err != nil {
		t.Fatal(err)
	}
	fl.failWith = errors.New("no free loop device")
	if _, err := b.AttachVolume(ctx, v.ID); err == nil || !strings.Contains(err.Error(), "no free loop device") {
		t.Fatalf("attach error = %v", err)
	}
}

func TestSweepRemovesLeftoversOnly(t *testing.T) {
	ctx := context.Background()
	b, fl, dir := newTestBackend(t)
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "keep", RequiredBytes: backend.MiB})
	if err != nil {
		t.Fatal(err)
	}
	// What a crash could leave: a half-built object, a half-deleted one,
	// a temporary metadata file, and a loop device on a deleted file.
	half := filepath.Join(dir, stagingDir, "vol-x-123")
	if err := os.MkdirAll(half, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(half, dataFile), []byte("x"), 0o600)
	os.MkdirAll(filepath.Join(dir, trashDir, "old", "obj"), 0o700)
	tmpMeta := filepath.Join(dir, volumesDir, v.ID, ".tmp-meta.json-1")
	os.WriteFile(tmpMeta, []byte("{"), 0o600)
	gone := filepath.Join(dir, "gone.img")
	fl.Attach(gone, loopdev.Options{})

	if _, err := New(ctx, Config{PoolDir: dir, Loop: fl}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{half, filepath.Join(dir, trashDir, "old"), tmpMeta} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the sweep", p)
		}
	}
	if devs, _ := fl.FindByBackingFile(gone); len(devs) != 0 {
		t.Error("loop device of a deleted file was not detached")
	}
	if _, err := b.GetVolume(ctx, v.ID); err != nil {
		t.Errorf("the sweep touched a complete volume: %v", err)
	}
}

func TestCorruptMetadataHidesOnlyThatVolume(t *testing.T) {
	ctx := context.Background()
	b, _, dir := newTestBackend(t)
	var ids []string
	for _, n := range []string{"a", "b", "c"} {
		v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: n, RequiredBytes: backend.MiB})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.ID)
	}
	if err := unix.Setxattr(filepath.Join(dir, volumesDir, ids[1]), recordXattr, []byte("{garbage"), unix.XATTR_REPLACE); err != nil {
		t.Fatal(err)
	}
	// Records are cached once read; a restart reads the damaged file.
	b, err := New(ctx, Config{PoolDir: dir, Loop: &fakeLoop{}})
	if err != nil {
		t.Fatal(err)
	}
	vols, err := b.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 2 {
		t.Fatalf("listed %d volumes, want the 2 intact ones", len(vols))
	}
	if _, err := b.GetVolume(ctx, ids[1]); err == nil || errors.Is(err, backend.ErrNotFound) {
		t.Errorf("corrupt volume: %v, want a corruption error (not NotFound: it must not be recreated over)", err)
	}
}

func TestSnapshotRestoreAndExpandOnFiles(t *testing.T) {
	ctx := context.Background()
	b, _, dir := newTestBackend(t)
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "src", RequiredBytes: 4 * backend.MiB})
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, volumesDir, v.ID, dataFile)
	f, _ := os.OpenFile(data, os.O_WRONLY, 0)
	f.WriteAt([]byte("hello tarn"), backend.MiB)
	f.Close()

	s, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: "snap", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: "snap", SourceVolumeID: v.ID}); err != nil || again.ID != s.ID {
		t.Fatalf("repeat snapshot: %v %v", again, err)
	}
	if _, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: "snap", SourceVolumeID: backend.VolumeIDFor("other")}); !errors.Is(err, backend.ErrAlreadyExists) {
		t.Errorf("snapshot name reused for another volume: %v", err)
	}
	if err := b.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	r, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "restored", RequiredBytes: 8 * backend.MiB, Source: backend.Source{SnapshotID: s.ID}})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 10)
	rf, _ := os.Open(filepath.Join(dir, volumesDir, r.ID, dataFile))
	rf.ReadAt(got, backend.MiB)
	rf.Close()
	if string(got) != "hello tarn" {
		t.Errorf("restored data = %q", got)
	}
	if r.SizeBytes != 8*backend.MiB {
		t.Errorf("restored size = %d, want the larger requested 8 MiB", r.SizeBytes)
	}
	if _, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "small", LimitBytes: 2 * backend.MiB, Source: backend.Source{SnapshotID: s.ID}}); !errors.Is(err, backend.ErrOutOfRange) {
		t.Errorf("restore smaller than the snapshot: %v, want ErrOutOfRange", err)
	}
	size, err := b.ExpandVolume(ctx, r.ID, 20*backend.MiB, 0)
	if err != nil || size != 20*backend.MiB {
		t.Fatalf("expand = %d, %v", size, err)
	}
	if size, _ := b.ExpandVolume(ctx, r.ID, 10*backend.MiB, 0); size != 20*backend.MiB {
		t.Errorf("shrinking expand returned %d, want unchanged 20 MiB", size)
	}
	fi, _ := os.Stat(filepath.Join(dir, volumesDir, r.ID, dataFile))
	if fi.Size() != 20*backend.MiB {
		t.Errorf("file size = %d after expand", fi.Size())
	}
	if err := b.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Errorf("second snapshot delete: %v", err)
	}
	if p := b.Health(ctx, r.ID); len(p) != 0 {
		t.Errorf("restored volume unhealthy after snapshot delete: %v", p)
	}
	os.Remove(filepath.Join(dir, volumesDir, r.ID, dataFile))
	if p := b.Health(ctx, r.ID); len(p) != 1 || p[0].Reason != "BackingFileMissing" {
		t.Errorf("health with the data file gone = %v", p)
	}
}

func TestCapacityAccountsForSparseGrowth(t *testing.T) {
	ctx := context.Background()
	b, _, _ := newTestBackend(t)
	before, err := b.Capacity(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "v", RequiredBytes: 64 * backend.MiB}); err != nil {
		t.Fatal(err)
	}
	after, err := b.Capacity(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Other processes write to the same filesystem, so allow slack, but
	// the sparse volume's full size must be reserved.
	drop := before.AvailableBytes - after.AvailableBytes
	if drop < 60*backend.MiB || drop > 80*backend.MiB {
		t.Errorf("available dropped by %d bytes for a 64 MiB sparse volume", drop)
	}
}

// The in-memory record cache must agree with the pool after any mix of
// changes, including ones racing with its first load.
func TestRecordCacheMatchesPool(t *testing.T) {
	ctx := context.Background()
	b, _, dir := newTestBackend(t)
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: fmt.Sprint("v", i), RequiredBytes: backend.MiB})
			if err != nil {
				t.Error(err)
				return
			}
			if i%4 == 0 {
				if err := b.DeleteVolume(ctx, v.ID); err != nil {
					t.Error(err)
				}
			}
			if i%3 == 0 {
				if _, err := b.ExpandVolume(ctx, v.ID, 2*backend.MiB, 0); err != nil && !errors.Is(err, backend.ErrNotFound) {
					t.Error(err)
				}
			}
		}(i)
		if i == 5 {
			go b.ListVolumes(ctx)
		}
	}
	wg.Wait()
	cached, err := b.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := New(ctx, Config{PoolDir: dir, Loop: &fakeLoop{}})
	if err != nil {
		t.Fatal(err)
	}
	onDisk, err := fresh.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cached) != 30 || len(onDisk) != 30 {
		t.Fatalf("cached %d, on disk %d, want 30", len(cached), len(onDisk))
	}
	for i := range cached {
		if cached[i].ID != onDisk[i].ID || cached[i].SizeBytes != onDisk[i].SizeBytes {
			t.Errorf("cache %+v, disk %+v", cached[i], onDisk[i])
		}
	}
}
