package loop

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"time"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/atomicfile"
	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/filecopy"
	"github.com/tarn-csi/tarn/pkg/freeze"
)

// CreateVolume implements backend.Backend.
func (b *Backend) CreateVolume(ctx context.Context, req backend.VolumeRequest) (backend.Volume, error) {
	if err := backend.ValidateName(req.Name); err != nil {
		return backend.Volume{}, err
	}
	id := backend.VolumeIDFor(req.Name)
	if existing, err := b.readVolume(id); err == nil {
		return existing.volume(), compatible(existing, req)
	} else if !errors.Is(err, backend.ErrNotFound) {
		return backend.Volume{}, err
	}

	if err := checkParameters(req.Parameters); err != nil {
		return backend.Volume{}, err
	}
	size, err := backend.RoundSize(req.RequiredBytes, req.LimitBytes, req.FsType)
	if err != nil {
		return backend.Volume{}, err
	}
	src, err := b.resolveSource(req.Source)
	if err != nil {
		return backend.Volume{}, err
	}
	if src != nil && src.block && req.FsType != "" {
		return backend.Volume{}, backend.FilesystemFromBlockError(req.Source)
	}
	if src != nil && src.volume != nil {
		if err := b.refuseTornCopy(ctx, *src.volume); err != nil {
			return backend.Volume{}, err
		}
	}
	if src != nil && src.size > size {
		if req.LimitBytes > 0 && src.size > req.LimitBytes {
			return backend.Volume{}, fmt.Errorf("%w: source is %d bytes, more than the limit of %d", backend.ErrOutOfRange, src.size, req.LimitBytes)
		}
		size = src.size
	}
	release, err := b.reserveSpace(size, src)
	if err != nil {
		return backend.Volume{}, err
	}
	// Held until the record is in the cache, where the accounting sees it.
	defer release()

	now := time.Now().UTC()
	meta := volumeMeta{
		Version: metaVersion, ID: id, Name: req.Name, SizeBytes: size, FsType: req.FsType,
		Parameters: maps.Clone(req.Parameters), SourceSnapshotID: req.Source.SnapshotID,
		SourceVolumeID: req.Source.VolumeID, CreatedAt: now, UpdatedAt: now,
	}
	if src != nil && src.volume != nil && b.reflink {
		// Recorded before the clone, so that no crash can leave a volume
		// sharing extents it is not known to share (its capacity
		// overstated); a clone that fails or copies leaves it
		// conservatively marked. Without the record there is no clone.
		if err := b.markShared(src.volume); err != nil {
			return backend.Volume{}, b.full(err)
		}
	}
	var method filecopy.Method
	err = b.buildObject(ctx, opCreateVolume, id, volumesDir, func(dir string) error {
		var err error
		if method, err = b.fillData(ctx, filepath.Join(dir, dataFile), src, size); err != nil {
			return err
		}
		meta.Shared = method == filecopy.Reflink
		if err := b.writeNewMeta(dir, meta); err != nil {
			return err
		}
		b.point(opCreateVolume, "after-meta")
		return nil
	})
	if err != nil {
		return backend.Volume{}, b.full(err)
	}
	b.volumes.put(meta)
	klog.V(2).InfoS("Created loop volume", "volumeID", id, "name", req.Name, "size", size, "method", method)
	return meta.volume(), nil
}

// checkParameters refuses StorageClass parameters the loop backend does
// not understand; fsType is the driver's and only recorded here.
func checkParameters(params map[string]string) error {
	for k := range params {
		if k != "fsType" {
			return fmt.Errorf("%w: unknown parameter %q for the loop backend", backend.ErrInvalid, k)
		}
	}
	return nil
}

