package driver

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Device identity is compared by device numbers, not by names in the mount
// table: a filesystem's root has st_dev equal to its block device's
// st_rdev, and a block device bound onto a file keeps its st_rdev, while
// the mount table names such a bind after devtmpfs.

func deviceNumber(device string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(device, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", device, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, fmt.Errorf("%s is not a block device", device)
	}
	return st.Rdev, nil
}

// holdsDevice says whether path is a mount of device: its filesystem (block
// false) or the device node itself bound onto path (block true).
func holdsDevice(path, device string, block bool) (bool, error) {
	want, err := deviceNumber(device)
	if err != nil {
		return false, err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if block {
		return st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == want, nil
	}
	return st.Dev == want, nil
}

// publications lists the mount points where device is in use, other than
// the paths in except: its filesystem mounted or bound elsewhere, or the
// device node bound onto a file.
func publications(device string, except ...string) ([]string, error) {
	rdev, err := deviceNumber(device)
	if err != nil {
		return nil, err
	}
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		ours, err := mountOfDevice(m, rdev)
		return err != nil || !ours, false
	})
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	skip := map[string]bool{}
	for _, p := range except {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		skip[p] = true
	}
	var out []string
	for _, m := range mounts {
		if !skip[m.Mountpoint] {
			out = append(out, m.Mountpoint)
		}
	}
	return out, nil
}

// filesystemMounts lists where device's filesystem is mounted: its staging
// mount and the binds of it, not device nodes bound onto files.
func filesystemMounts(device string) ([]string, error) {
	mounts, err := mountsOfFilesystem(device, func(*mountinfo.Info) bool { return true })
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}

func mountsOfFilesystem(device string, keep func(*mountinfo.Info) bool) ([]*mountinfo.Info, error) {
	rdev, err := deviceNumber(device)
	if err != nil {
		return nil, err
	}
	major, minor := int(unix.Major(rdev)), int(unix.Minor(rdev))
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Major != major || m.Minor != minor || !keep(m), false
	})
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return mounts, nil
}

// writableMountOf returns a mount of device's filesystem that is writable
// (neither the mount nor the superblock read-only): the first of preferred
// that qualifies, else any; "" when there is none.
func writableMountOf(device string, preferred ...string) (string, error) {
	mounts, err := mountsOfFilesystem(device, func(m *mountinfo.Info) bool {
		return !slices.Contains(strings.Split(m.Options, ","), "ro") &&
			!slices.Contains(strings.Split(m.VFSOptions, ","), "ro")
	})
	if err != nil {
		return "", err
	}
	var writable []string
	for _, m := range mounts {
		writable = append(writable, m.Mountpoint)
	}
	for _, p := range preferred {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		if slices.Contains(writable, p) {
			return p, nil
		}
	}
	if len(writable) > 0 {
		return writable[0], nil
	}
	return "", nil
}
