package loop

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// A raw block volume's bytes are whatever its tenant wrote: a filesystem
// volume made from them would be mounted by the node, handing a crafted
// image to the kernel. So content that comes from a raw block volume,
// through a snapshot or a clone, is restored only as raw block, and the
// refusal comes before anything is reserved or written. Content from a
// filesystem volume may become either.
func TestBlockContentIsOnlyRestoredAsBlock(t *testing.T) {
	ctx := context.Background()
	// Each source makes the content source of the request on b.
	type source func(t *testing.T, b *Backend) backend.Source
	volumeOf := func(fsType string) source {
		return func(t *testing.T, b *Backend) backend.Source {
			return backend.Source{VolumeID: mustVolume(t, b, "origin", fsType).ID}
		}
	}
	snapshotOf := func(fsType string) source {
		return func(t *testing.T, b *Backend) backend.Source {
			return backend.Source{SnapshotID: mustSnapshot(t, b, mustVolume(t, b, "origin", fsType).ID).ID}
		}
	}
	// The origin deleted: a snapshot carries its origin's mode itself.
	orphanSnapshotOf := func(fsType string) source {
		return func(t *testing.T, b *Backend) backend.Source {
			v := mustVolume(t, b, "origin", fsType)
			s := mustSnapshot(t, b, v.ID)
			if err := b.DeleteVolume(ctx, v.ID); err != nil {
				t.Fatal(err)
			}
			return backend.Source{SnapshotID: s.ID}
		}
	}
	// A snapshot recorded by a Tarn that did not note its origin's mode:
	// the origin, while it exists, says what the content is.
	legacySnapshotOf := func(fsType string, deleteOrigin bool) source {
		return func(t *testing.T, b *Backend) backend.Source {
			v := mustVolume(t, b, "origin", fsType)
			s := mustSnapshot(t, b, v.ID)
			stripSnapshotRecord(t, b, s.ID)
			if deleteOrigin {
				if err := b.DeleteVolume(ctx, v.ID); err != nil {
					t.Fatal(err)
				}
			}
			return backend.Source{SnapshotID: s.ID}
		}
	}
	for _, tc := range []struct {
		name   string
		source source
		fsType string
		want   error
	}{
		{"block snapshot as ext4", snapshotOf(""), "ext4", backend.ErrInvalid},
		{"block snapshot as xfs", snapshotOf(""), "xfs", backend.ErrInvalid},
		{"block snapshot of a deleted volume as ext4", orphanSnapshotOf(""), "ext4", backend.ErrInvalid},
		{"block volume cloned as ext4", volumeOf(""), "ext4", backend.ErrInvalid},
		{"legacy block snapshot as ext4", legacySnapshotOf("", false), "ext4", backend.ErrInvalid},
		{"block snapshot as block", snapshotOf(""), "", nil},
		{"block volume cloned as block", volumeOf(""), "", nil},
		{"filesystem snapshot as block", snapshotOf("ext4"), "", nil},
		{"filesystem snapshot of a deleted volume as block", orphanSnapshotOf("ext4"), "", nil},
		{"filesystem snapshot as xfs", snapshotOf("ext4"), "xfs", nil},
		{"filesystem volume cloned as block", volumeOf("xfs"), "", nil},
		{"legacy filesystem snapshot as ext4", legacySnapshotOf("ext4", false), "ext4", nil},
		// Nothing is left to tell, and a Tarn that recorded no mode is what
		// made every snapshot of a pool upgraded from it.
		{"legacy snapshot of a deleted volume as ext4", legacySnapshotOf("", true), "ext4", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &pointRecorder{}
			b, err := New(ctx, Config{PoolDir: t.TempDir(), Loop: &fakeLoop{}, Faults: rec})
			if err != nil {
				t.Fatal(err)
			}
			src := tc.source(t, b)
			origin, _ := b.readVolume(src.VolumeID)
			rec.points = nil
			req := backend.VolumeRequest{Name: "copy", RequiredBytes: 300 * backend.MiB, FsType: tc.fsType, Source: src}
			_, err = b.CreateVolume(ctx, req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("CreateVolume = %v, want %v", err, tc.want)
			}
			if tc.want == nil {
				return
			}
			if !strings.Contains(err.Error(), "raw block") {
				t.Errorf("the refusal does not say why: %v", err)
			}
			if len(rec.points) > 0 {
				t.Errorf("a refused CreateVolume reached %v", rec.points)
			}
			if _, err := b.GetVolume(ctx, backend.VolumeIDFor(req.Name)); !errors.Is(err, backend.ErrNotFound) {
				t.Errorf("GetVolume after the refusal = %v, want ErrNotFound", err)
			}
			if now, _ := b.readVolume(src.VolumeID); now.Shared != origin.Shared {
				t.Errorf("a refused clone marked its source shared")
			}
			// Asked for more than the pool holds, it is still refused for
			// what it is: the check comes before any space is reserved.
			req.RequiredBytes = 1 << 50
			if _, err := b.CreateVolume(ctx, req); !errors.Is(err, tc.want) {
				t.Errorf("CreateVolume of more than the pool holds = %v, want %v", err, tc.want)
			}
		})
	}
}

// A raw block volume is never handed out again for filesystem use, even
// under its own name: a retry may only get what it could have made.
func TestBlockVolumeIsNotReturnedForFilesystemUse(t *testing.T) {
	ctx := context.Background()
	b, _, _ := newTestBackend(t)
	raw := mustVolume(t, b, "raw", "")
	_, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "raw", RequiredBytes: raw.SizeBytes, FsType: "ext4"})
	if !errors.Is(err, backend.ErrAlreadyExists) {
		t.Errorf("CreateVolume for ext4 under the name of a raw block volume = %v, want ErrAlreadyExists", err)
	}
	fs := mustVolume(t, b, "fs", "ext4")
	if got, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "fs", RequiredBytes: fs.SizeBytes}); err != nil || got.ID != fs.ID {
		t.Errorf("CreateVolume for block under the name of a filesystem volume = %+v, %v; want it", got, err)
	}
}

func mustVolume(t *testing.T, b *Backend, name, fsType string) backend.Volume {
	t.Helper()
	v, err := b.CreateVolume(context.Background(), backend.VolumeRequest{Name: name, RequiredBytes: 300 * backend.MiB, FsType: fsType})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustSnapshot(t *testing.T, b *Backend, volumeID string) backend.Snapshot {
	t.Helper()
	s, err := b.CreateSnapshot(context.Background(), backend.SnapshotRequest{Name: "snap-of-" + volumeID, SourceVolumeID: volumeID})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// stripSnapshotRecord rewrites a snapshot's record with only the fields
// every Tarn has written.
func stripSnapshotRecord(t *testing.T, b *Backend, id string) {
	t.Helper()
	m, err := b.readSnapshot(id)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	for k := range fields {
		switch k {
		case "version", "id", "name", "sourceVolumeID", "sizeBytes", "parameters", "method", "createdAt":
		default:
			delete(fields, k)
		}
	}
	if err := b.writeMeta(b.snapshotDir(id), fields); err != nil {
		t.Fatal(err)
	}
}
