package filecopy

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

const (
	// maxCopyChunk keeps each copy_file_range call well below the kernel's
	// per-call cap, so a call is never cut short for size alone.
	maxCopyChunk = 1 << 30
	// bufSize is the read/write buffer for the user-space copy.
	bufSize = 1 << 20
)

// sparseCopy copies the data ranges of the first size bytes of sfd into dfd
// at the same offsets and then sets dfd's size to size, so that holes,
// trailing ones included, stay holes. With useCopyFileRange it copies in the
// kernel where it can.
func sparseCopy(dfd, sfd int, size int64, useCopyFileRange bool) (err error) {
	// SEEK_DATA and SEEK_HOLE move the offset of src's open file
	// description, which the caller may share.
	saved, err := unix.Seek(sfd, 0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("reading source offset: %w", err)
	}
	defer func() {
		if _, serr := unix.Seek(sfd, saved, io.SeekStart); serr != nil && err == nil {
			err = fmt.Errorf("restoring source offset: %w", serr)
		}
	}()

	c := copier{dfd: dfd, sfd: sfd, useCopyFileRange: useCopyFileRange}
	for off := int64(0); off < size; {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			// Nothing but holes from off to the end.
			break
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
		}
		hole = min(hole, size)
		if err := c.copy(data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	if err := unix.Ftruncate(dfd, size); err != nil {
		return fmt.Errorf("setting destination size to %d: %w", size, err)
	}
	return nil
}

type copier struct {
	dfd, sfd         int
	useCopyFileRange bool
	buf              []byte
}

// copy copies n bytes at off from src to the same offset in dst.
func (c *copier) copy(off, n int64) error {
	for n > 0 {
		var done int
		var err error
		if c.useCopyFileRange {
			done, err = c.copyInKernel(off, min(n, maxCopyChunk))
			if copyFileRangeUnsupported(err) {
				// Not for this pair of files; it will not work for the
				// next range either.
				c.useCopyFileRange = false
				continue
			}
		} else {
			done, err = c.copyThroughBuffer(off, min(n, bufSize))
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("copying %d bytes at %d: %w", n, off, err)
		}
		if done == 0 {
			return fmt.Errorf("copying %d bytes at %d: source shrank during the copy: %w", n, off, io.ErrUnexpectedEOF)
		}
		off += int64(done)
		n -= int64(done)
	}
	return nil
}

func (c *copier) copyInKernel(off, n int64) (int, error) {
	roff, woff := off, off
	return unix.CopyFileRange(c.sfd, &roff, c.dfd, &woff, int(n), 0)
}

func (c *copier) copyThroughBuffer(off, n int64) (int, error) {
	if c.buf == nil {
		c.buf = make([]byte, bufSize)
	}
	r, err := unix.Pread(c.sfd, c.buf[:n], off)
	if err != nil || r == 0 {
		return 0, err
	}
	for w := 0; w < r; {
		nw, err := unix.Pwrite(c.dfd, c.buf[w:r], off+int64(w))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		if nw == 0 {
			return 0, fmt.Errorf("write: %w", io.ErrShortWrite)
		}
		w += nw
	}
	return r, nil
}

// copyFileRangeUnsupported tells the errors by which copy_file_range says
// "not for these files" (across filesystems, an old kernel, a filesystem
// without support) from real failures.
func copyFileRangeUnsupported(err error) bool {
	return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)
}
