package lvm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"time"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// CreateVolume implements backend.Backend.
func (b *Backend) CreateVolume(ctx context.Context, req backend.VolumeRequest) (backend.Volume, error) {
	if err := backend.ValidateName(req.Name); err != nil {
		return backend.Volume{}, err
	}
	id := backend.VolumeIDFor(req.Name)
	existing, err := b.find(ctx, id)
	switch {
	case err == nil && existing.Complete:
		return existing.volume(), compatible(existing, req)
	case err == nil:
		if err := b.removeLeftover(ctx, existing); err != nil {
			return backend.Volume{}, err
		}
	case errors.Is(err, errForeign):
		return backend.Volume{}, fmt.Errorf("%w: an LV named %s exists in %s that Tarn did not create", backend.ErrAlreadyExists, id, b.cfg.VolumeGroup)
	case !errors.Is(err, backend.ErrNotFound):
		return backend.Volume{}, err
	}

	cls, err := b.parseClass(req.Parameters)
	if err != nil {
		return backend.Volume{}, err
	}
	if cls.Type == typeThin {
		if err := b.poolZeroes(ctx); err != nil {
			return backend.Volume{}, err
		}
	}
	size, err := backend.RoundSize(req.RequiredBytes, req.LimitBytes, req.FsType)
	if err != nil {
		return backend.Volume{}, err
	}
	src, err := b.resolveSource(ctx, req.Source)
	if err != nil {
		return backend.Volume{}, err
	}
	if src != nil && req.FsType != "" {
		if block, err := b.blockContent(ctx, *src); err != nil {
			return backend.Volume{}, err
		} else if block {
			return backend.Volume{}, backend.FilesystemFromBlockError(req.Source)
		}
	}
	if src != nil && src.lv.Size > size {
		if req.LimitBytes > 0 && src.lv.Size > req.LimitBytes {
			return backend.Volume{}, fmt.Errorf("%w: source is %d bytes, more than the limit of %d", backend.ErrOutOfRange, src.lv.Size, req.LimitBytes)
		}
		size = src.lv.Size
	}
	vg, err := b.client.VG(ctx, b.cfg.VolumeGroup)
	if err != nil {
		return backend.Volume{}, err
	}
	if size, err = extentSize(size, req.RequiredBytes, req.LimitBytes, vg.ExtentSize, req.FsType); err != nil {
		return backend.Volume{}, err
	}

	o := object{
		ID: id, Name: req.Name, Type: cls.Type, FsType: req.FsType, Params: maps.Clone(req.Parameters),
		SourceSnapshotID: req.Source.SnapshotID, SourceVolumeID: req.Source.VolumeID,
	}
	tags, err := creationTags(o)
	if err != nil {
		return backend.Volume{}, err
	}
	thinClone := src != nil && cls.Type == typeThin && src.lv.IsThin() && src.lv.Pool == b.cfg.ThinPool
	if src != nil && !thinClone {
		if err := b.refuseTornCopy(*src); err != nil {
			return backend.Volume{}, err
		}
	}
	// The promise is kept until LVM shows the LV at its full size: right
	// after it is made, or, for a thin clone made at its source's size,
	// after its extension. Whatever fails first releases it on return.
	growClone := thinClone && size > src.lv.Size
	release, err := b.reserve(ctx, cls.Type, b.cfg.ThinPool, cls.Ratio, size)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	defer release()
	create := func() error {
		if !growClone {
			defer release()
		}
		if thinClone {
			// A thin snapshot of the source, made an ordinary volume:
			// no activation-skip flag, active for the steps below.
			return b.client.ThinSnapshot(ctx, lvmcmd.ThinSnapshotOptions{
				VG: b.cfg.VolumeGroup, Name: id, Origin: src.ID, Activate: true, Tags: tags,
			})
		}
		pool := ""
		if cls.Type == typeThin {
			pool = b.cfg.ThinPool
		}
		return b.client.Create(ctx, lvmcmd.CreateOptions{
			VG: b.cfg.VolumeGroup, Name: id, Size: size, ThinPool: pool, Tags: tags, Activate: src != nil,
		})
	}
	// Nothing reads or mounts what a restore or clone holds, its
	// filesystem UUID included: the bytes may be a tenant's crafted image,
	// the node mounts XFS with nouuid, and ext4 mounts a duplicate UUID.
	var steps []func() error
	switch {
	case growClone:
		steps = append(steps, func() error {
			defer release()
			return b.client.Extend(ctx, b.cfg.VolumeGroup, id, size)
		})
	case src != nil && !thinClone:
		steps = append(steps, func() error {
			// A fresh thin LV reads as zeros, so zero blocks need not
			// be written (and allocated); a linear LV holds whatever
			// an earlier LV left on its extents.
			return b.copyFrom(ctx, *src, id, cls.Type == typeThin)
		})
	}
	if cls.Type == typeThick {
		// Past what a copy wrote, the extents hold what an earlier LV
		// left there.
		var copied int64
		if src != nil {
			copied = src.lv.Size
		}
		steps = append(steps, func() error { return b.zero(ctx, b.devicePath(id), copied, size) })
	}
	if src != nil || cls.Type == typeThick {
		// Attached means staged: a new volume is left inactive, as the
		// node's first AttachVolume expects.
		steps = append(steps, func() error { return b.client.Deactivate(ctx, b.cfg.VolumeGroup, id) })
	}
	created, err := b.build(ctx, "create-volume", id, lvmcmd.ChangeOptions{}, create, steps...)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	o.CreatedAt = created
	if o.lv, err = b.client.LV(ctx, b.cfg.VolumeGroup, id); err != nil {
		return backend.Volume{}, err
	}
	method := "blank"
	switch {
	case thinClone:
		method = methodThin
	case src != nil:
		method = methodCopy
	}
	klog.V(2).InfoS("Created LVM volume", "volumeID", id, "name", req.Name, "type", cls.Type, "size", o.lv.Size, "method", method)
	return o.volume(), nil
}

