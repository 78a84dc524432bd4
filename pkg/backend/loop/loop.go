// Package loop is Tarn's loop backend: a pool is a directory, a volume is a
// sparse file in it attached as a loop device on the node, and snapshots and
// clones are reflinks where the pool's filesystem supports them.
//
// Layout of a pool:
//
//	volumes/<id>/data.img    complete volumes
//	snapshots/<id>/data.img  complete snapshots
//
// An object's record is an xattr of its directory (meta.json beside the
// data where the filesystem cannot hold it).
//
//	.staging/                           objects being created
//	.trash/                             objects being deleted
//
// An object is built whole in .staging and renamed into place in one step,
// and deleted by one rename into .trash, so a crash at any instant leaves it
// either complete and visible or invisible and swept at the next start.
package loop

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/atomicfile"
	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/backend/reserve"
	"github.com/tarn-csi/tarn/pkg/faults"
	"github.com/tarn-csi/tarn/pkg/filecopy"
	"github.com/tarn-csi/tarn/pkg/freeze"
	"github.com/tarn-csi/tarn/pkg/loopdev"
	"github.com/tarn-csi/tarn/pkg/metrics"
)

const (
	volumesDir   = "volumes"
	snapshotsDir = "snapshots"
	stagingDir   = ".staging"
	trashDir     = ".trash"
	dataFile     = "data.img"
	metaFile     = "meta.json"
)

// Config configures a loop pool.
type Config struct {
	// PoolDir is the directory holding the pool; it must exist.
	PoolDir string
	// DirectIO attaches loop devices with direct I/O where the pool's
	// filesystem allows it, avoiding double caching.
	DirectIO bool
	// DisableReflink forces the copy path even on a reflink filesystem.
	DisableReflink bool
	// FreezeTimeout bounds how long a mounted filesystem stays frozen for
	// a snapshot; it is thawed after that whatever the clone is doing.
	FreezeTimeout time.Duration
	// Loop is the loop device seam; nil means the real kernel.
	Loop loopdev.Interface
	// Metrics receives the start-up sweep's repairs and the freeze times
	// of snapshots and clones; nil means metrics.Nop.
	Metrics metrics.Recorder
	// Faults is told when an operation reaches each of its fault points
	// (see package faults); nil means faults.Nop.
	Faults faults.Injector
}

// Backend is a loop pool. The pool and the kernel are the only state: the
// in-memory record caches are rebuilt from the pool at start, and whether a
// volume is attached is always asked of the kernel.
type Backend struct {
	cfg     Config
	loop    loopdev.Interface
	metrics metrics.Recorder
	faults  faults.Injector
	reflink bool
	// orderedLog is set on XFS, whose metadata log is always on and
	// commits in order: forcing it for a rename also commits every earlier
	// change, so a staging directory needs no fsync of its own.
	orderedLog bool
	// setxattr is unix.Setxattr; a unit test stands in a filesystem that
	// cannot hold the record as an xattr.
	setxattr  func(path, attr string, data []byte, flags int) error
	volumes   *recordCache[volumeMeta]
	snapshots *recordCache[snapshotMeta]
	// attachMu serialises loop attach/detach so that two volumes racing
	// for the same free loop device cannot both see "not attached" for one
	// file; per-volume locking is the driver's job.
	attachMu sync.Mutex
	// ledger counts the space promised to creations and expansions that
	// are not yet in the record cache, so that calls under different
	// names cannot together be promised more than the pool has.
	ledger reserve.Ledger
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.SpaceChecker = (*Backend)(nil)
)

// New opens a pool, creating its layout, and sweeps what interrupted calls
// left behind.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.PoolDir == "" {
		return nil, errors.New("loop backend: pool directory is not set")
	}
	abs, err := filepath.Abs(cfg.PoolDir)
	if err != nil {
		return nil, fmt.Errorf("loop backend: pool directory: %w", err)
	}
	cfg.PoolDir = abs
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("loop backend: pool %s is not a directory: %v", abs, err)
	}
	if cfg.FreezeTimeout == 0 {
		cfg.FreezeTimeout = 10 * time.Second
	}
	b := &Backend{cfg: cfg, loop: cfg.Loop, metrics: metrics.OrNop(cfg.Metrics), faults: faults.OrNop(cfg.Faults), setxattr: unix.Setxattr}
	b.volumes = newRecordCache(func() ([]volumeMeta, error) {
		return listRecords[volumeMeta](filepath.Join(abs, volumesDir), "volume", backend.ValidVolumeID)
	})
	b.snapshots = newRecordCache(func() ([]snapshotMeta, error) {
		return listRecords[snapshotMeta](filepath.Join(abs, snapshotsDir), "snapshot", backend.ValidSnapshotID)
	})
	if b.loop == nil {
		b.loop = &loopdev.Manager{}
	}
	for _, d := range []string{volumesDir, snapshotsDir, stagingDir, trashDir} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o700); err != nil {
			return nil, fmt.Errorf("loop backend: create %s: %w", d, err)
		}
	}
	if !cfg.DisableReflink {
		ok, err := filecopy.SupportsReflink(filepath.Join(abs, stagingDir))
		if err != nil {
			klog.InfoS("Reflink probe failed, using copies", "pool", abs, "err", err)
		}
		b.reflink = ok
	}
	var st unix.Statfs_t
	if err := unix.Statfs(abs, &st); err == nil {
		b.orderedLog = st.Type == unix.XFS_SUPER_MAGIC
	}
	b.sweep(ctx)
	klog.InfoS("Opened loop pool", "pool", abs, "reflink", b.reflink, "directIO", cfg.DirectIO, "orderedLog", b.orderedLog)
	return b, nil
}

