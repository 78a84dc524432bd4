package testpool

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// x/sys/unix does not define FIEMAP. Values from linux/fiemap.h and
// linux/fs.h; FS_IOC_FIEMAP is _IOWR('f', 11, struct fiemap), and a 32-byte
// _IOWR encodes the same on every Linux architecture.
const (
	fsIocFiemap        = 0xC020660B
	fiemapFlagSync     = 0x1
	fiemapExtentLast   = 0x1
	fiemapExtentShared = 0x2000
	// fiemapBatch is how many extents one ioctl call asks for; files with
	// more take several calls.
	fiemapBatch = 64
)

// fiemapExtent mirrors struct fiemap_extent (56 bytes).
type fiemapExtent struct {
	logical    uint64
	physical   uint64
	length     uint64
	reserved64 [2]uint64
	flags      uint32
	reserved   [3]uint32
}

// fiemapReq mirrors struct fiemap with room for fiemapBatch extents after the
// 32-byte header, which is how the kernel expects the array to be laid out.
type fiemapReq struct {
	start         uint64
	length        uint64
	flags         uint32
	mappedExtents uint32
	extentCount   uint32
	reserved      uint32
	extents       [fiemapBatch]fiemapExtent
}

// SharedExtents reports whether any extent of the file at path is shared with
// another file, i.e. whether it is (partly) a reflink. It is what the
// "shared" flag of `filefrag -v` shows, read with FS_IOC_FIEMAP directly.
// A file with no data extents (empty or all holes) has none shared.
func SharedExtents(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("opening %s for fiemap: %w", path, err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("fiemap %s: %w", path, err)
	}

	var start uint64
	for {
		req := &fiemapReq{
			start: start,
			// The kernel clamps the length to the filesystem's maximum.
			length: ^uint64(0),
			// Sync first so delayed allocations show up as real extents.
			flags:       fiemapFlagSync,
			extentCount: fiemapBatch,
		}
		var errno unix.Errno
		if cerr := rc.Control(func(fd uintptr) {
			_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, fsIocFiemap, uintptr(unsafe.Pointer(req)))
		}); cerr != nil {
			return false, fmt.Errorf("fiemap %s: %w", path, cerr)
		}
		if errno != 0 {
			return false, fmt.Errorf("fiemap %s: %w", path, errno)
		}
		if req.mappedExtents == 0 {
			return false, nil
		}
		exts := req.extents[:req.mappedExtents]
		for _, e := range exts {
			if e.flags&fiemapExtentShared != 0 {
				return true, nil
			}
			if e.flags&fiemapExtentLast != 0 {
				return false, nil
			}
		}
		last := exts[len(exts)-1]
		start = last.logical + last.length
	}
}