// compatible decides whether a retried CreateVolume may return the volume
// that already carries its name.
func compatible(o object, req backend.VolumeRequest) error {
	switch {
	case !backend.Fits(o.lv.Size, req.RequiredBytes, req.LimitBytes):
		return fmt.Errorf("%w: volume %q is %d bytes, outside the requested range", backend.ErrAlreadyExists, req.Name, o.lv.Size)
	case o.SourceSnapshotID != req.Source.SnapshotID || o.SourceVolumeID != req.Source.VolumeID:
		return fmt.Errorf("%w: volume %q has a different content source", backend.ErrAlreadyExists, req.Name)
	case o.FsType == "" && req.FsType != "":
		// Its bytes may be a tenant's, which a filesystem volume would
		// have the node mount.
		return fmt.Errorf("%w: volume %q is a raw block volume, not one for a filesystem", backend.ErrAlreadyExists, req.Name)
	case o.FsType != req.FsType && req.FsType != "" && o.FsType != "":
		return fmt.Errorf("%w: volume %q was made for %s, not %s", backend.ErrAlreadyExists, req.Name, o.FsType, req.FsType)
	case !maps.Equal(o.Params, req.Parameters):
		return fmt.Errorf("%w: volume %q has different parameters", backend.ErrAlreadyExists, req.Name)
	}
	return nil
}

