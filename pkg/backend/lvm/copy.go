package lvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/freeze"
)

const (
	// copyChunk is the unit of a device copy: large enough to stream,
	// small enough to check for cancellation often.
	copyChunk = 1 << 20
	// minCopyRate is the slowest a device copy is assumed to run, in bytes
	// per second. A thick snapshot freezes a mounted origin for the whole
	// copy, so the freeze may last FreezeTimeout plus the copy's time at
	// this rate before it is cut short and the snapshot fails.
	minCopyRate = 50 * backend.MiB
)

// copyBudget is how long the copy of n bytes may keep a filesystem frozen.
func copyBudget(freezeTimeout time.Duration, n int64) time.Duration {
	return freezeTimeout + time.Duration(n/minCopyRate+1)*time.Second
}

// refuseTornCopy refuses to copy a volume whose device is open with no
// filesystem mounted on it (a raw block volume in a pod's use, through the
// kubelet, or a volume staged for block access): nothing can be frozen on
// a raw device, and a copy that takes as long as the data mixes blocks from
// before and after the writes made meanwhile. A thin snapshot is one
// atomic step.
func (b *Backend) refuseTornCopy(src object) error {
	if !backend.ValidVolumeID(src.ID) || !src.lv.DeviceOpen {
		return nil
	}
	mnt, err := freeze.MountpointOf(b.devicePath(src.ID))
	if err != nil || mnt != "" {
		return err
	}
	return fmt.Errorf("%w: volume %s is in use on this node with no filesystem mounted, and a thick copy of it made while it is written would be torn; "+
		"stop the pods that use it, or use thin volumes, whose snapshots are atomic", backend.ErrInUse, src.ID)
}

// copyFrom copies the content of src (a volume or snapshot) onto the start
// of the active LV dstID. The source is activated for the copy if it is not
// active, and deactivated again afterwards. A source volume is quiesced for
// the whole copy: a mounted filesystem on it is frozen (and always thawed,
// at the latest after copyBudget), an unmounted device flushed.
func (b *Backend) copyFrom(ctx context.Context, src object, dstID string, skipZeros bool) error {
	if !src.lv.Active {
		// Snapshots carry the activation-skip flag; plain activation
		// would silently leave them inactive.
		if err := b.client.Activate(ctx, b.cfg.VolumeGroup, src.ID, true); err != nil {
			return fmt.Errorf("activate %s to copy it: %w", src.ID, err)
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := b.client.Deactivate(cctx, b.cfg.VolumeGroup, src.ID); err != nil {
				klog.ErrorS(err, "Cannot deactivate copy source again", "lv", src.ID)
			}
		}()
	}
	srcDev, dstDev, n := b.devicePath(src.ID), b.devicePath(dstID), src.lv.Size
	if !backend.ValidVolumeID(src.ID) {
		// Snapshots are never mounted or written: nothing to quiesce.
		if err := copyDevice(ctx, dstDev, srcDev, n, skipZeros); err != nil {
			return b.copyError(ctx, src.ID, dstID, err)
		}
		return nil
	}
	budget := copyBudget(b.cfg.FreezeTimeout, n)
	// The copy stops when the freeze is cut short: what it would go on to
	// read is no longer consistent with what it has read.
	cctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	start := time.Now()
	res, err := freeze.WhileQuiesced(cctx, srcDev, budget, func() error {
		return copyDevice(cctx, dstDev, srcDev, n, skipZeros)
	})
	// Writers were blocked whether or not the copy then succeeded.
	if res.Frozen {
		b.metrics.FreezeDuration(res.FrozenFor)
	}
	if err != nil {
		return b.copyError(ctx, src.ID, dstID, err)
	}
	klog.V(2).InfoS("Copied volume", "from", src.ID, "to", dstID, "bytes", n, "took", time.Since(start),
		"frozen", res.Frozen, "mountpoint", res.Mountpoint, "frozenFor", res.FrozenFor)
	return nil
}

// copyError explains a failed copy. A thin destination whose pool ran out
// of space while the copy wrote (possible only where the class lets the
// pool be over-committed) fails its writes with ENOSPC, or with EIO once
// dm-thin stops queueing them: that is a full pool, which the caller must
// hear as ResourceExhausted, not as an internal error.
func (b *Backend) copyError(ctx context.Context, srcID, dstID string, err error) error {
	err = fmt.Errorf("copy %s to %s: %w", srcID, dstID, err)
	if errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%w: %w", backend.ErrNoSpace, err)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	dst, lerr := b.client.LV(cctx, b.cfg.VolumeGroup, dstID)
	if lerr != nil || dst.Pool == "" {
		return err
	}
	pool, lerr := b.client.LV(cctx, b.cfg.VolumeGroup, dst.Pool)
	if lerr == nil && (pool.DataPercent >= 100 || pool.MetadataPercent >= 100) {
		return fmt.Errorf("%w: thin pool %s is full (data %.1f%%, metadata %.1f%%): %w",
			backend.ErrNoSpace, dst.Pool, pool.DataPercent, pool.MetadataPercent, err)
	}
	return err
}

// copyDevice copies the first n bytes of block device src to dst, with
// O_DIRECT on both ends: the source's page cache may hold blocks older than
// what a mounted filesystem has since written through its own cache, and a
// copy of gigabytes should not evict everything else. skipZeros leaves
// all-zero chunks unwritten, for a destination known to read as zeros.
func copyDevice(ctx context.Context, dst, src string, n int64, skipZeros bool) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open copy source: %w", err)
	}
	defer in.Close()
	// O_EXCL on a block device fails if anything has it mounted or open
	// exclusively: the destination must be ours alone.
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_EXCL|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open copy destination: %w", err)
	}
	defer out.Close()
	// O_DIRECT needs memory aligned to the logical block size; mmap'ed
	// memory is page aligned.
	buf, err := unix.Mmap(-1, 0, copyChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("allocate copy buffer: %w", err)
	}
	defer unix.Munmap(buf)
	zeros := make([]byte, copyChunk)
	for off := int64(0); off < n; {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := buf[:min(int64(copyChunk), n-off)]
		if _, err := in.ReadAt(chunk, off); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("copy source %s ends before %d bytes", src, n)
			}
			return fmt.Errorf("read %s at %d: %w", src, off, err)
		}
		if !skipZeros || !bytes.Equal(chunk, zeros[:len(chunk)]) {
			if _, err := out.WriteAt(chunk, off); err != nil {
				return fmt.Errorf("write %s at %d: %w", dst, off, err)
			}
		}
		off += int64(len(chunk))
	}
	// O_DIRECT bypasses the page cache, not the disk's write cache.
	if err := out.Sync(); err != nil {
		return fmt.Errorf("flush %s: %w", dst, err)
	}
	return nil
}
