package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// chunk is the write size: large enough to be fast, small enough that the
// demo's memory stays flat whatever the data size.
const chunk = 1 << 20

// writeRandom writes n random bytes to a new file at path, or appends them
// to it, and returns their sha256. It deliberately does not fsync: the
// snapshot that follows must capture the data through the driver's
// filesystem freeze, not because the demo flushed it.
func writeRandom(path string, n int64, appendTo bool) (string, error) {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if appendTo {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	buf := make([]byte, chunk)
	for left := n; left > 0; left -= int64(len(buf)) {
		if left < int64(len(buf)) {
			buf = buf[:left]
		}
		// crypto/rand never fails on Linux (getrandom); the error is
		// checked only so that a future change cannot silently write zeros.
		if _, err := rand.Read(buf); err != nil {
			f.Close()
			return "", err
		}
		h.Write(buf)
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return "", fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashFile returns the sha256 and size of a file. With fromDisk, the
// file is first written back and its cached pages dropped, so that the
// hash is of what the block device holds, not of what the writer left in
// memory.
func hashFile(path string, fromDisk bool) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if fromDisk {
		// Dirty pages cannot be dropped, hence the fsync first.
		if err := f.Sync(); err != nil {
			return "", 0, fmt.Errorf("fsync %s: %w", path, err)
		}
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return "", 0, fmt.Errorf("drop cache of %s: %w", path, err)
		}
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, chunk))
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// fsStat is what statfs says about a mounted filesystem.
type fsStat struct {
	total, avail int64
	magic        int64
}

func statFS(path string) (fsStat, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fsStat{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	return fsStat{
		total: int64(st.Blocks) * st.Bsize,
		avail: int64(st.Bavail) * st.Bsize,
		magic: int64(st.Type),
	}, nil
}

// fsName names the filesystem types a pool is likely to sit on; statfs
// cannot tell ext2, ext3 and ext4 apart.
func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext2/3/4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	case unix.BCACHEFS_SUPER_MAGIC:
		return "bcachefs"
	case 0x2fc12fc1:
		return "zfs"
	}
	return fmt.Sprintf("unknown (magic %#x)", magic)
}

func shortSum(sum string) string {
	if len(sum) > 16 {
		return sum[:16] + "…"
	}
	return sum
}
