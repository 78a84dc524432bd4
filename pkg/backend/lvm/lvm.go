// Package lvm is Tarn's LVM backend: volumes and snapshots are logical
// volumes of one volume group, thick (linear) or thin (in one thin pool).
//
// An object's LV is named by its ID (vol-<hex>, snap-<hex>), so a retried
// call finds its earlier result by name, and everything else Tarn knows
// about it is in the LV's tags (see tags.go): the VG is the only state. An LV
// is created with every tag but tarn.complete, which is added last, when the
// object is fully built; an owned LV without it is the leftover of an
// interrupted call, never listed, removed at the next start.
//
// Snapshots:
//
//   - thin volume: an LVM thin snapshot, O(1), sharing blocks with its
//     origin in the pool. It keeps LVM's activation-skip flag, so it is
//     never activated, not even at boot. LVM suspends the origin for the
//     instant of the snapshot, and device-mapper's suspend freezes a
//     filesystem mounted on it, so the snapshot is consistent without
//     Tarn's own freeze. Tarn must not FIFREEZE first: on Linux before
//     about 6.6 (Debian 12's 6.1 included) the suspend then fails with
//     EBUSY, because the freeze it does cannot nest in a userspace freeze.
//   - thick volume: a full copy into a new, independent linear LV, O(data),
//     made with the origin quiesced (a mounted filesystem is frozen for the
//     whole copy; no device-mapper suspend happens during a plain copy, so
//     freezing is safe on every kernel). Old-style LVM COW snapshots are
//     not used: they become invalid, and their data unreadable, when their
//     COW area fills.
//
// Restores and clones are thin snapshots of the snapshot or volume when
// both ends are thin in the configured pool (the new LV loses the
// activation-skip flag so it activates like any volume), and copies
// otherwise. Deleting an origin never affects its snapshots or clones.
//
// No volume reads what an earlier LV left on its extents. LVM zeroes only
// the first 4 KiB of a new linear LV, so Tarn zeroes every byte of a thick
// volume that its source did not fill before the volume is complete, and
// what an expansion adds before the expansion succeeds (see zeroGrowth). A
// thin volume reads zeros wherever it was never written, provided its pool
// zeroes the rest of a chunk it provisions for a partial write: a pool that
// does not is refused (see Ready).
//
// Capacity is what LVM would really give (see capacityOf), and a call that
// does not fit fails with ErrNoSpace before any LV is created.
package lvm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/backend/reserve"
	"github.com/tarn-csi/tarn/pkg/faults"
	"github.com/tarn-csi/tarn/pkg/freeze"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
	"github.com/tarn-csi/tarn/pkg/metrics"
)

// largeZeroedChunk is the chunk size above which LVM itself warns that
// pool zeroing slows provisioning.
const largeZeroedChunk = 512 << 10

// Config configures the LVM backend.
type Config struct {
	// VolumeGroup holds every volume and snapshot; it must exist.
	VolumeGroup string
	// ThinPool is a thin pool LV of VolumeGroup; "" means no thin volumes.
	ThinPool string
	// DefaultType is the type of volumes whose StorageClass names none:
	// "thin" or "thick"; "" means thin when ThinPool is set, else thick.
	DefaultType string
	// Timeout bounds each LVM command; 0 is lvm.DefaultTimeout.
	Timeout time.Duration
	// FreezeTimeout bounds how long a mounted filesystem stays frozen for
	// a thick snapshot, on top of the copy's own time (see copyBudget).
	FreezeTimeout time.Duration
	// Runner runs LVM commands; nil means the real lvm binary.
	Runner lvmcmd.Runner
	// Metrics receives the removals of incomplete LVs and the freeze
	// times of thick copies; nil means metrics.Nop.
	Metrics metrics.Recorder
	// Faults is told when an operation reaches each of its fault points
	// (see package faults); nil means faults.Nop.
	Faults faults.Injector
}