// compatible decides whether a retried CreateVolume may return the volume
// that already carries its name.
func compatible(m volumeMeta, req backend.VolumeRequest) error {
	switch {
	case !backend.Fits(m.SizeBytes, req.RequiredBytes, req.LimitBytes):
		return fmt.Errorf("%w: volume %q is %d bytes, outside the requested range", backend.ErrAlreadyExists, req.Name, m.SizeBytes)
	case m.SourceSnapshotID != req.Source.SnapshotID || m.SourceVolumeID != req.Source.VolumeID:
		return fmt.Errorf("%w: volume %q has a different content source", backend.ErrAlreadyExists, req.Name)
	case m.FsType == "" && req.FsType != "":
		// Its bytes may be a tenant's, which a filesystem volume would
		// have the node mount.
		return fmt.Errorf("%w: volume %q is a raw block volume, not one for a filesystem", backend.ErrAlreadyExists, req.Name)
	case m.FsType != req.FsType && req.FsType != "" && m.FsType != "":
		return fmt.Errorf("%w: volume %q was made for %s, not %s", backend.ErrAlreadyExists, req.Name, m.FsType, req.FsType)
	case !maps.Equal(m.Parameters, req.Parameters) && (len(m.Parameters) > 0 || len(req.Parameters) > 0):
		return fmt.Errorf("%w: volume %q has different parameters", backend.ErrAlreadyExists, req.Name)
	}
	return nil
}

// source is the resolved content source of a new volume.
type source struct {
	dataPath string
	size     int64
	// volume is set when cloning a volume, which may be attached and must
	// be quiesced while its data is captured.
	volume *volumeMeta
	// block says the content is what a raw block volume held.
	block bool
}

func (b *Backend) resolveSource(s backend.Source) (*source, error) {
	switch {
	case s.SnapshotID != "" && s.VolumeID != "":
		return nil, fmt.Errorf("%w: a volume cannot come from both a snapshot and a volume", backend.ErrInvalid)
	case s.SnapshotID != "":
		m, err := b.readSnapshot(s.SnapshotID)
		if err != nil {
			return nil, fmt.Errorf("source snapshot: %w", err)
		}
		block, err := b.blockOrigin(m)
		if err != nil {
			return nil, fmt.Errorf("source snapshot: %w", err)
		}
		return &source{dataPath: filepath.Join(b.snapshotDir(m.ID), dataFile), size: m.SizeBytes, block: block}, nil
	case s.VolumeID != "":
		m, err := b.readVolume(s.VolumeID)
		if err != nil {
			return nil, fmt.Errorf("source volume: %w", err)
		}
		return &source{dataPath: filepath.Join(b.volumeDir(m.ID), dataFile), size: m.SizeBytes, volume: &m, block: m.FsType == ""}, nil
	}
	return nil, nil
}

// blockOrigin says whether a snapshot is of a raw block volume. A record
// that does not say was written by a Tarn that did not note it; its
// origin, while it exists, still does. Once the origin is gone nothing
// tells, and such snapshots are taken for a filesystem's, as Kubernetes
// takes a VolumeSnapshotContent without a source volume mode: refusing
// would strand every filesystem snapshot an upgraded pool holds.
func (b *Backend) blockOrigin(m snapshotMeta) (bool, error) {
	switch m.SourceVolumeMode {
	case modeFilesystem:
		return false, nil
	case "":
	default:
		// modeBlock, or a value no Tarn writes, read the safe way.
		return true, nil
	}
	v, err := b.readVolume(m.SourceVolumeID)
	if errors.Is(err, backend.ErrNotFound) {
		klog.InfoS("Snapshot does not record whether its origin was a raw block volume, and the origin is gone; taking it for a filesystem's",
			"snapshotID", m.ID, "sourceVolumeID", m.SourceVolumeID)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("origin %s of snapshot %s: %w", m.SourceVolumeID, m.ID, err)
	}
	return v.FsType == "", nil
}

// buildObject builds an object in a staging directory and renames it into
// place only when fill has finished, so that nothing half-made is ever
// visible.
func (b *Backend) buildObject(ctx context.Context, op, id, parent string, fill func(dir string) error) error {
	dir, err := b.newStagingDir(id)
	if err != nil {
		return err
	}
	b.point(op, "after-staging-dir")
	committed := false
	defer func() {
		if !committed {
			if err := os.RemoveAll(dir); err != nil {
				klog.ErrorS(err, "Cannot remove staging directory; it is swept at next start", "dir", dir)
			}
		}
	}()
	if err := fill(dir); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !b.orderedLog {
		if err := atomicfile.SyncDir(dir); err != nil {
			return err
		}
	}
	b.point(op, "before-publish")
	final := filepath.Join(b.cfg.PoolDir, parent, id)
	if err := os.Rename(dir, final); err != nil {
		return fmt.Errorf("publish %s: %w", id, err)
	}
	committed = true
	b.point(op, "after-publish")
	return syncParent(final)
}

