package driver

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/tarn-csi/tarn/pkg/faults"
)

// Mounter is the seam between the node service and the kernel's mount
// table, so that unit tests can reach error paths while integration tests
// use the real thing.
type Mounter interface {
	mount.Interface
	// FormatAndMountWith formats source with fsType and formatOptions if
	// it holds no filesystem, then mounts it.
	FormatAndMountWith(source, target, fsType string, options, formatOptions []string) error
	// GetDiskFormat returns the filesystem on disk, "" when none.
	GetDiskFormat(disk string) (string, error)
	// ResizeFS grows the filesystem of device mounted at path to fill the
	// device, when it is smaller.
	ResizeFS(device, path string) error
}

type realMounter struct {
	*mount.SafeFormatAndMount
}

// NewMounter returns the Mounter backed by mount-utils.
func NewMounter() Mounter {
	return newMounter(faults.Nop{})
}

func newMounter(inj faults.Injector) Mounter {
	// Without systemd: mount-utils detects it lazily and unguarded, which
	// races between concurrent calls, and Tarn's ext4/xfs mounts need no
	// systemd scope (that is for FUSE mounts outliving a restart).
	var m mount.Interface = mount.NewWithoutSystemd("")
	if _, nop := inj.(faults.Nop); !nop {
		m = pointMounter{Interface: m, faults: inj}
	}
	return realMounter{&mount.SafeFormatAndMount{Interface: m, Exec: utilexec.New()}}
}

// pointMounter reaches the fault point between FormatAndMount's mkfs and
// its mount, which mount-utils runs in one call: the mount of a filesystem
// (not a bind mount) goes through MountSensitive.
type pointMounter struct {
	mount.Interface
	faults faults.Injector
}

func (m pointMounter) MountSensitive(source, target, fstype string, options, sensitiveOptions []string) error {
	if fstype != "" {
		m.faults.Point("stage-volume.before-mount")
	}
	return m.Interface.MountSensitive(source, target, fstype, options, sensitiveOptions)
}

// isMountPoint reads the mount table, so bind mounts of files count; a
// missing path is simply not a mount point.
func isMountPoint(m Mounter, path string) (bool, error) {
	mnt, err := m.IsMountPoint(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	return mnt, err
}

func (m realMounter) FormatAndMountWith(source, target, fsType string, options, formatOptions []string) error {
	return m.FormatAndMountSensitiveWithFormatOptions(source, target, fsType, options, nil, formatOptions)
}

func (m realMounter) ResizeFS(device, path string) error {
	r := mount.NewResizeFs(m.Exec)
	need, err := r.NeedResize(device, path)
	if err != nil {
		return fmt.Errorf("check filesystem size on %s: %w", device, err)
	}
	if !need {
		return nil
	}
	if _, err := r.Resize(device, path); err != nil {
		return fmt.Errorf("grow filesystem on %s at %s: %w", device, path, err)
	}
	return nil
}

// blockDeviceSize returns the size of the block device at path (a device
// node or a file a device is bind-mounted on).
func blockDeviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var size uint64
	if err := ioctlGetSize(f, &size); err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64 %s: %w", path, err)
	}
	return int64(size), nil
}

func ioctlGetSize(f *os.File, size *uint64) error {
	v, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return err
	}
	*size = v
	return nil
}

// isBlockDevice says whether path is (a bind mount of) a block device.
func isBlockDevice(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, err
	}
	return st.Mode&unix.S_IFMT == unix.S_IFBLK, nil
}

// setDeviceReadOnly sets or clears the block layer's read-only flag of
// device. A read-only bind of a device node stops nothing: the flag on the
// device is what refuses writes, through every open of it.
func setDeviceReadOnly(device string, ro bool) error {
	f, err := os.Open(device)
	if err != nil {
		return err
	}
	defer f.Close()
	v := 0
	if ro {
		v = 1
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.BLKROSET, v); err != nil {
		return fmt.Errorf("BLKROSET %s: %w", device, err)
	}
	return nil
}

func deviceReadOnly(device string) (bool, error) {
	f, err := os.Open(device)
	if err != nil {
		return false, err
	}
	defer f.Close()
	v, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKROGET)
	if err != nil {
		return false, fmt.Errorf("BLKROGET %s: %w", device, err)
	}
	return v != 0, nil
}
