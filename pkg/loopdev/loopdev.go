// Package loopdev attaches, finds and detaches Linux loop devices by talking
// to the kernel directly: ioctls on /dev/loop-control and /dev/loopN, and
// sysfs for enumeration.
//
// The package keeps no state of its own. Everything it reports is read back
// from the kernel, so a restarted driver sees exactly the devices a previous
// instance left attached.
package loopdev

import (
	"path/filepath"
	"strconv"
	"strings"
)

// Device is an attached loop device.
type Device struct {
	Path        string // /dev/loopN
	Number      int
	BackingFile string // as reported by sysfs (may end with " (deleted)")
	Deleted     bool   // the backing file was unlinked
	DirectIO    bool
}

// Options control how a backing file is attached.
type Options struct {
	// DirectIO asks the kernel to bypass the page cache of the backing file.
	// Not every filesystem or block size allows it, so a refusal falls back to
	// buffered I/O; Device.DirectIO reports what the kernel actually enabled.
	DirectIO bool
	ReadOnly bool
	// BlockSize is the device's logical block size; 0 lets the kernel
	// choose. With direct I/O the kernel otherwise follows the backing
	// file's alignment, which changes (512 to 4096 on XFS) once the file
	// shares extents with a reflink: a filesystem made on one size then
	// no longer mounts. A fixed size keeps the device stable.
	BlockSize uint32
}

// Interface is the seam used by callers so unit tests can fake loop devices.
type Interface interface {
	// Attach binds backingFile to a free loop device. It never reuses an
	// existing binding: callers wanting idempotency call FindByBackingFile
	// first.
	Attach(backingFile string, opts Options) (Device, error)
	// Detach unbinds the device. A device that is not bound is success. An
	// error wrapping unix.EBUSY means the device is still open elsewhere
	// (e.g. mounted).
	Detach(devicePath string) error
	// FindByBackingFile returns the devices bound to backingFile, matching by
	// device and inode so bind mounts and renames do not confuse it.
	FindByBackingFile(backingFile string) ([]Device, error)
	// List returns every bound loop device on the host.
	List() ([]Device, error)
	// RefreshSize makes the device pick up a resized backing file.
	RefreshSize(devicePath string) error
}

// Manager implements Interface on the real kernel. The zero value uses /sys
// and /dev; the fields let tests and containerised deployments point
// elsewhere.
type Manager struct {
	SysfsRoot string // default /sys
	DevRoot   string // default /dev

	// legacyOnly skips LOOP_CONFIGURE so tests can exercise the
	// LOOP_SET_FD + LOOP_SET_STATUS64 path that kernels before 5.8 need.
	legacyOnly bool
}

var _ Interface = Manager{}

const deletedSuffix = " (deleted)"

func (m Manager) sysfsRoot() string {
	if m.SysfsRoot == "" {
		return "/sys"
	}
	return m.SysfsRoot
}

func (m Manager) devRoot() string {
	if m.DevRoot == "" {
		return "/dev"
	}
	return m.DevRoot
}

func (m Manager) devicePath(n int) string {
	return filepath.Join(m.devRoot(), "loop"+strconv.Itoa(n))
}

func (m Manager) sysfsDir(n int) string {
	return filepath.Join(m.sysfsRoot(), "block", "loop"+strconv.Itoa(n))
}

// loopNumber extracts N from a path ending in "loopN".
func loopNumber(path string) (int, bool) {
	digits, ok := strings.CutPrefix(filepath.Base(path), "loop")
	if !ok || digits == "" {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// fileName converts a path into the fixed-size lo_file_name field. The kernel
// only uses it for diagnostics (losetup shows it when sysfs is unavailable),
// so truncation is harmless; one byte is kept for the terminating NUL.
func fileName(path string) [64]uint8 {
	var name [64]uint8
	copy(name[:len(name)-1], path)
	return name
}
