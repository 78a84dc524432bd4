// Package filecopy clones volume files: by reflink where the filesystem can
// share extents, otherwise by a copy that keeps holes as holes.
package filecopy

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Method says how Clone made the copy.
type Method string

const (
	// Reflink: dst shares src's extents until either is written.
	Reflink Method = "reflink"
	// SparseCopy: only src's data ranges were copied; its holes are holes
	// in dst too.
	SparseCopy Method = "sparse-copy"
)

// Clone makes dst, an open, empty and writable regular file, an exact copy of
// src: by FICLONE when the filesystem supports it, otherwise by copying only
// src's data ranges. dst is fsynced before Clone returns. src must not change
// while it is copied. src's file offset is kept; dst's is left alone.
func Clone(dst, src *os.File) (Method, error) {
	return CloneWith(dst, src, true)
}

// CloneWith is Clone with the reflink attempt made optional, for pools whose
// administrator wants independent copies (no shared extents, no later
// copy-on-write).
//
// With allowReflink false the data is copied through user space rather than
// with copy_file_range, because copy_file_range itself shares extents on
// filesystems that can (XFS with reflink, btrfs), which is what the caller
// asked to avoid.
func CloneWith(dst, src *os.File, allowReflink bool) (Method, error) {
	srcInfo, err := src.Stat()
	if err != nil {
		return "", fmt.Errorf("clone: stat source: %w", err)
	}
	dstInfo, err := dst.Stat()
	if err != nil {
		return "", fmt.Errorf("clone: stat destination: %w", err)
	}
	if !srcInfo.Mode().IsRegular() || !dstInfo.Mode().IsRegular() {
		return "", fmt.Errorf("clone %s to %s: both must be regular files", src.Name(), dst.Name())
	}
	// The sparse copy relies on dst's holes reading as zeros, and FICLONE
	// would silently replace whatever dst held.
	if dstInfo.Size() != 0 {
		return "", fmt.Errorf("clone %s to %s: destination is not empty (%d bytes)", src.Name(), dst.Name(), dstInfo.Size())
	}

	method := SparseCopy
	err = withFDs(dst, src, func(dfd, sfd int) error {
		if allowReflink {
			cerr := unix.IoctlFileClone(dfd, sfd)
			if cerr == nil {
				method = Reflink
				return nil
			}
			if !reflinkUnsupported(cerr) {
				return fmt.Errorf("FICLONE: %w", cerr)
			}
		}
		return sparseCopy(dfd, sfd, srcInfo.Size(), allowReflink)
	})
	if err != nil {
		return "", fmt.Errorf("clone %s to %s: %w", src.Name(), dst.Name(), err)
	}
	if err := dst.Sync(); err != nil {
		return "", fmt.Errorf("clone %s to %s: fsync: %w", src.Name(), dst.Name(), err)
	}
	return method, nil
}

// SupportsReflink reports whether files in dir can be cloned with FICLONE,
// by trying it on two temporary files, which it removes again.
func SupportsReflink(dir string) (ok bool, err error) {
	src, err := os.CreateTemp(dir, ".tarn-reflink-probe-")
	if err != nil {
		return false, fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	defer cleanupTemp(src, &err)
	dst, err := os.CreateTemp(dir, ".tarn-reflink-probe-")
	if err != nil {
		return false, fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	defer cleanupTemp(dst, &err)

	// A whole block, because btrfs stores tiny files inline in metadata,
	// which is not what volume files look like.
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false, fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	cerr := withFDs(dst, src, func(dfd, sfd int) error { return unix.IoctlFileClone(dfd, sfd) })
	switch {
	case cerr == nil:
		return true, nil
	case reflinkUnsupported(cerr):
		return false, nil
	default:
		return false, fmt.Errorf("reflink probe in %s: FICLONE: %w", dir, cerr)
	}
}

func cleanupTemp(f *os.File, errp *error) {
	cerr := f.Close()
	rerr := os.Remove(f.Name())
	if *errp == nil && (cerr != nil || rerr != nil) {
		*errp = fmt.Errorf("removing reflink probe: %w", errors.Join(cerr, rerr))
	}
}

// reflinkUnsupported tells the errors by which FICLONE says "not here" (the
// filesystem cannot share extents, the files are on different filesystems,
// or the pair cannot be cloned, e.g. btrfs files with different NOCOW flags)
// from real failures.
func reflinkUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY)
}

// withFDs runs fn with the raw descriptors of dst and src, which stay valid
// (not closed concurrently) until fn returns.
func withFDs(dst, src *os.File, fn func(dfd, sfd int) error) error {
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	srcRC, err := src.SyscallConn()
	if err != nil {
		return err
	}
	var fnErr error
	cerr := dstRC.Control(func(dfd uintptr) {
		if cerr := srcRC.Control(func(sfd uintptr) {
			fnErr = fn(int(dfd), int(sfd))
		}); cerr != nil {
			fnErr = cerr
		}
	})
	if cerr != nil {
		return cerr
	}
	return fnErr
}
