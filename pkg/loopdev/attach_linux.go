//go:build linux

package loopdev

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

const (
	loopMajor        = 7
	miscMajor        = 10
	loopControlMinor = 237 // fixed misc minor of /dev/loop-control

	// attachAttempts bounds the retries when concurrent attachers are handed
	// the same free device by LOOP_CTL_GET_FREE. Every round lets at least one
	// contender win, so this covers that many simultaneous attaches.
	attachAttempts = 32
	maxBackoff     = 50 * time.Millisecond
)

// Attach binds backingFile to a free loop device.
func (m Manager) Attach(backingFile string, opts Options) (Device, error) {
	mode := unix.O_RDWR
	if opts.ReadOnly {
		mode = unix.O_RDONLY
	}
	// The kernel takes its own reference to the backing file during the
	// bind, so this descriptor is only needed until then.
	backing, err := unix.Open(backingFile, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return Device{}, fmt.Errorf("open backing file %s: %w", backingFile, err)
	}
	defer unix.Close(backing)

	ctl, err := m.openControl()
	if err != nil {
		return Device{}, fmt.Errorf("attach %s: %w", backingFile, err)
	}
	defer unix.Close(ctl)

	var lastErr error
	for attempt := 1; attempt <= attachAttempts; attempt++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return Device{}, fmt.Errorf("attach %s: LOOP_CTL_GET_FREE: %w", backingFile, err)
		}
		dev, err := m.attachTo(n, backing, backingFile, opts)
		if err == nil {
			return dev, nil
		}
		// EBUSY: another attacher bound the same free number first.
		// ENXIO: the device was removed (LOOP_CTL_REMOVE) before we opened it.
		if !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.ENXIO) {
			return Device{}, err
		}
		lastErr = err
		klog.V(4).InfoS("Loop device taken concurrently, retrying",
			"device", m.devicePath(n), "backingFile", backingFile, "attempt", attempt, "err", err)
		time.Sleep(backoff(attempt))
	}
	return Device{}, fmt.Errorf("attach %s: no free loop device after %d attempts: %w",
		backingFile, attachAttempts, lastErr)
}

// backoff grows with the attempt number and is jittered so that contenders
// which collided once do not collide again in lockstep.
func backoff(attempt int) time.Duration {
	d := time.Duration(attempt) * time.Millisecond
	if d > maxBackoff {
		d = maxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

func (m Manager) attachTo(n, backing int, backingFile string, opts Options) (Device, error) {
	path, err := m.ensureDeviceNode(n)
	if err != nil {
		return Device{}, fmt.Errorf("attach %s: %w", backingFile, err)
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return Device{}, fmt.Errorf("attach %s: open %s: %w", backingFile, path, err)
	}
	defer unix.Close(fd)

	if err := m.bind(fd, backing, backingFile, opts); err != nil {
		return Device{}, fmt.Errorf("attach %s to %s: %w", backingFile, path, err)
	}
	// The kernel may quietly drop LO_FLAGS_DIRECT_IO, so ask it what it did.
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		clearFD(fd, path)
		return Device{}, fmt.Errorf("attach %s to %s: LOOP_GET_STATUS64: %w", backingFile, path, err)
	}
	dev := Device{
		Path:        path,
		Number:      n,
		BackingFile: backingFile,
		DirectIO:    info.Flags&unix.LO_FLAGS_DIRECT_IO != 0,
	}
	if b, err := os.ReadFile(filepath.Join(m.sysfsDir(n), "loop", "backing_file")); err == nil {
		dev.BackingFile = strings.TrimSuffix(string(b), "\n")
		dev.Deleted = strings.HasSuffix(dev.BackingFile, deletedSuffix)
	}
	klog.V(4).InfoS("Attached loop device", "device", path, "backingFile", dev.BackingFile,
		"readOnly", opts.ReadOnly, "directIO", dev.DirectIO)
	return dev, nil
}

func (m Manager) bind(fd, backing int, backingFile string, opts Options) error {
	info := unix.LoopInfo64{File_name: fileName(backingFile)}
	if opts.ReadOnly {
		info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if !m.legacyOnly {
		err := configure(fd, backing, info, opts.DirectIO, opts.BlockSize)
		// Kernels before 5.8 lack LOOP_CONFIGURE and answer EINVAL or ENOTTY.
		// A genuinely invalid request fails the legacy path the same way, so
		// falling back loses no error.
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
			return err
		}
		klog.V(4).InfoS("LOOP_CONFIGURE unusable, falling back to LOOP_SET_FD", "backingFile", backingFile, "err", err)
	}
	return legacyBind(fd, backing, info, opts.DirectIO, opts.BlockSize)
}

func configure(fd, backing int, info unix.LoopInfo64, directIO bool, blockSize uint32) error {
	// x/sys names loop_config's block_size field Size.
	cfg := unix.LoopConfig{Fd: uint32(backing), Size: blockSize, Info: info}
	if directIO {
		cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
		err := unix.IoctlLoopConfigure(fd, &cfg)
		if !errors.Is(err, unix.EINVAL) {
			return wrapIoctl("LOOP_CONFIGURE", err)
		}
		// Some kernels reject direct I/O the backing filesystem cannot do
		// instead of dropping it; buffered I/O is slower but correct.
		klog.V(4).InfoS("Direct I/O refused, retrying with buffered I/O", "err", err)
		cfg.Info.Flags &^= unix.LO_FLAGS_DIRECT_IO
	}
	return wrapIoctl("LOOP_CONFIGURE", unix.IoctlLoopConfigure(fd, &cfg))
}

// legacyBind needs three ioctls where LOOP_CONFIGURE needs one, so a failure
// after LOOP_SET_FD must unbind again or the device would be leaked
// half-configured.
func legacyBind(fd, backing int, info unix.LoopInfo64, directIO bool, blockSize uint32) error {
	// With LOOP_SET_FD, read-only follows the open mode of the backing file.
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_FD, backing); err != nil {
		return wrapIoctl("LOOP_SET_FD", err)
	}
	if err := unix.IoctlLoopSetStatus64(fd, &info); err != nil {
		clearFD(fd, "")
		return wrapIoctl("LOOP_SET_STATUS64", err)
	}
	if blockSize != 0 {
		if err := unix.IoctlSetInt(fd, unix.LOOP_SET_BLOCK_SIZE, int(blockSize)); err != nil {
			clearFD(fd, "")
			return wrapIoctl("LOOP_SET_BLOCK_SIZE", err)
		}
	}
	if !directIO {
		return nil
	}
	err := unix.IoctlSetInt(fd, unix.LOOP_SET_DIRECT_IO, 1)
	if errors.Is(err, unix.EINVAL) {
		klog.V(4).InfoS("Direct I/O refused, keeping buffered I/O", "err", err)
		return nil
	}
	if err != nil {
		clearFD(fd, "")
		return wrapIoctl("LOOP_SET_DIRECT_IO", err)
	}
	return nil
}