// fillData creates a volume's data file: blank and sparse, or a clone of
// the source grown to size.
func (b *Backend) fillData(ctx context.Context, path string, src *source, size int64) (filecopy.Method, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create data file: %w", err)
	}
	defer f.Close()
	b.point(opCreateVolume, "after-data-file")
	var method filecopy.Method
	if src != nil {
		method, err = b.cloneFrom(ctx, opCreateVolume, f, src)
		if err != nil {
			return "", err
		}
	}
	if err := f.Truncate(size); err != nil {
		return "", fmt.Errorf("size data file: %w", err)
	}
	b.point(opCreateVolume, "after-size")
	if src == nil {
		// A blank volume's only state is its size, which every attach and
		// expansion restores from the record (ensureFileSize).
		return method, nil
	}
	// The copy is left exactly as its source, its filesystem UUID
	// included: parsing or mounting it here would run the host's
	// filesystem code as root over bytes a tenant may have crafted, and
	// the node mounts XFS with nouuid while ext4 mounts a duplicate UUID
	// as it is. Copied data is file data, which no metadata log orders
	// before the publishing rename.
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("fsync data file: %w", err)
	}
	return method, nil
}

// cloneFrom copies the source into dst, quiescing the source volume's
// filesystem for the instant of the copy when it is in use.
func (b *Backend) cloneFrom(ctx context.Context, op string, dst *os.File, src *source) (filecopy.Method, error) {
	in, err := os.Open(src.dataPath)
	if err != nil {
		return "", fmt.Errorf("open source: %w", err)
	}
	defer in.Close()
	device := ""
	if src.volume != nil {
		if device, err = b.DevicePath(ctx, src.volume.ID); err != nil {
			return "", err
		}
	}
	var method filecopy.Method
	res, err := freeze.WhileQuiesced(ctx, device, b.freezeBudget(src.dataPath), func() error {
		b.point(op, "before-clone")
		var err error
		method, err = filecopy.CloneWith(dst, in, b.reflink)
		if err == nil {
			b.point(op, "after-clone")
		}
		return err
	})
	// Writers were blocked whether or not the clone then succeeded, so a
	// failed one counts too.
	if res.Frozen {
		b.metrics.FreezeDuration(res.FrozenFor)
		klog.V(2).InfoS("Froze filesystem for clone", "mountpoint", res.Mountpoint, "frozenFor", res.FrozenFor)
		b.point(op, "after-thaw")
	}
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", src.dataPath, err)
	}
	if method != filecopy.Reflink && device != "" && !res.Frozen {
		// A reflink pool may still copy (a file the filesystem cannot
		// share), and no filesystem was mounted to freeze: not a point
		// in time of a device in use.
		return "", tornCopyError(src.volume.ID, device)
	}
	return method, nil
}

// refuseTornCopy refuses to copy a volume attached on this node with no
// filesystem mounted (a raw block volume, or one staged for block access)
// when the pool has no reflinks: nothing can be frozen on a raw device, and
// a copy that takes as long as the data mixes blocks from before and after
// the writes made meanwhile. A reflink clone is one atomic step.
func (b *Backend) refuseTornCopy(ctx context.Context, vol volumeMeta) error {
	if b.reflink {
		return nil
	}
	dev, err := b.DevicePath(ctx, vol.ID)
	if err != nil || dev == "" {
		return err
	}
	// A mounted filesystem is frozen for the copy.
	if mnt, err := freeze.MountpointOf(dev); err != nil || mnt != "" {
		return err
	}
	return tornCopyError(vol.ID, dev)
}

// tornCopyError is the refusal of a copy of a device in use unfrozen.
func tornCopyError(id, dev string) error {
	return fmt.Errorf("%w: volume %s is attached on this node (%s) with no filesystem mounted, and a copy of it made while it is written would be torn; "+
		"stop the pods that use it, or keep raw block volumes on a reflink pool (XFS with reflink, btrfs), whose clones are atomic",
		backend.ErrInUse, id, dev)
}

// copyRateForFreeze is a pessimistic copy speed: without reflinks the
// filesystem stays frozen for the whole copy, so the freeze watchdog must
// allow for the data, or every large snapshot would time out.
const copyRateForFreeze = 64 << 20 // bytes per second

func (b *Backend) freezeBudget(dataPath string) time.Duration {
	if b.reflink {
		return b.cfg.FreezeTimeout
	}
	return b.cfg.FreezeTimeout + time.Duration(allocatedBytes(dataPath)/copyRateForFreeze)*time.Second
}