// resolveSource returns the complete snapshot or volume a new volume is to
// be made from, nil for a blank volume.
func (b *Backend) resolveSource(ctx context.Context, s backend.Source) (*object, error) {
	switch {
	case s.SnapshotID != "" && s.VolumeID != "":
		return nil, fmt.Errorf("%w: a volume cannot come from both a snapshot and a volume", backend.ErrInvalid)
	case s.SnapshotID != "":
		o, err := b.getSnapshot(ctx, s.SnapshotID)
		if err != nil {
			return nil, fmt.Errorf("source snapshot: %w", err)
		}
		return &o, nil
	case s.VolumeID != "":
		o, err := b.getVolume(ctx, s.VolumeID)
		if err != nil {
			return nil, fmt.Errorf("source volume: %w", err)
		}
		if err := b.finishGrowth(ctx, &o); err != nil {
			return nil, fmt.Errorf("source volume: %w", err)
		}
		return &o, nil
	}
	return nil, nil
}

// blockContent says whether a volume or snapshot holds what a raw block
// volume held. A snapshot whose tags do not say was made by a Tarn that did
// not note it; its origin, while it exists, still does. Once the origin is
// gone nothing tells, and such snapshots are taken for a filesystem's, as
// Kubernetes takes a VolumeSnapshotContent without a source volume mode:
// refusing would strand every filesystem snapshot of an upgraded VG.
func (b *Backend) blockContent(ctx context.Context, o object) (bool, error) {
	if backend.ValidVolumeID(o.ID) {
		return o.FsType == "", nil
	}
	switch o.SourceMode {
	case modeBlock:
		return true, nil
	case modeFilesystem:
		return false, nil
	}
	origin, err := b.getVolume(ctx, o.SourceVolumeID)
	if errors.Is(err, backend.ErrNotFound) {
		klog.InfoS("Snapshot does not record whether its origin was a raw block volume, and the origin is gone; taking it for a filesystem's",
			"snapshotID", o.ID, "sourceVolumeID", o.SourceVolumeID)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("origin %s of snapshot %s: %w", o.SourceVolumeID, o.ID, err)
	}
	return origin.FsType == "", nil
}

// DeleteVolume implements backend.Backend. Snapshots and clones of the
// volume are separate LVs and stay usable: thin snapshots keep their
// blocks in the pool, copies never shared any.
func (b *Backend) DeleteVolume(ctx context.Context, id string) error {
	return b.remove(ctx, id, backend.ValidVolumeID, "volume")
}

func (b *Backend) remove(ctx context.Context, id string, valid func(string) bool, what string) error {
	if !valid(id) {
		return nil
	}
	o, err := b.find(ctx, id)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return nil
	case errors.Is(err, errForeign):
		klog.InfoS("Not deleting an LV Tarn did not create", "lv", id)
		return nil
	case err != nil && !o.lv.HasTag(tagOwner):
		return err
	}
	// An owned LV with unreadable tags is still Tarn's to delete.
	if o.lv.DeviceOpen {
		return fmt.Errorf("%w: %s %s is open on this node (attached or mounted); unstage it first", backend.ErrInUse, what, id)
	}
	b.faults.Point("delete-" + what + ".before-lvremove")
	if err := b.client.Remove(ctx, b.cfg.VolumeGroup, id); err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("delete %s %s: %w", what, id, err)
	}
	klog.V(2).InfoS("Deleted LVM "+what, "id", id)
	return nil
}

// GetVolume implements backend.Backend.
func (b *Backend) GetVolume(ctx context.Context, id string) (backend.Volume, error) {
	o, err := b.getVolume(ctx, id)
	if err != nil {
		return backend.Volume{}, err
	}
	return o.volume(), nil
}

// ListVolumes implements backend.Backend.
func (b *Backend) ListVolumes(ctx context.Context) ([]backend.Volume, error) {
	objs, err := b.list(ctx, backend.ValidVolumeID)
	if err != nil {
		return nil, err
	}
	out := make([]backend.Volume, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.volume())
	}
	return out, nil
}

func sortObjects(objs []object) {
	sort.Slice(objs, func(i, j int) bool { return objs[i].ID < objs[j].ID })
}