func wrapIoctl(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", name, err)
}

// clearFD is best-effort cleanup on an error path that already has an error
// to report.
func clearFD(fd int, path string) {
	if _, err := unix.IoctlRetInt(fd, unix.LOOP_CLR_FD); err != nil {
		klog.V(4).InfoS("Failed to unbind loop device after failed attach", "device", path, "err", err)
	}
}

func (m Manager) openControl() (int, error) {
	path := filepath.Join(m.devRoot(), "loop-control")
	if err := mknodIfMissing(path, unix.S_IFCHR, miscMajor, loopControlMinor); err != nil {
		return -1, err
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", path, err)
	}
	return fd, nil
}

// ensureDeviceNode creates /dev/loopN when it is missing. That happens when
// /dev is a plain tmpfs populated before the loop device existed (kind nodes,
// containers), because only devtmpfs gets nodes for new devices.
func (m Manager) ensureDeviceNode(n int) (string, error) {
	path := m.devicePath(n)
	major, minor := m.deviceNumbers(n)
	return path, mknodIfMissing(path, unix.S_IFBLK, major, minor)
}

// deviceNumbers prefers sysfs because the minor is N shifted by the loop
// module's max_part setting; 7:N is only right for the default of 0.
func (m Manager) deviceNumbers(n int) (uint32, uint32) {
	b, err := os.ReadFile(filepath.Join(m.sysfsDir(n), "dev"))
	if err == nil {
		var major, minor uint32
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor); err == nil {
			return major, minor
		}
	}
	return loopMajor, uint32(n)
}

func mknodIfMissing(path string, typ, major, minor uint32) error {
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	err = unix.Mknod(path, typ|0o660, int(unix.Mkdev(major, minor)))
	if errors.Is(err, unix.EEXIST) {
		return nil // a concurrent caller created it
	}
	if err != nil {
		return fmt.Errorf("create device node %s (%d:%d): %w", path, major, minor, err)
	}
	// mknod applies the umask; make the mode what was asked for.
	if err := unix.Chmod(path, 0o660); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	klog.V(4).InfoS("Created missing device node", "path", path, "major", major, "minor", minor)
	return nil
}