// markShared records that a volume is about to share extents with a clone
// or snapshot, for capacity accounting. The caller must not clone when it
// fails: capacity would count the shared blocks as the volume's own.
func (b *Backend) markShared(m *volumeMeta) error {
	if m.Shared {
		return nil
	}
	marked := *m
	marked.Shared = true
	marked.UpdatedAt = time.Now().UTC()
	if err := b.writeMeta(b.volumeDir(m.ID), marked); err != nil {
		return fmt.Errorf("record that volume %s will share extents: %w", m.ID, err)
	}
	*m = marked
	b.volumes.put(marked)
	return nil
}

// DeleteVolume implements backend.Backend.
func (b *Backend) DeleteVolume(ctx context.Context, id string) error {
	if !backend.ValidVolumeID(id) {
		return nil
	}
	dir := b.volumeDir(id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	devs, err := b.loop.FindByBackingFile(filepath.Join(dir, dataFile))
	if err != nil {
		return fmt.Errorf("look up loop devices of %s: %w", id, err)
	}
	if len(devs) > 0 {
		return fmt.Errorf("%w: volume %s is attached as %s on this node; unstage it first", backend.ErrInUse, id, devs[0].Path)
	}
	if err := b.removeObject(opDeleteVolume, dir); err != nil {
		return err
	}
	b.volumes.remove(id)
	klog.V(2).InfoS("Deleted loop volume", "volumeID", id)
	return nil
}

// GetVolume implements backend.Backend.
func (b *Backend) GetVolume(ctx context.Context, id string) (backend.Volume, error) {
	m, err := b.readVolume(id)
	if err != nil {
		return backend.Volume{}, err
	}
	return m.volume(), nil
}

func (b *Backend) readVolume(id string) (volumeMeta, error) {
	return readRecord[volumeMeta](filepath.Join(b.cfg.PoolDir, volumesDir), "volume", id, backend.ValidVolumeID)
}

// ListVolumes implements backend.Backend.
func (b *Backend) ListVolumes(ctx context.Context) ([]backend.Volume, error) {
	metas, err := b.allVolumes()
	if err != nil {
		return nil, err
	}
	out := make([]backend.Volume, 0, len(metas))
	for _, m := range metas {
		out = append(out, m.volume())
	}
	return out, nil
}

func (b *Backend) allVolumes() ([]volumeMeta, error) {
	return b.volumes.all()
}

func listIDs(dir string, valid func(string) bool) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v", backend.ErrNotReady, dir, err)
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.IsDir() && valid(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// ExpandVolume implements backend.Backend: the file grows; the node makes
// the device and filesystem see it.
func (b *Backend) ExpandVolume(ctx context.Context, id string, sizeBytes, limitBytes int64) (int64, error) {
	m, err := b.readVolume(id)
	if err != nil {
		return 0, err
	}
	size, err := backend.RoundSize(sizeBytes, limitBytes, m.FsType)
	if err != nil {
		return 0, err
	}
	if size <= m.SizeBytes {
		return m.SizeBytes, b.full(b.ensureFileSize(id, m.SizeBytes))
	}
	release, err := b.reserveGrowth(m, size)
	if err != nil {
		return 0, err
	}
	// Held until the cache has the new size, where the accounting sees it.
	defer release()
	// Grow the file before the record: a crash in between leaves a file
	// larger than recorded, which the retry (or NodeExpandVolume) fixes;
	// the reverse could promise space the file does not have.
	if err := b.ensureFileSize(id, size); err != nil {
		return 0, b.full(err)
	}
	b.point(opExpandVolume, "after-truncate")
	m.SizeBytes = size
	m.UpdatedAt = time.Now().UTC()
	if err := b.writeMeta(b.volumeDir(id), m); err != nil {
		return 0, b.full(err)
	}
	b.point(opExpandVolume, "after-meta")
	b.volumes.put(m)
	klog.V(2).InfoS("Expanded loop volume", "volumeID", id, "size", size)
	return size, nil
}

func (b *Backend) ensureFileSize(id string, size int64) error {
	path := filepath.Join(b.volumeDir(id), dataFile)
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("data file of %s: %w", id, err)
	}
	if fi.Size() >= size {
		return nil
	}
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("grow data file of %s: %w", id, err)
	}
	return nil
}
