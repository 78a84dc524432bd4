package freeze

import (
	"fmt"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// MountpointOf returns one mountpoint at which the filesystem on the block
// device devicePath is mounted and reachable, or "" when it is not mounted.
// One is enough: all mounts of a device share a superblock, and freezing a
// second mount of a frozen superblock fails with EBUSY.
//
// Mounts are matched by device number, not by the source string, which may
// name the device through any of its symlinks. A mount covered by another
// mount (on it or on one of its parents) is skipped, since opening its path
// would reach the covering filesystem instead; if every mount of the device
// is covered, that is an error rather than "", because the device is in use.
func MountpointOf(devicePath string) (string, error) {
	rdev, err := blockDevice(devicePath)
	if err != nil {
		return "", err
	}
	major, minor := int(unix.Major(rdev)), int(unix.Minor(rdev))
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !((m.Major == major && m.Minor == minor) || anonMountOf(m, rdev)), false
	})
	if err != nil {
		return "", fmt.Errorf("reading mountinfo for %s: %w", devicePath, err)
	}
	if len(mounts) == 0 {
		return "", nil
	}
	for _, m := range mounts {
		if reachable(m) {
			return m.Mountpoint, nil
		}
	}
	return "", fmt.Errorf("%s is mounted (%d mounts, first at %s) but every mount is covered by another", devicePath, len(mounts), mounts[0].Mountpoint)
}

// blockDevice returns the device number of the block device at path.
func blockDevice(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, fmt.Errorf("%s is not a block device (mode %#o)", path, st.Mode)
	}
	return uint64(st.Rdev), nil
}

// anonMountOf reports whether m is a mount of the device rdev that mountinfo
// lists under an anonymous device number, as btrfs does for every mount.
// Then only the source names the device; it is resolved to a device number
// rather than compared as a string. Only /dev paths are resolved, so that a
// stat never wanders into a network filesystem.
func anonMountOf(m *mountinfo.Info, rdev uint64) bool {
	if m.Major != 0 || !strings.HasPrefix(m.Source, "/dev/") {
		return false
	}
	src, err := blockDevice(m.Source)
	return err == nil && src == rdev
}

// reachable reports whether resolving m's mountpoint path lands on m itself,
// by comparing mount ids. Kernels before 5.8 do not report the mount id;
// there the mount is assumed reachable, as it nearly always is.
func reachable(m *mountinfo.Info) bool {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, m.Mountpoint, unix.AT_NO_AUTOMOUNT|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &stx)
	if err != nil {
		return false
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		return true
	}
	return stx.Mnt_id == uint64(m.ID)
}

// ThawDevice thaws the filesystem on devicePath if it is mounted and
// frozen, for start-up repairs of a freeze that a killed process left:
// thawed says whether it was frozen, mountpoint where it is mounted ("" when
// it is not).
func ThawDevice(devicePath string) (mountpoint string, thawed bool, err error) {
	mnt, err := MountpointOf(devicePath)
	if err != nil || mnt == "" {
		return "", false, err
	}
	thawed, err = ThawFrozen(mnt)
	return mnt, thawed, err
}
