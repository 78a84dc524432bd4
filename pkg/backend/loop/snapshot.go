package loop

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// CreateSnapshot implements backend.Backend: the volume's file is cloned,
// with its filesystem frozen for the instant of the clone when mounted.
func (b *Backend) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (backend.Snapshot, error) {
	if err := backend.ValidateName(req.Name); err != nil {
		return backend.Snapshot{}, err
	}
	id := backend.SnapshotIDFor(req.Name)
	if existing, err := b.readSnapshot(id); err == nil {
		if existing.SourceVolumeID != req.SourceVolumeID {
			return backend.Snapshot{}, fmt.Errorf("%w: snapshot %q is of volume %s, not %s",
				backend.ErrAlreadyExists, req.Name, existing.SourceVolumeID, req.SourceVolumeID)
		}
		return existing.snapshot(), nil
	} else if !errors.Is(err, backend.ErrNotFound) {
		return backend.Snapshot{}, err
	}
	vol, err := b.readVolume(req.SourceVolumeID)
	if err != nil {
		return backend.Snapshot{}, fmt.Errorf("source volume: %w", err)
	}
	if err := b.refuseTornCopy(ctx, vol); err != nil {
		return backend.Snapshot{}, err
	}
	src := &source{dataPath: filepath.Join(b.volumeDir(vol.ID), dataFile), size: vol.SizeBytes, volume: &vol}
	// A copy needs room for the data; a reflink needs none now, but makes
	// the origin's allocated blocks shared, so they must be reservable.
	if !b.reflink || !vol.Shared {
		// Held until the copy's blocks are allocated, or the origin is
		// marked shared, where the accounting sees them.
		release, err := b.reserveSpace(0, src)
		if err != nil {
			return backend.Snapshot{}, err
		}
		defer release()
	}

	meta := snapshotMeta{
		Version: metaVersion, ID: id, Name: req.Name, SourceVolumeID: vol.ID,
		SourceVolumeMode: volumeMode(vol.FsType), SizeBytes: vol.SizeBytes, Parameters: maps.Clone(req.Parameters),
	}
	if b.reflink {
		// Recorded before the clone, so that no crash can leave the
		// volume sharing extents with a snapshot it is not known to share
		// (its capacity overstated): a retried CreateSnapshot finds the
		// snapshot and returns it without coming back here. A snapshot
		// that fails leaves the volume conservatively marked; without
		// the record there is no snapshot.
		if err := b.markShared(&vol); err != nil {
			return backend.Snapshot{}, b.full(err)
		}
	}
	err = b.buildObject(ctx, opCreateSnapshot, id, snapshotsDir, func(dir string) error {
		f, err := os.OpenFile(filepath.Join(dir, dataFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o400)
		if err != nil {
			return fmt.Errorf("create snapshot data: %w", err)
		}
		defer f.Close()
		b.point(opCreateSnapshot, "after-data-file")
		method, err := b.cloneFrom(ctx, opCreateSnapshot, f, src)
		if err != nil {
			return err
		}
		meta.Method = string(method)
		// The creation time is the instant the data was captured.
		meta.CreatedAt = time.Now().UTC()
		if err := b.writeNewMeta(dir, meta); err != nil {
			return err
		}
		b.point(opCreateSnapshot, "after-meta")
		return nil
	})
	if err != nil {
		return backend.Snapshot{}, b.full(err)
	}
	b.snapshots.put(meta)
	klog.V(2).InfoS("Created loop snapshot", "snapshotID", id, "sourceVolumeID", vol.ID, "method", meta.Method)
	return meta.snapshot(), nil
}

// DeleteSnapshot implements backend.Backend. Volumes restored from the
// snapshot own their data (reflinked extents are reference counted by the
// filesystem), so they are unaffected.
func (b *Backend) DeleteSnapshot(ctx context.Context, id string) error {
	if !backend.ValidSnapshotID(id) {
		return nil
	}
	if err := b.removeObject(opDeleteSnapshot, b.snapshotDir(id)); err != nil {
		return err
	}
	b.snapshots.remove(id)
	klog.V(2).InfoS("Deleted loop snapshot", "snapshotID", id)
	return nil
}

// GetSnapshot implements backend.Backend.
func (b *Backend) GetSnapshot(ctx context.Context, id string) (backend.Snapshot, error) {
	m, err := b.readSnapshot(id)
	if err != nil {
		return backend.Snapshot{}, err
	}
	return m.snapshot(), nil
}

func (b *Backend) readSnapshot(id string) (snapshotMeta, error) {
	return readRecord[snapshotMeta](filepath.Join(b.cfg.PoolDir, snapshotsDir), "snapshot", id, backend.ValidSnapshotID)
}

// ListSnapshots implements backend.Backend.
func (b *Backend) ListSnapshots(ctx context.Context) ([]backend.Snapshot, error) {
	metas, err := b.snapshots.all()
	if err != nil {
		return nil, err
	}
	out := make([]backend.Snapshot, 0, len(metas))
	for _, m := range metas {
		out = append(out, m.snapshot())
	}
	return out, nil
}
