//go:build linux

package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

const (
	// detachWait is how long Detach waits for other openers (typically udev
	// probing the device after a change event) to go away before reporting
	// the device busy.
	detachWait   = time.Second
	detachPollAt = 10 * time.Millisecond
)

// Detach unbinds the loop device at devicePath.
//
// Since Linux 5.x LOOP_CLR_FD no longer fails on a device that is open
// elsewhere; it sets autoclear so the kernel unbinds on last close. Detach
// waits briefly for that and otherwise returns an error wrapping unix.EBUSY,
// as older kernels do, so callers see the same result everywhere. The device
// is then unbound automatically once its last user closes it, and calling
// Detach again is safe.
func (m Manager) Detach(devicePath string) error {
	fd, err := unix.Open(devicePath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		n, ok := loopNumber(devicePath)
		if !ok {
			return fmt.Errorf("detach %s: %w", devicePath, err)
		}
		if !m.bound(n) {
			return nil
		}
		// Bound but without a node: a /dev populated before the device existed.
		major, minor := m.deviceNumbers(n)
		if err := mknodIfMissing(devicePath, unix.S_IFBLK, major, minor); err != nil {
			return fmt.Errorf("detach %s: %w", devicePath, err)
		}
		fd, err = unix.Open(devicePath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if errors.Is(err, unix.ENXIO) {
		return nil // the loop device itself is gone
	}
	if err != nil {
		return fmt.Errorf("detach %s: %w", devicePath, err)
	}

	// Locate the sysfs directory through the device number rather than the
	// path name, which may be a symlink or live under another DevRoot.
	var st unix.Stat_t
	sysDir := ""
	if err := unix.Fstat(fd, &st); err == nil {
		rdev := uint64(st.Rdev)
		sysDir = filepath.Join(m.sysfsRoot(), "dev", "block",
			fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev)))
	}
	before, _ := readBackingFile(sysDir)

	_, err = unix.IoctlRetInt(fd, unix.LOOP_CLR_FD)
	// Closing our descriptor is what lets the kernel finish the unbind when
	// we were the only opener, so it must happen before waiting.
	unix.Close(fd)
	if errors.Is(err, unix.ENXIO) {
		return nil // not bound
	}
	if err != nil {
		return fmt.Errorf("detach %s: LOOP_CLR_FD: %w", devicePath, err)
	}
	if sysDir == "" || before == "" {
		return nil
	}
	return waitUnbound(devicePath, sysDir, before)
}

func waitUnbound(devicePath, sysDir, before string) error {
	deadline := time.Now().Add(detachWait)
	for {
		now, err := readBackingFile(sysDir)
		// The loop/ directory vanishes on unbind. A different backing file
		// means someone re-attached the number after our binding went away.
		if err != nil || now != before {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach %s: still in use, kernel will unbind it on last close: %w",
				devicePath, unix.EBUSY)
		}
		klog.V(4).InfoS("Waiting for loop device to be released", "device", devicePath)
		time.Sleep(detachPollAt)
	}
}

func readBackingFile(sysDir string) (string, error) {
	if sysDir == "" {
		return "", os.ErrNotExist
	}
	b, err := os.ReadFile(filepath.Join(sysDir, "loop", "backing_file"))
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// bound reports whether loop device n has a backing file. The loop/ sysfs
// directory only exists while the device is bound.
func (m Manager) bound(n int) bool {
	_, err := os.Stat(filepath.Join(m.sysfsDir(n), "loop", "backing_file"))
	return err == nil
}

// List returns all bound loop devices, ordered by number.
func (m Manager) List() ([]Device, error) {
	pattern := filepath.Join(m.sysfsRoot(), "block", "loop*")
	dirs, err := filepath.Glob(pattern)
	if err != nil {
		return nil, fmt.Errorf("list loop devices: glob %s: %w", pattern, err)
	}
	devices := []Device{}
	for _, dir := range dirs {
		n, ok := loopNumber(dir)
		if !ok {
			continue
		}
		backing, err := readBackingFile(dir)
		if detachedMeanwhile(err) {
			continue // unbound, or unbound since the glob
		}
		if err != nil {
			return nil, fmt.Errorf("list loop devices: loop%d: %w", n, err)
		}
		dio, _ := os.ReadFile(filepath.Join(dir, "loop", "dio"))
		devices = append(devices, Device{
			Path:        m.devicePath(n),
			Number:      n,
			BackingFile: backing,
			Deleted:     strings.HasSuffix(backing, deletedSuffix),
			DirectIO:    strings.TrimSpace(string(dio)) == "1",
		})
	}
	slices.SortFunc(devices, func(a, b Device) int { return a.Number - b.Number })
	return devices, nil
}

// FindByBackingFile returns the devices bound to backingFile. Paths are
// ambiguous (bind mounts, mount namespaces, renames, a new file at an old
// path), so devices are matched by the backing file's device and inode; only
// when the file no longer exists does it fall back to comparing paths.
func (m Manager) FindByBackingFile(backingFile string) ([]Device, error) {
	all, err := m.List()
	if err != nil {
		return nil, fmt.Errorf("find loop devices for %s: %w", backingFile, err)
	}
	var st unix.Stat_t
	err = unix.Stat(backingFile, &st)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return matchDeletedPath(all, backingFile), nil
	}
	if err != nil {
		return nil, fmt.Errorf("find loop devices for %s: %w", backingFile, err)
	}

	found := []Device{}
	for _, d := range all {
		info, err := m.status(d.Number)
		if errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENOENT) {
			continue // detached since List
		}
		if err != nil {
			return nil, fmt.Errorf("find loop devices for %s: %s: %w", backingFile, d.Path, err)
		}
		// Both sides use the kernel's new_encode_dev format on 64-bit.
		if info.Device == uint64(st.Dev) && info.Inode == uint64(st.Ino) {
			found = append(found, d)
		}
	}
	return found, nil
}

func matchDeletedPath(all []Device, backingFile string) []Device {
	want, err := filepath.Abs(backingFile)
	if err != nil {
		want = filepath.Clean(backingFile)
	}
	found := []Device{}
	for _, d := range all {
		if strings.TrimSuffix(d.BackingFile, deletedSuffix) == want {
			found = append(found, d)
		}
	}
	return found
}

func (m Manager) status(n int) (*unix.LoopInfo64, error) {
	path, err := m.ensureDeviceNode(n)
	if err != nil {
		return nil, err
	}
	// Read-only so that closing does not trigger a udev change event.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return nil, fmt.Errorf("LOOP_GET_STATUS64 %s: %w", path, err)
	}
	return info, nil
}

// RefreshSize re-reads the backing file size, so a grown file becomes
// visible through the device.
func (m Manager) RefreshSize(devicePath string) error {
	// LOOP_SET_CAPACITY accepts a read-only descriptor from CAP_SYS_ADMIN,
	// which also keeps this working for read-only devices.
	fd, err := unix.Open(devicePath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("refresh size of %s: %w", devicePath, err)
	}
	defer unix.Close(fd)
	if _, err := unix.IoctlRetInt(fd, unix.LOOP_SET_CAPACITY); err != nil {
		return fmt.Errorf("refresh size of %s: LOOP_SET_CAPACITY: %w", devicePath, err)
	}
	return nil
}

// detachedMeanwhile recognises a device that is unbound or being unbound:
// sysfs answers ENOENT for one and ENODEV or ENXIO for the other, and
// neither may fail a listing that other calls depend on.
func detachedMeanwhile(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO)
}
