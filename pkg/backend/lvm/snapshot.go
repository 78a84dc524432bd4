package lvm

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// CreateSnapshot implements backend.Backend: a thin snapshot of a thin
// volume, a full copy of a thick one (see the package documentation).
func (b *Backend) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (backend.Snapshot, error) {
	if err := backend.ValidateName(req.Name); err != nil {
		return backend.Snapshot{}, err
	}
	if len(req.Parameters) > 0 {
		return backend.Snapshot{}, fmt.Errorf("%w: the lvm backend takes no snapshot parameters", backend.ErrInvalid)
	}
	id := backend.SnapshotIDFor(req.Name)
	existing, err := b.find(ctx, id)
	switch {
	case err == nil && existing.Complete:
		if existing.SourceVolumeID != req.SourceVolumeID {
			return backend.Snapshot{}, fmt.Errorf("%w: snapshot %q is of volume %s, not %s",
				backend.ErrAlreadyExists, req.Name, existing.SourceVolumeID, req.SourceVolumeID)
		}
		return existing.snapshot(), nil
	case err == nil:
		if err := b.removeLeftover(ctx, existing); err != nil {
			return backend.Snapshot{}, err
		}
	case errors.Is(err, errForeign):
		return backend.Snapshot{}, fmt.Errorf("%w: an LV named %s exists in %s that Tarn did not create", backend.ErrAlreadyExists, id, b.cfg.VolumeGroup)
	case !errors.Is(err, backend.ErrNotFound):
		return backend.Snapshot{}, err
	}
	vol, err := b.getVolume(ctx, req.SourceVolumeID)
	if err != nil {
		return backend.Snapshot{}, fmt.Errorf("source volume: %w", err)
	}
	if err := b.finishGrowth(ctx, &vol); err != nil {
		return backend.Snapshot{}, fmt.Errorf("source volume: %w", err)
	}

	o := object{ID: id, Name: req.Name, SourceVolumeID: vol.ID, SourceMode: volumeMode(vol.FsType), Method: methodCopy, Type: typeThick}
	if vol.lv.IsThin() {
		o.Method, o.Type = methodThin, typeThin
	}
	if o.Method == methodCopy {
		if err := b.refuseTornCopy(vol); err != nil {
			return backend.Snapshot{}, err
		}
	}
	tags, err := creationTags(o)
	if err != nil {
		return backend.Snapshot{}, err
	}
	var create func() error
	var steps []func() error
	var finish lvmcmd.ChangeOptions
	if o.Method == methodThin {
		create = func() error {
			// The snapshot's virtual size counts against the pool like
			// a volume's, at the origin's over-commit ratio.
			release, err := b.reserve(ctx, typeThin, vol.lv.Pool, ratioOf(vol), vol.lv.Size)
			if err != nil {
				return err
			}
			defer release()
			// No FIFREEZE here: LVM's suspend of the origin freezes a
			// mounted filesystem itself, and on Linux < 6.6 it fails
			// with EBUSY if the filesystem is already frozen.
			return b.client.ThinSnapshot(ctx, lvmcmd.ThinSnapshotOptions{
				VG: b.cfg.VolumeGroup, Name: id, Origin: vol.ID, SkipActivation: true, Tags: tags,
			})
		}
	} else {
		create = func() error {
			release, err := b.reserve(ctx, typeThick, "", 1, vol.lv.Size)
			if err != nil {
				return err
			}
			defer release()
			return b.client.Create(ctx, lvmcmd.CreateOptions{VG: b.cfg.VolumeGroup, Name: id, Size: vol.lv.Size, Tags: tags})
		}
		steps = []func() error{
			func() error { return b.copyFrom(ctx, vol, id, false) },
			func() error { return b.client.Deactivate(ctx, b.cfg.VolumeGroup, id) },
		}
		// Like a thin snapshot, a copy is never activated at boot;
		// restores activate it explicitly.
		skip := true
		finish.SkipActivation = &skip
	}
	created, err := b.build(ctx, "create-snapshot", id, finish, create, steps...)
	if err != nil {
		return backend.Snapshot{}, fmt.Errorf("snapshot %s of %s: %w", id, vol.ID, err)
	}
	o.CreatedAt = created
	if o.lv, err = b.client.LV(ctx, b.cfg.VolumeGroup, id); err != nil {
		return backend.Snapshot{}, err
	}
	klog.V(2).InfoS("Created LVM snapshot", "snapshotID", id, "sourceVolumeID", vol.ID, "method", o.Method, "size", o.lv.Size)
	return o.snapshot(), nil
}

// DeleteSnapshot implements backend.Backend. Volumes restored from the
// snapshot are unaffected: thin ones hold their own references to the
// shared blocks, copies share nothing.
func (b *Backend) DeleteSnapshot(ctx context.Context, id string) error {
	return b.remove(ctx, id, backend.ValidSnapshotID, "snapshot")
}

// GetSnapshot implements backend.Backend.
func (b *Backend) GetSnapshot(ctx context.Context, id string) (backend.Snapshot, error) {
	o, err := b.getSnapshot(ctx, id)
	if err != nil {
		return backend.Snapshot{}, err
	}
	return o.snapshot(), nil
}

// ListSnapshots implements backend.Backend.
func (b *Backend) ListSnapshots(ctx context.Context) ([]backend.Snapshot, error) {
	objs, err := b.list(ctx, backend.ValidSnapshotID)
	if err != nil {
		return nil, err
	}
	out := make([]backend.Snapshot, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.snapshot())
	}
	return out, nil
}