// Backend is an LVM volume group. It keeps no volume state in memory.
type Backend struct {
	cfg         Config
	client      *lvmcmd.Client
	metrics     metrics.Recorder
	faults      faults.Injector
	defaultType string
	// thickLedger and thinLedger count what calls in flight were promised
	// and LVM does not show yet (see reserve). Per-volume ordering is the
	// driver's job.
	thickLedger, thinLedger reserve.Ledger
	// zero makes a range of a block device read as zeros (zeroDevice).
	zero func(ctx context.Context, dev string, from, to int64) error
}

var _ backend.Backend = (*Backend)(nil)

// New opens a volume group and removes what interrupted calls left behind.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if !lvmcmd.ValidName(cfg.VolumeGroup) {
		return nil, fmt.Errorf("lvm backend: volume group %q is not a valid name", cfg.VolumeGroup)
	}
	if cfg.ThinPool != "" && !lvmcmd.ValidName(cfg.ThinPool) {
		return nil, fmt.Errorf("lvm backend: thin pool %q is not a valid name", cfg.ThinPool)
	}
	if cfg.FreezeTimeout == 0 {
		cfg.FreezeTimeout = 10 * time.Second
	}
	b := &Backend{cfg: cfg, client: lvmcmd.NewClient(cfg.Runner, cfg.Timeout),
		metrics: metrics.OrNop(cfg.Metrics), faults: faults.OrNop(cfg.Faults), zero: zeroDevice}
	switch {
	case cfg.DefaultType == "" && cfg.ThinPool != "":
		b.defaultType = typeThin
	case cfg.DefaultType == "":
		b.defaultType = typeThick
	case cfg.DefaultType == typeThin && cfg.ThinPool == "":
		return nil, errors.New("lvm backend: default type thin needs a thin pool")
	case cfg.DefaultType == typeThin || cfg.DefaultType == typeThick:
		b.defaultType = cfg.DefaultType
	default:
		return nil, fmt.Errorf("lvm backend: default type %q is neither thin nor thick", cfg.DefaultType)
	}
	pool, err := b.present(ctx)
	if err != nil {
		return nil, fmt.Errorf("lvm backend: %w", err)
	}
	if err := b.zeroing(pool); err != nil {
		// Existing volumes must still be unpublished, unstaged and
		// deleted; readiness and new thin volumes carry the refusal.
		klog.ErrorS(err, "Thin pool refused for new volumes")
	}
	if pool.ChunkSize > largeZeroedChunk {
		klog.InfoS("Thin pool chunks are large: each first write to a chunk zeroes all of it, which slows provisioning writes",
			"vg", cfg.VolumeGroup, "thinPool", cfg.ThinPool, "chunkSize", pool.ChunkSize)
	}
	// One listing serves both repairs: the resume changes no LV's tags
	// or activation, and the pool's activation touches no Tarn LV.
	lvs, listErr := b.client.LVs(ctx, cfg.VolumeGroup)
	if listErr != nil {
		klog.ErrorS(listErr, "Cannot list LVs to repair what interrupted calls left; retried at next start", "vg", cfg.VolumeGroup)
	} else {
		b.resumeSuspended(ctx, lvs)
	}
	if err := b.activatePool(ctx, pool); err != nil {
		return nil, fmt.Errorf("lvm backend: %w", err)
	}
	if listErr == nil {
		b.sweep(ctx, lvs)
	}
	klog.InfoS("Opened LVM volume group", "vg", cfg.VolumeGroup, "thinPool", cfg.ThinPool, "defaultType", b.defaultType)
	return b, nil
}

// Kind implements backend.Backend.
func (b *Backend) Kind() string { return "lvm" }

// Ready implements backend.Backend: the VG and the thin pool must be
// there, and the pool must zero what it provisions.
func (b *Backend) Ready(ctx context.Context) error {
	pool, err := b.present(ctx)
	if err != nil {
		return err
	}
	return b.zeroing(pool)
}