// Kind implements backend.Backend.
func (b *Backend) Kind() string { return "loop" }

// Reflink says whether snapshots and clones are O(1) reflinks on this pool.
func (b *Backend) Reflink() bool { return b.reflink }

// Ready checks that the pool is present and writable, by creating and
// removing a file: a read-only remount or a vanished mount must fail Probe.
func (b *Backend) Ready(ctx context.Context) error {
	dir := filepath.Join(b.cfg.PoolDir, stagingDir)
	f, err := os.CreateTemp(dir, "probe-")
	if backend.IsNoSpace(err) {
		// Mounted, writable and answering: a full pool still serves the
		// deletions that make room in it, and each call that needs space
		// says ResourceExhausted. Read-only or gone answers otherwise.
		klog.V(4).InfoS("Pool is full", "pool", b.cfg.PoolDir, "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: pool %s is not writable: %v", backend.ErrNotReady, b.cfg.PoolDir, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("%w: pool %s: %v", backend.ErrNotReady, b.cfg.PoolDir, err)
	}
	return nil
}

// sweep removes what interrupted calls left: objects that never finished
// building and objects whose deletion was cut short. Complete volumes and
// snapshots are never touched. Every repair is counted, so that a node
// whose driver keeps dying shows up in the metrics, not only in its logs.
func (b *Backend) sweep(ctx context.Context) {
	for _, d := range []struct{ dir, action string }{
		{stagingDir, metrics.ActionIncompleteRemoved},
		{trashDir, metrics.ActionDeletedRemoved},
	} {
		dir := filepath.Join(b.cfg.PoolDir, d.dir)
		entries, err := os.ReadDir(dir)
		if err != nil {
			klog.ErrorS(err, "Cannot read pool directory for cleanup", "dir", dir)
			continue
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			// What an older Tarn's XFS log replay of a clone left
			// mounted and attached inside is cleared too: RemoveAll
			// would empty a filesystem still mounted there.
			b.count(metrics.ActionLeftoverUnmounted, unmountUnder(path))
			b.count(metrics.ActionLoopDetached, b.detachAll(filepath.Join(path, dataFile)))
			if err := os.RemoveAll(path); err != nil {
				klog.ErrorS(err, "Cannot remove leftover", "path", path)
				continue
			}
			b.metrics.ReconcilerAction(d.action)
			klog.InfoS("Removed leftover of an interrupted call", "path", path)
		}
	}
	// An atomic metadata write cut short leaves its temporary file beside
	// the record it was replacing.
	for _, d := range []string{volumesDir, snapshotsDir} {
		matches, _ := filepath.Glob(filepath.Join(b.cfg.PoolDir, d, "*", atomicfile.TempPrefix+"*"))
		for _, m := range matches {
			if err := os.Remove(m); err == nil {
				b.metrics.ReconcilerAction(metrics.ActionTempFileRemoved)
				klog.InfoS("Removed leftover temporary file", "path", m)
			}
		}
	}
	// Loop devices whose backing file is gone can never be staged again.
	devs, err := b.loop.List()
	if err != nil {
		klog.ErrorS(err, "Cannot list loop devices for cleanup")
		return
	}
	for _, d := range devs {
		if !isUnder(strings.TrimSuffix(d.BackingFile, " (deleted)"), b.cfg.PoolDir) {
			continue
		}
		// A driver killed while a snapshot held a filesystem frozen leaves
		// it frozen and its writers hung; thawing one that is not frozen
		// is harmless.
		if mnt, thawed, err := freeze.ThawDevice(d.Path); err != nil {
			klog.ErrorS(err, "Cannot thaw filesystem of a pool volume", "device", d.Path)
		} else if thawed {
			b.metrics.ReconcilerAction(metrics.ActionFilesystemThawed)
			klog.InfoS("Thawed filesystem left frozen by an interrupted snapshot", "device", d.Path, "mountpoint", mnt)
		}
		if d.Deleted {
			if err := b.loop.Detach(d.Path); err != nil {
				klog.ErrorS(err, "Cannot detach loop device of a deleted file", "device", d.Path)
				continue
			}
			b.metrics.ReconcilerAction(metrics.ActionLoopDetached)
			klog.InfoS("Detached loop device of a deleted file", "device", d.Path, "backingFile", d.BackingFile)
		}
	}
}

// count records n reconciler actions of one kind.
func (b *Backend) count(action string, n int) {
	for range n {
		b.metrics.ReconcilerAction(action)
	}
}

// detachAll detaches every loop device backed by file and returns how many
// it detached.
func (b *Backend) detachAll(file string) int {
	devs, err := b.loop.FindByBackingFile(file)
	if err != nil {
		return 0
	}
	n := 0
	for _, d := range devs {
		if err := b.loop.Detach(d.Path); err != nil {
			klog.ErrorS(err, "Cannot detach leftover loop device", "device", d.Path)
			continue
		}
		klog.InfoS("Detached loop device of an unfinished object", "device", d.Path, "backingFile", file)
		n++
	}
	return n
}

// Operations, the first half of their fault points' names.
const (
	opCreateVolume   = "create-volume"
	opCreateSnapshot = "create-snapshot"
	opDeleteVolume   = "delete-volume"
	opDeleteSnapshot = "delete-snapshot"
	opExpandVolume   = "expand-volume"
)

// point tells the fault injector that op has reached instant.
func (b *Backend) point(op, instant string) {
	b.faults.Point(op + "." + instant)
}

func (b *Backend) volumeDir(id string) string {
	return filepath.Join(b.cfg.PoolDir, volumesDir, id)
}

func (b *Backend) snapshotDir(id string) string {
	return filepath.Join(b.cfg.PoolDir, snapshotsDir, id)
}

// newStagingDir makes a private directory in which an object is built.
func (b *Backend) newStagingDir(id string) (string, error) {
	dir, err := os.MkdirTemp(filepath.Join(b.cfg.PoolDir, stagingDir), id+"-")
	if err != nil {
		return "", fmt.Errorf("create staging directory: %w", err)
	}
	return dir, nil
}

// removeObject deletes a volume or snapshot directory: one rename makes it
// invisible, then the contents go; a crash in between is swept at start.
// The rename needs no new block, unlike a directory made for it, so that
// a full pool can still be emptied.
func (b *Backend) removeObject(op, dir string) error {
	suffix, err := randomSuffix()
	if err != nil {
		return err
	}
	trash := filepath.Join(b.cfg.PoolDir, trashDir, filepath.Base(dir)+"-"+suffix)
	b.point(op, "before-trash")
	// rename(2) would replace an empty directory of that name, which the
	// random name makes as unlikely as MkdirTemp's would.
	if err := os.Rename(dir, trash); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return b.full(fmt.Errorf("move %s to trash: %w", dir, err))
	}
	b.point(op, "after-trash")
	if err := syncParent(dir); err != nil {
		return err
	}
	b.point(op, "before-empty")
	if err := os.RemoveAll(trash); err != nil {
		klog.ErrorS(err, "Cannot empty trash; it is retried at next start", "path", trash)
	}
	return nil
}

