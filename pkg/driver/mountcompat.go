package driver

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// A repeated stage or publish finds the volume already at its path. The
// CSI spec wants success only when what is there is what the call asks
// for, and AlreadyExists when it is not: a CO that changed its mind (xfs
// instead of ext4, read-only instead of read-write) must not be told that
// it got what it asked for.

// mountWant is what a stage or publish asks of the mount at its path.
type mountWant struct {
	publish bool // a publication rather than the staging mount
	block   bool // raw block access: the device node bound onto a file
	// fsType is "" when the request names none: the CO leaves the choice
	// to the driver, and what is mounted is the volume's own filesystem,
	// from an earlier stage of it, so any will do.
	fsType   string
	readonly bool
	// flags are the requested mount flags; only those the kernel shows
	// back unchanged are compared (see shownMountFlags).
	flags []string
	// staging is a mount publication's staging path, whose read-only
	// state its bind inherits (see withStagingReadonly).
	staging string
}

// mountState is what the mount table says is at a path that holds the
// volume's device.
type mountState struct {
	block        bool     // the device node bound onto a file
	fsType       string   // as the mount table names it
	mountOptions []string // this mount's: ro or rw, nosuid, noatime...
	superOptions []string // the filesystem's, shared by its binds: sync...
}

// The mount flags compared, each with the flag that undoes it (of the two,
// the last asked wins, as with mount(8)). These are the ones the kernel
// lists in mountinfo exactly as mount(8) takes them, per mount or per
// filesystem. Others (defaults, discard, data=..., acl, user_xattr, and
// relatime, which the kernel adds unasked and noatime overrides) are
// omitted or rewritten by the kernel: comparing them would refuse
// identical retries.
var (
	shownMountFlags = map[string]string{
		"nosuid": "suid", "nodev": "dev", "noexec": "exec",
		"noatime": "atime", "nodiratime": "diratime", "nosymfollow": "symfollow",
	}
	shownSuperFlags = map[string]string{"sync": "async", "dirsync": "", "lazytime": "nolazytime"}
	// bindAddsFlags are the only ones sure to be on a publication when
	// asked. It is a bind of the staging mount, so it has its
	// filesystem's flags whatever it asks, and it inherits the staging
	// mount's restrictions and atime mode besides those asked.
	bindAddsFlags = []string{"nosuid", "nodev", "noexec", "nosymfollow"}
)

// askedFlags says, for each compared flag the request mentions, whether it
// asks for it (true) or for its undoing (false).
func askedFlags(flags []string) map[string]bool {
	asked := map[string]bool{}
	for _, f := range flags {
		if f == "" {
			continue
		}
		for _, table := range []map[string]string{shownMountFlags, shownSuperFlags} {
			for flag, undo := range table {
				switch f {
				case flag:
					asked[flag] = true
				case undo:
					asked[flag] = false
				}
			}
		}
	}
	return asked
}

// incompatibilities lists, in words, how the mount differs from what is
// asked; none when an identical call could have made it.
func (s mountState) incompatibilities(w mountWant) []string {
	if w.block != s.block {
		if w.block {
			return []string{"raw block access is asked but a filesystem is mounted"}
		}
		return []string{"a filesystem is asked but the raw block device is bound"}
	}
	var out []string
	if !s.block && w.fsType != "" && !strings.EqualFold(w.fsType, s.fsType) {
		out = append(out, fmt.Sprintf("filesystem %s is asked but %s is mounted", strings.ToLower(w.fsType), s.fsType))
	}
	if ro := slices.Contains(s.mountOptions, "ro"); ro != w.readonly {
		if w.readonly {
			out = append(out, "read-only is asked but it is mounted read-write")
		} else {
			out = append(out, "read-write is asked but it is mounted read-only")
		}
	}
	asked := askedFlags(w.flags)
	for _, f := range slices.Sorted(maps.Keys(asked)) {
		_, super := shownSuperFlags[f]
		if w.publish && (super || !asked[f] || !slices.Contains(bindAddsFlags, f)) {
			continue
		}
		where, has, name := "mount", s.mountOptions, f
		if super {
			where, has = "filesystem", s.superOptions
		}
		present := slices.Contains(has, f)
		if !asked[f] {
			name = shownMountFlags[f] + shownSuperFlags[f]
		}
		if asked[f] != present {
			out = append(out, fmt.Sprintf("mount flag %s is asked but the %s has %s", name, where, strings.Join(has, ",")))
		}
	}
	return out
}

// stageWant is what a stage asks of its staging path.
func stageWant(c *csi.VolumeCapability) mountWant {
	if c.GetBlock() != nil {
		return mountWant{block: true}
	}
	flags := mountOptions(c.GetMount().GetMountFlags(), readerOnly(c))
	return mountWant{
		fsType:   c.GetMount().GetFsType(),
		readonly: lastReadonly(false, flags),
		flags:    flags,
	}
}