// present checks that the VG and the thin pool are there, and returns the
// pool's LV with its settings (the zero LV when there is no pool).
func (b *Backend) present(ctx context.Context) (lvmcmd.LV, error) {
	if _, err := b.client.VG(ctx, b.cfg.VolumeGroup); err != nil {
		return lvmcmd.LV{}, fmt.Errorf("%w: volume group %s: %v", backend.ErrNotReady, b.cfg.VolumeGroup, err)
	}
	if b.cfg.ThinPool == "" {
		return lvmcmd.LV{}, nil
	}
	pool, err := b.client.ThinPool(ctx, b.cfg.VolumeGroup, b.cfg.ThinPool)
	if err != nil {
		return lvmcmd.LV{}, fmt.Errorf("%w: thin pool %s/%s: %v", backend.ErrNotReady, b.cfg.VolumeGroup, b.cfg.ThinPool, err)
	}
	if !pool.IsThinPool() {
		return lvmcmd.LV{}, fmt.Errorf("%w: %s/%s is a %s LV, not a thin pool", backend.ErrNotReady, b.cfg.VolumeGroup, b.cfg.ThinPool, pool.Segtype)
	}
	return pool, nil
}

// poolZeroes checks that the thin pool zeroes the rest of a chunk it
// provisions for a partial write.
func (b *Backend) poolZeroes(ctx context.Context) error {
	if b.cfg.ThinPool == "" {
		return nil
	}
	pool, err := b.client.ThinPool(ctx, b.cfg.VolumeGroup, b.cfg.ThinPool)
	if err != nil {
		return fmt.Errorf("%w: thin pool %s/%s: %v", backend.ErrNotReady, b.cfg.VolumeGroup, b.cfg.ThinPool, err)
	}
	return b.zeroing(pool)
}

// zeroing refuses a thin pool, as present or poolZeroes read it, that does
// not zero what it provisions.
func (b *Backend) zeroing(pool lvmcmd.LV) error {
	if b.cfg.ThinPool == "" || pool.Zeroing {
		return nil
	}
	// Zeroing every thin volume in full would provision all of it, and a
	// discard would unprovision chunks for the old data to come back:
	// only the pool can keep its chunks clean.
	return fmt.Errorf("%w: thin pool %s/%s does not zero newly provisioned chunks, so a volume could read another's old data; "+
		"turn zeroing on with: lvchange --zero y %s/%s", backend.ErrNotReady, b.cfg.VolumeGroup, b.cfg.ThinPool, b.cfg.VolumeGroup, b.cfg.ThinPool)
}

// activatePool activates the thin pool if it is not: its usage, which
// capacity and health depend on, is known only while it is active. Thin
// volume activation would bring it up anyway.
func (b *Backend) activatePool(ctx context.Context, pool lvmcmd.LV) error {
	if b.cfg.ThinPool == "" || pool.Active {
		return nil
	}
	if err := b.client.Activate(ctx, b.cfg.VolumeGroup, b.cfg.ThinPool, false); err != nil {
		return fmt.Errorf("activate thin pool: %w", err)
	}
	klog.InfoS("Activated thin pool", "vg", b.cfg.VolumeGroup, "thinPool", b.cfg.ThinPool)
	return nil
}

// resumeSuspended resumes the thin pool and the Tarn LVs whose devices are
// suspended. LVM suspends a device while it changes its table (an
// extension, a thin snapshot, which suspends the pool too) and resumes it
// after; a command killed in between leaves every I/O to it hanging, the
// kubelet's and the application's included. No Tarn call runs yet, and a
// command another process runs holds the VG's lock, which the refresh
// waits for.
func (b *Backend) resumeSuspended(ctx context.Context, lvs []lvmcmd.LV) {
	// The pool first: its volumes' I/O goes through it.
	lvs = slices.Clone(lvs)
	sort.SliceStable(lvs, func(i, j int) bool { return lvs[i].Name == b.cfg.ThinPool && lvs[j].Name != b.cfg.ThinPool })
	for _, lv := range lvs {
		ours := lv.HasTag(tagOwner) && validID(lv.Name)
		if lv.AttrState() != 's' || !(ours || (b.cfg.ThinPool != "" && lv.Name == b.cfg.ThinPool)) {
			continue
		}
		if err := b.client.Refresh(ctx, b.cfg.VolumeGroup, lv.Name); err != nil {
			klog.ErrorS(err, "Cannot resume a suspended LV; its I/O stays blocked", "vg", b.cfg.VolumeGroup, "lv", lv.Name)
			continue
		}
		b.metrics.ReconcilerAction(metrics.ActionSuspendedResumed)
		klog.InfoS("Resumed an LV left suspended by an interrupted LVM command", "vg", b.cfg.VolumeGroup, "lv", lv.Name)
	}
}