// randomSuffix makes a trash entry's name unique.
func randomSuffix() (string, error) {
	var buf [8]byte
	if _, err := rand.Read(buf[:]); err != nil {
		return "", fmt.Errorf("random name: %w", err)
	}
	return hex.EncodeToString(buf[:]), nil
}

// full makes a write that the pool's filesystem refused for want of space
// an ErrNoSpace naming the pool. Every operation that writes to the pool
// passes its error through it on the way out.
func (b *Backend) full(err error) error {
	return backend.NoSpace("pool "+b.cfg.PoolDir, err)
}

// poolStat returns the pool filesystem's block size, free and total bytes.
func (b *Backend) poolStat() (free, total int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(b.cfg.PoolDir, &st); err != nil {
		return 0, 0, fmt.Errorf("%w: statfs %s: %v", backend.ErrNotReady, b.cfg.PoolDir, err)
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}

func isUnder(path, dir string) bool {
	return strings.HasPrefix(path, dir+string(filepath.Separator))
}

// unmountUnder removes mounts left inside a half-made object, deepest
// first, and returns how many it removed.
func unmountUnder(dir string) int {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return 0
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	n := 0
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, 0); err != nil {
			klog.ErrorS(err, "Cannot unmount leftover mount", "path", m.Mountpoint)
			continue
		}
		n++
		klog.InfoS("Unmounted leftover of an interrupted call", "path", m.Mountpoint)
	}
	return n
}
