package lvm

import (
	"context"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroChunk is how much one BLKZEROOUT covers: the ioctl cannot be
// interrupted, so a cancelled call waits for at most one chunk.
const zeroChunk = 128 << 20

// zeroDevice makes bytes [from, to) of block device dev read as zeros. The
// kernel uses the device's write-zeroes command where it has one (then the
// cost does not grow with the range) and writes zero pages otherwise; it
// never unmaps, so a thick LV stays fully allocated on a thin array.
func zeroDevice(ctx context.Context, dev string, from, to int64) error {
	if from >= to {
		return nil
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s to zero it: %w", dev, err)
	}
	defer f.Close()
	for off := from; off < to; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(zeroChunk), to-off)
		span := [2]uint64{uint64(off), uint64(n)}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&span[0]))); errno != 0 {
			return fmt.Errorf("zero %s at %d (+%d): %w", dev, off, n, errno)
		}
		off += n
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush %s after zeroing: %w", dev, err)
	}
	return nil
}