// sweep removes Tarn LVs that never got their completion tag: the leftovers
// of calls cut short by a crash or a restart. Only LVs named like Tarn
// objects and carrying the owner tag are candidates, so that a stray tag on
// someone else's LV cannot get it deleted. Complete objects are settled
// (see settle).
func (b *Backend) sweep(ctx context.Context, lvs []lvmcmd.LV) {
	for _, lv := range lvs {
		if !lv.HasTag(tagOwner) || !validID(lv.Name) {
			continue
		}
		if lv.HasTag(tagComplete) {
			b.settle(ctx, lv)
			continue
		}
		if err := b.client.Remove(ctx, b.cfg.VolumeGroup, lv.Name); err != nil {
			klog.ErrorS(err, "Cannot remove leftover LV; retried at next start", "vg", b.cfg.VolumeGroup, "lv", lv.Name)
			continue
		}
		b.metrics.ReconcilerAction(metrics.ActionIncompleteRemoved)
		klog.InfoS("Removed leftover LV of an interrupted call", "vg", b.cfg.VolumeGroup, "lv", lv.Name)
	}
}

// settle undoes what a driver killed in the middle of a copy (a thick
// snapshot, or a restore or clone that copies) leaves on the complete
// objects it copied from. A mounted source volume is frozen for the whole
// copy: left frozen, its writers hang, and every later snapshot of it fails
// to freeze it again. A snapshot is activated to be read: left active, it
// holds a device it never otherwise has. Nothing else freezes a Tarn volume
// or activates a snapshot, and nothing runs yet at start.
func (b *Backend) settle(ctx context.Context, lv lvmcmd.LV) {
	if !lv.Active {
		return
	}
	switch {
	case backend.ValidVolumeID(lv.Name):
		if mnt, thawed, err := freeze.ThawDevice(b.devicePath(lv.Name)); err != nil {
			klog.ErrorS(err, "Cannot thaw filesystem of a volume", "lv", lv.Name)
		} else if thawed {
			b.metrics.ReconcilerAction(metrics.ActionFilesystemThawed)
			klog.InfoS("Thawed filesystem left frozen by an interrupted snapshot", "lv", lv.Name, "mountpoint", mnt)
		}
	case backend.ValidSnapshotID(lv.Name) && !lv.DeviceOpen:
		if err := b.client.Deactivate(ctx, b.cfg.VolumeGroup, lv.Name); err != nil {
			klog.ErrorS(err, "Cannot deactivate snapshot left active by an interrupted copy", "lv", lv.Name)
			return
		}
		klog.InfoS("Deactivated snapshot left active by an interrupted copy", "lv", lv.Name)
	}
}

func validID(id string) bool { return backend.ValidVolumeID(id) || backend.ValidSnapshotID(id) }

// find returns the Tarn object whose LV is named id, complete or not. A
// missing LV is ErrNotFound; an LV of that name that Tarn did not make is
// errForeign.
func (b *Backend) find(ctx context.Context, id string) (object, error) {
	lv, err := b.client.LV(ctx, b.cfg.VolumeGroup, id)
	if err != nil {
		return object{}, err
	}
	return decodeTags(lv)
}

