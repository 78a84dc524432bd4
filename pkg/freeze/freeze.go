// Package freeze makes a volume consistent on disk for the moment a snapshot
// is taken: it freezes the filesystem on it when one is mounted, and flushes
// the block device otherwise.
package freeze

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// x/sys/unix does not define FIFREEZE and FITHAW. Values from linux/fs.h:
// _IOWR('X', 119, int) and _IOWR('X', 120, int). A 4-byte _IOWR encodes the
// same on every Linux architecture, including those with a non-generic ioctl
// layout (mips, powerpc, sparc).
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// Freeze freezes the filesystem mounted at mountpoint: writes to it block
// until Thaw. Freezing applies to the superblock, so it affects every mount
// of the same filesystem. Freezing a filesystem that is already frozen fails
// with an error matching unix.EBUSY.
func Freeze(mountpoint string) error {
	fd, err := openMountpoint(mountpoint)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// The kernel blocks new writers before it writes back dirty data, so
	// syncing first keeps the time writers stall short.
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncing %s before freeze: %w", mountpoint, err)
	}
	if err := unix.IoctlSetInt(fd, fiFreeze, 0); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("freezing %s: already frozen: %w", mountpoint, err)
		}
		return fmt.Errorf("freezing %s: %w", mountpoint, err)
	}
	return nil
}

// Thaw thaws the filesystem mounted at mountpoint. Thawing a filesystem that
// is not frozen succeeds, so that cleanup paths can call it unconditionally.
func Thaw(mountpoint string) error {
	_, err := ThawFrozen(mountpoint)
	return err
}

// ThawFrozen is Thaw that also reports whether the filesystem was frozen,
// so that a repair of a forgotten freeze can be told from a no-op.
func ThawFrozen(mountpoint string) (thawed bool, err error) {
	fd, err := openMountpoint(mountpoint)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, fiThaw, 0); err != nil {
		// The kernel's way of saying "not frozen".
		if errors.Is(err, unix.EINVAL) {
			return false, nil
		}
		return false, fmt.Errorf("thawing %s: %w", mountpoint, err)
	}
	return true, nil
}

func openMountpoint(mountpoint string) (int, error) {
	// No O_DIRECTORY: a mountpoint may be a bind-mounted file, and the
	// ioctls act on the superblock behind any open file.
	fd, err := unix.Open(mountpoint, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening mountpoint %s: %w", mountpoint, err)
	}
	return fd, nil
}
