package driver

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// bindAttrs are the per-mount restrictions a publication may add to what
// its bind inherits from the staging mount. Their undoing (suid, dev,
// exec, symfollow) is not offered: a publication never has fewer
// restrictions than the mount it binds.
var bindAttrs = map[string]uint64{
	"nosuid": unix.MOUNT_ATTR_NOSUID, "nodev": unix.MOUNT_ATTR_NODEV,
	"noexec": unix.MOUNT_ATTR_NOEXEC, "nosymfollow": unix.MOUNT_ATTR_NOSYMFOLLOW,
}

// bindAtimes are the atime modes, one of which replaces the inherited one.
var bindAtimes = map[string]uint64{
	"noatime": unix.MOUNT_ATTR_NOATIME, "relatime": unix.MOUNT_ATTR_RELATIME, "strictatime": unix.MOUNT_ATTR_STRICTATIME,
}

// errNoMountAPI means the kernel lacks open_tree and mount_setattr (before
// Linux 5.12), a seccomp profile refuses them, or mount_setattr does not
// know an attribute (nosymfollow before 5.14).
var errNoMountAPI = errors.New("kernel has no mount_setattr")

// bindMount binds source (a mount or a device node) at target with its
// read-only state and flags already set, in one step: the bind appears
// complete or not at all. A bind and a remount, mount(8)'s way, leave a
// writable bind between them, which a driver killed there would hand to
// the kubelet's retry.
func bindMount(source, target string, readonly bool, flags []string) error {
	attr := unix.MountAttr{}
	if readonly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	for _, f := range flags {
		switch {
		case bindAttrs[f] != 0:
			attr.Attr_set |= bindAttrs[f]
		case f == "nodiratime":
			attr.Attr_set |= unix.MOUNT_ATTR_NODIRATIME
		case f == "diratime":
			attr.Attr_set &^= unix.MOUNT_ATTR_NODIRATIME
			attr.Attr_clr |= unix.MOUNT_ATTR_NODIRATIME
		default:
			if atime, ok := bindAtimes[f]; ok {
				attr.Attr_set = attr.Attr_set&^unix.MOUNT_ATTR__ATIME | atime
				attr.Attr_clr |= unix.MOUNT_ATTR__ATIME
			}
		}
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		return errNoMountAPI
	}
	if err != nil {
		return fmt.Errorf("clone %s for a bind: %w", source, err)
	}
	defer unix.Close(fd)
	if attr.Attr_set != 0 || attr.Attr_clr != 0 {
		err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr)
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) {
			return errNoMountAPI
		}
		if err != nil {
			return fmt.Errorf("set the bind's attributes: %w", err)
		}
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s at %s: %w", source, target, err)
	}
	return nil
}