// complete returns the complete object id, or ErrNotFound.
func (b *Backend) complete(ctx context.Context, id string, valid func(string) bool, what string) (object, error) {
	if !valid(id) {
		return object{}, fmt.Errorf("%w: %s %q", backend.ErrNotFound, what, id)
	}
	o, err := b.find(ctx, id)
	switch {
	case errors.Is(err, errForeign):
		return object{}, fmt.Errorf("%w: %s %s (%v)", backend.ErrNotFound, what, id, err)
	case err != nil:
		return object{}, err
	case !o.Complete:
		return object{}, fmt.Errorf("%w: %s %s is still being created", backend.ErrNotFound, what, id)
	}
	return o, nil
}

func (b *Backend) getVolume(ctx context.Context, id string) (object, error) {
	return b.complete(ctx, id, backend.ValidVolumeID, "volume")
}

func (b *Backend) getSnapshot(ctx context.Context, id string) (object, error) {
	return b.complete(ctx, id, backend.ValidSnapshotID, "snapshot")
}

// list returns the complete objects whose IDs pass valid, sorted by ID.
// An owned LV whose tags cannot be read is logged and skipped so that it
// cannot hide the rest.
func (b *Backend) list(ctx context.Context, valid func(string) bool) ([]object, error) {
	lvs, err := b.client.LVs(ctx, b.cfg.VolumeGroup)
	if err != nil {
		return nil, err
	}
	var out []object
	for _, lv := range lvs {
		if !valid(lv.Name) || !lv.HasTag(tagOwner) {
			continue
		}
		o, err := decodeTags(lv)
		if err != nil {
			klog.ErrorS(err, "Skipping LV with unreadable Tarn tags", "vg", b.cfg.VolumeGroup, "lv", lv.Name)
			continue
		}
		if o.Complete {
			out = append(out, o)
		}
	}
	sortObjects(out)
	return out, nil
}

// build creates an object's LV with create, then runs the remaining steps
// and finally marks it complete, applying finish in the same metadata
// commit. Whatever fails after the LV exists removes it again, so that a
// failed call leaves nothing behind; if even that fails, the LV lacks the
// completion tag and the next start removes it. op names the operation's
// fault points.
func (b *Backend) build(ctx context.Context, op, id string, finish lvmcmd.ChangeOptions, create func() error, steps ...func() error) (time.Time, error) {
	if err := create(); err != nil {
		return time.Time{}, err
	}
	b.faults.Point(op + ".after-lvcreate")
	fail := func(err error) (time.Time, error) {
		// The caller's context may be what failed; cleanup must still run.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if rerr := b.client.Remove(cctx, b.cfg.VolumeGroup, id); rerr != nil && !errors.Is(rerr, backend.ErrNotFound) {
			klog.ErrorS(rerr, "Cannot remove LV of a failed call; it is removed at next start", "lv", id)
		}
		return time.Time{}, err
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fail(err)
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
	}
	b.faults.Point(op + ".before-complete")
	created := time.Now().UTC()
	finish.AddTags = append(finish.AddTags, completionTags(created)...)
	if err := b.client.Change(ctx, b.cfg.VolumeGroup, id, finish); err != nil {
		return fail(fmt.Errorf("mark %s complete: %w", id, err))
	}
	return created, nil
}

// removeLeftover removes an incomplete LV found where a retried call wants
// to build: the driver serialises calls per name, so nothing else is
// building it.
func (b *Backend) removeLeftover(ctx context.Context, o object) error {
	err := b.client.Remove(ctx, b.cfg.VolumeGroup, o.ID)
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("remove incomplete %s left by an earlier attempt: %w", o.ID, err)
	}
	if err == nil {
		// The same repair the start-up sweep makes, only sooner.
		b.metrics.ReconcilerAction(metrics.ActionIncompleteRemoved)
	}
	klog.InfoS("Removed incomplete LV of an earlier attempt", "lv", o.ID, "name", o.Name)
	return nil
}

func (b *Backend) devicePath(id string) string { return lvmcmd.DevicePath(b.cfg.VolumeGroup, id) }
