package lvm

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// changes records the LVM commands that change the VG, so that a test can
// tell that a refused call changed nothing.
type changes struct {
	lvmcmd.Runner
	mu  sync.Mutex
	ran []string
}

func (c *changes) Run(ctx context.Context, args []string) (lvmcmd.Output, error) {
	if args[0] != "lvs" && args[0] != "vgs" {
		c.mu.Lock()
		c.ran = append(c.ran, strings.Join(args, " "))
		c.mu.Unlock()
	}
	return c.Runner.Run(ctx, args)
}

// A raw block volume's bytes are whatever its tenant wrote: a filesystem
// volume made from them would be mounted by the node, handing a crafted
// image to the kernel. So content that comes from a raw block volume,
// through a snapshot or a clone, is restored only as raw block, and the
// refusal comes before anything is reserved or made. Content from a
// filesystem volume may become either.
func TestBlockContentIsOnlyRestoredAsBlock(t *testing.T) {
	ctx := context.Background()
	// Each source makes the content source of the request on b.
	type source func(t *testing.T, b *Backend, f *fakeVG) backend.Source
	volumeOf := func(fsType string) source {
		return func(t *testing.T, b *Backend, f *fakeVG) backend.Source {
			return backend.Source{VolumeID: createFake(t, b, "origin", fsType).ID}
		}
	}
	snapshotOf := func(fsType string, deleteOrigin bool) source {
		return func(t *testing.T, b *Backend, f *fakeVG) backend.Source {
			v := createFake(t, b, "origin", fsType)
			s := snapshotFake(t, b, v.ID)
			if deleteOrigin {
				if err := b.DeleteVolume(ctx, v.ID); err != nil {
					t.Fatal(err)
				}
			}
			return backend.Source{SnapshotID: s.ID}
		}
	}
	// A snapshot tagged by a Tarn that did not note its origin's mode: the
	// origin, while it exists, says what the content is.
	legacySnapshotOf := func(fsType string, deleteOrigin bool) source {
		return func(t *testing.T, b *Backend, f *fakeVG) backend.Source {
			src := snapshotOf(fsType, deleteOrigin)(t, b, f)
			lv := f.lvs[src.SnapshotID]
			lv.tags = slices.DeleteFunc(lv.tags, func(tag string) bool {
				key, _, _ := strings.Cut(tag, "=")
				return !slices.Contains([]string{tagOwner, tagComplete, keyVersion, keyName, keyType, keyFsType, keyParams,
					keySourceSnap, keySourceVol, keyMethod, keyCreated}, key)
			})
			return src
		}
	}
	for _, tc := range []struct {
		name   string
		source source
		fsType string
		want   error
	}{
		{"block snapshot as ext4", snapshotOf("", false), "ext4", backend.ErrInvalid},
		{"block snapshot as xfs", snapshotOf("", false), "xfs", backend.ErrInvalid},
		{"block snapshot of a deleted volume as ext4", snapshotOf("", true), "ext4", backend.ErrInvalid},
		{"block volume cloned as ext4", volumeOf(""), "ext4", backend.ErrInvalid},
		{"legacy block snapshot as ext4", legacySnapshotOf("", false), "ext4", backend.ErrInvalid},
		{"block snapshot as block", snapshotOf("", false), "", nil},
		{"block volume cloned as block", volumeOf(""), "", nil},
		{"filesystem snapshot as block", snapshotOf("ext4", false), "", nil},
		{"filesystem snapshot of a deleted volume as block", snapshotOf("ext4", true), "", nil},
		{"filesystem snapshot as xfs", snapshotOf("ext4", false), "xfs", nil},
		{"filesystem volume cloned as block", volumeOf("xfs"), "", nil},
		{"legacy filesystem snapshot as ext4", legacySnapshotOf("ext4", false), "ext4", nil},
		// Nothing is left to tell, and a Tarn that recorded no mode is what
		// made every snapshot of a VG upgraded from it.
		{"legacy snapshot of a deleted volume as ext4", legacySnapshotOf("", true), "ext4", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeVG(4096*mib, 2048*mib)
			b := fakeBackend(f, nil)
			rec := &changes{Runner: f}
			b.client = lvmcmd.NewClient(rec, time.Minute)
			src := tc.source(t, b, f)
			rec.ran = nil
			req := backend.VolumeRequest{Name: "copy", RequiredBytes: 300 * mib, FsType: tc.fsType, Source: src}
			_, err := b.CreateVolume(ctx, req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("CreateVolume = %v, want %v", err, tc.want)
			}
			if tc.want == nil {
				return
			}
			if !strings.Contains(err.Error(), "raw block") {
				t.Errorf("the refusal does not say why: %v", err)
			}
			if len(rec.ran) > 0 {
				t.Errorf("a refused CreateVolume ran %q", rec.ran)
			}
			// Asked for more than the VG holds, it is still refused for
			// what it is: the check comes before any space is reserved.
			req.RequiredBytes = 1 << 50
			if _, err := b.CreateVolume(ctx, req); !errors.Is(err, tc.want) {
				t.Errorf("CreateVolume of more than the VG holds = %v, want %v", err, tc.want)
			}
		})
	}
}

// A raw block volume is never handed out again for filesystem use, even
// under its own name: a retry may only get what it could have made.
func TestBlockVolumeIsNotReturnedForFilesystemUse(t *testing.T) {
	ctx := context.Background()
	b := fakeBackend(newFakeVG(4096*mib, 2048*mib), nil)
	raw := createFake(t, b, "raw", "")
	_, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "raw", RequiredBytes: raw.SizeBytes, FsType: "ext4"})
	if !errors.Is(err, backend.ErrAlreadyExists) {
		t.Errorf("CreateVolume for ext4 under the name of a raw block volume = %v, want ErrAlreadyExists", err)
	}
	fs := createFake(t, b, "fs", "ext4")
	if got, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "fs", RequiredBytes: fs.SizeBytes}); err != nil || got.ID != fs.ID {
		t.Errorf("CreateVolume for block under the name of a filesystem volume = %+v, %v; want it", got, err)
	}
}

func createFake(t *testing.T, b *Backend, name, fsType string) backend.Volume {
	t.Helper()
	v, err := b.CreateVolume(context.Background(), backend.VolumeRequest{Name: name, RequiredBytes: 300 * mib, FsType: fsType})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func snapshotFake(t *testing.T, b *Backend, volumeID string) backend.Snapshot {
	t.Helper()
	s, err := b.CreateSnapshot(context.Background(), backend.SnapshotRequest{Name: "snap-of-" + volumeID, SourceVolumeID: volumeID})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