// ExpandVolume implements backend.Backend. Device-mapper sees the new size
// at once, so the node only has to grow the filesystem.
func (b *Backend) ExpandVolume(ctx context.Context, id string, sizeBytes, limitBytes int64) (int64, error) {
	o, err := b.getVolume(ctx, id)
	if err != nil {
		return 0, err
	}
	if err := b.finishGrowth(ctx, &o); err != nil {
		return 0, err
	}
	size, err := backend.RoundSize(sizeBytes, limitBytes, o.FsType)
	if err != nil {
		return 0, err
	}
	vg, err := b.client.VG(ctx, b.cfg.VolumeGroup)
	if err != nil {
		return 0, err
	}
	if size, err = extentSize(size, sizeBytes, limitBytes, vg.ExtentSize, o.FsType); err != nil {
		return 0, err
	}
	if size <= o.lv.Size {
		return o.lv.Size, nil
	}
	typ, pool := typeThick, ""
	if o.lv.IsThin() {
		typ, pool = typeThin, o.lv.Pool
	}
	release, err := b.reserve(ctx, typ, pool, ratioOf(o), size-o.lv.Size)
	if err != nil {
		return 0, err
	}
	defer release()
	if typ == typeThick {
		if err := b.client.Change(ctx, b.cfg.VolumeGroup, id, lvmcmd.ChangeOptions{AddTags: []string{zeroFromTag(o.lv.Size)}}); err != nil {
			return 0, fmt.Errorf("expand volume %s: %w", id, err)
		}
	}
	if err := b.client.Extend(ctx, b.cfg.VolumeGroup, id, size); err != nil {
		return 0, fmt.Errorf("expand volume %s: %w", id, err)
	}
	if typ == typeThick {
		if err := b.zeroGrowth(ctx, id, o.lv.Size); err != nil {
			return 0, err
		}
	}
	klog.V(2).InfoS("Expanded LVM volume", "volumeID", id, "from", o.lv.Size, "to", size)
	return size, nil
}

// finishGrowth zeroes what an interrupted expansion added to o before o
// is copied: the copy would carry an earlier LV's data.
func (b *Backend) finishGrowth(ctx context.Context, o *object) error {
	if o.ZeroFrom == 0 {
		return nil
	}
	if err := b.zeroGrowth(ctx, o.ID, o.ZeroFrom); err != nil {
		return err
	}
	refreshed, err := b.getVolume(ctx, o.ID)
	if err != nil {
		return err
	}
	*o = refreshed
	return nil
}

// zeroGrowth zeroes a thick volume from offset from to its end, where an
// expansion gave it extents that may hold an earlier LV's data, and then
// drops the record of that expansion. Device-mapper shows the new extents
// the moment the LV grows, so a volume in use reads them only for as long
// as this runs; an inactive one is activated just for it.
func (b *Backend) zeroGrowth(ctx context.Context, id string, from int64) error {
	lv, err := b.client.LV(ctx, b.cfg.VolumeGroup, id)
	if err != nil {
		return err
	}
	if !lv.Active {
		if err := b.client.Activate(ctx, b.cfg.VolumeGroup, id, false); err != nil {
			return fmt.Errorf("activate %s to zero its growth: %w", id, err)
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := b.client.Deactivate(cctx, b.cfg.VolumeGroup, id); err != nil {
				klog.ErrorS(err, "Cannot deactivate volume again after zeroing its growth", "lv", id)
			}
		}()
	}
	if err := b.zero(ctx, b.devicePath(id), from, lv.Size); err != nil {
		return fmt.Errorf("expand volume %s: %w", id, err)
	}
	if err := b.client.Change(ctx, b.cfg.VolumeGroup, id, lvmcmd.ChangeOptions{DelTags: []string{zeroFromTag(from)}}); err != nil {
		return fmt.Errorf("expand volume %s: %w", id, err)
	}
	klog.V(2).InfoS("Zeroed the growth of a thick volume", "volumeID", id, "from", from, "to", lv.Size)
	return nil
}
