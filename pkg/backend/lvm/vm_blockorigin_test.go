package lvm

import (
	"errors"
	"strings"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// Content from a raw block volume is never made a filesystem volume, which
// the node would mount: a restore or clone asked for with a filesystem is
// refused before any LV is made, also once the origin is gone. A
// filesystem volume's snapshot may be restored as block.
func TestBlockContentIsNeverRestoredAsFilesystem(t *testing.T) {
	for _, typ := range []string{typeThick, typeThin} {
		t.Run(typ, func(t *testing.T) {
			// Thin LVs count at their full size.
			e := newEnv(t, 4*rawSize)
			raw := e.createBlock("raw", typ, backend.Source{})
			writePattern(t, e.attach(raw.ID), "raw")
			e.detach(raw.ID)
			s, err := e.b.CreateSnapshot(e.ctx, backend.SnapshotRequest{Name: e.name("raw-snap"), SourceVolumeID: raw.ID})
			if err != nil {
				t.Fatal(err)
			}
			refuse := func(what string, src backend.Source) {
				t.Helper()
				for _, fsType := range []string{"ext4", "xfs"} {
					req := backend.VolumeRequest{Name: e.name(what + "-" + fsType), RequiredBytes: rawSize, FsType: fsType,
						Parameters: map[string]string{ParamType: typ}, Source: src}
					_, err := e.b.CreateVolume(e.ctx, req)
					if !errors.Is(err, backend.ErrInvalid) || !strings.Contains(err.Error(), "raw block") {
						t.Errorf("%s as %s: %v, want ErrInvalid saying why", what, fsType, err)
					}
					e.assertNoLV(backend.VolumeIDFor(req.Name))
				}
			}
			refuse("restore", backend.Source{SnapshotID: s.ID})
			refuse("clone", backend.Source{VolumeID: raw.ID})
			if err := e.b.DeleteVolume(e.ctx, raw.ID); err != nil {
				t.Fatal(err)
			}
			refuse("orphan-restore", backend.Source{SnapshotID: s.ID})

			fs := e.createVolume("fs", typ, volSize, backend.Source{})
			fsSnap, err := e.b.CreateSnapshot(e.ctx, backend.SnapshotRequest{Name: e.name("fs-snap"), SourceVolumeID: fs.ID})
			if err != nil {
				t.Fatal(err)
			}
			e.createBlock("fs-as-block", typ, backend.Source{SnapshotID: fsSnap.ID})
		})
	}
}