// publishWant is what a publish asks of its target, as the bind that
// NodePublishVolume makes would have it: read-only when publishReadonly
// says so, else as the mount flags say (the last of ro and rw wins, as with
// mount(8)). The staging mount's
// own read-only state, which mount-utils copies onto every bind, is added
// by withStagingReadonly only when a mount is found at the target: a fresh
// publication need not read the mount table for it.
func publishWant(req *csi.NodePublishVolumeRequest) mountWant {
	readonly := publishReadonly(req)
	if req.GetVolumeCapability().GetBlock() != nil {
		// The device is bound with no mount flags.
		return mountWant{publish: true, block: true, readonly: readonly}
	}
	flags := mountOptions(req.GetVolumeCapability().GetMount().GetMountFlags(), readonly)
	return mountWant{
		publish:  true,
		fsType:   req.GetVolumeCapability().GetMount().GetFsType(),
		readonly: lastReadonly(false, flags),
		flags:    flags,
		staging:  req.GetStagingTargetPath(),
	}
}

// publishReadonly says whether a publication must be read-only whatever its
// mount flags say: the spec makes readonly binding, and a reader-only
// access mode grants no writes.
func publishReadonly(req *csi.NodePublishVolumeRequest) bool {
	return req.GetReadonly() || readerOnly(req.GetVolumeCapability())
}

// withStagingReadonly makes a mount publication's want read-only whenever
// its staging mount or that mount's filesystem is: otherwise a retry of a
// publish that got a read-only bind without asking would be refused.
func (w mountWant) withStagingReadonly() (mountWant, error) {
	if !w.publish || w.block || w.readonly || w.staging == "" {
		return w, nil
	}
	staging, err := mountAt(w.staging)
	if err != nil {
		return w, fmt.Errorf("inspect staging path %s: %w", w.staging, err)
	}
	if staging != nil && (slices.Contains(strings.Split(staging.Options, ","), "ro") ||
		slices.Contains(strings.Split(staging.VFSOptions, ","), "ro")) {
		w.readonly = true
	}
	return w, nil
}

// lastReadonly applies the ro and rw among flags to ro, the last winning.
func lastReadonly(ro bool, flags []string) bool {
	for _, f := range flags {
		switch f {
		case "ro":
			ro = true
		case "rw":
			ro = false
		}
	}
	return ro
}

// mountedDevice says whether path holds device (its filesystem, or the
// device node bound onto a file) and, when it does, how it is mounted
// there.
func mountedDevice(path, device string) (mountState, bool, error) {
	want, err := deviceNumber(device)
	if err != nil {
		return mountState{}, false, err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return mountState{}, false, fmt.Errorf("stat %s: %w", path, err)
	}
	s := mountState{block: st.Mode&unix.S_IFMT == unix.S_IFBLK}
	if s.block && st.Rdev != want || !s.block && st.Dev != want {
		return mountState{}, false, nil
	}
	m, err := mountAt(path)
	if err != nil {
		return mountState{}, false, err
	}
	if m == nil {
		return mountState{}, false, fmt.Errorf("%s holds %s but is not in the mount table", path, device)
	}
	s.fsType = m.FSType
	s.mountOptions = strings.Split(m.Options, ",")
	s.superOptions = strings.Split(m.VFSOptions, ",")
	return s, true, nil
}

// mountAt returns the topmost mount at path, nil when there is none. Only
// the parent is resolved: a mount whose filesystem answers every access
// with EIO (XFS after a shutdown, a dead network mount) must still be
// found, so that it can be unmounted.
func mountAt(path string) (*mountinfo.Info, error) {
	if r, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
		path = filepath.Join(r, filepath.Base(path))
	}
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != path, false
	})
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	if len(mounts) == 0 {
		return nil, nil
	}
	// Mounts stacked on one path are listed in the order they were made.
	return mounts[len(mounts)-1], nil
}

// mountHolds says whether path is a mount point and whether that mount
// holds device. It asks the mount table and never the mounted filesystem,
// for the same reason as mountAt.
func mountHolds(path, device string) (mounted, ours bool, err error) {
	m, err := mountAt(path)
	if err != nil || m == nil {
		return false, false, err
	}
	ours, err = entryHolds(m, device)
	return true, ours, err
}

// entryHolds says whether the mount m holds device, the volume's attached
// device ("" when it is not attached).
func entryHolds(m *mountinfo.Info, device string) (bool, error) {
	if device == "" {
		return false, nil
	}
	rdev, err := deviceNumber(device)
	if err != nil {
		return false, err
	}
	return mountOfDevice(m, rdev)
}

// mountOfDevice says whether m is a mount of the device numbered rdev: its
// filesystem, or its device node bound onto a file. Only such a bind,
// which lives on the /dev filesystem, is looked at beyond the table.
func mountOfDevice(m *mountinfo.Info, rdev uint64) (bool, error) {
	if m.Major == int(unix.Major(rdev)) && m.Minor == int(unix.Minor(rdev)) {
		return true, nil
	}
	if !isDeviceNodeBind(m) {
		return false, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(m.Mountpoint, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", m.Mountpoint, err)
	}
	return st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == rdev, nil
}

// isDeviceNodeBind says whether m could be a device node bound onto a
// file: such a bind shows in the table as a mount of the /dev filesystem,
// under whatever name the node has there (/loop0, /mapper/vg-lv, /dm-3).
func isDeviceNodeBind(m *mountinfo.Info) bool {
	return m.FSType == "devtmpfs" || m.FSType == "tmpfs"
}
