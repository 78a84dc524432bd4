// Package testpool builds real, throwaway filesystems on loop devices for
// integration tests, and checks that tests leave no loop device or mount
// behind.
//
// It shells out to losetup, mkfs, mount and umount on purpose: the code under
// test must not be the thing that sets up its own fixtures.
package testpool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
)

// Kind is a filesystem flavour that New can build.
type Kind string

// Kinds of pool. XFSReflink is the one that supports FICLONE; ext4 never does;
// btrfs always does.
const (
	XFSReflink Kind = "xfs-reflink"
	Ext4       Kind = "ext4"
	Btrfs      Kind = "btrfs"
)

// markerPrefix, with the process id after it, tags every image, mountpoint
// and temp dir this package creates, so that AssertNoLeaks can tell this
// process's loop devices and mounts from those of other test binaries
// running at the same time (go test runs packages in parallel).
const markerPrefix = "tarn-testpool-"

const (
	// umountAttempts bounds the polite retries before a lazy unmount: a
	// just-closed file or a finishing writeback can keep a mount busy for a
	// moment.
	umountAttempts = 5
	umountBackoff  = 200 * time.Millisecond
)

type fsSpec struct {
	fsType string
	mkfs   []string
}

func specFor(kind Kind) (fsSpec, bool) {
	switch kind {
	case XFSReflink:
		return fsSpec{fsType: "xfs", mkfs: []string{"mkfs.xfs", "-f", "-m", "reflink=1"}}, true
	case Ext4:
		return fsSpec{fsType: "ext4", mkfs: []string{"mkfs.ext4", "-F", "-q"}}, true
	case Btrfs:
		return fsSpec{fsType: "btrfs", mkfs: []string{"mkfs.btrfs", "-f", "-q"}}, true
	}
	return fsSpec{}, false
}

// New creates a filesystem of the given kind on a sparse image of sizeBytes,
// mounts it on a fresh directory and returns that mountpoint. Everything is
// undone by t.Cleanup. It skips the test when not running as root and fails
// it on any setup error.
//
// XFS refuses images under 300 MiB and btrfs under about 110 MiB; the image
// is sparse, so 512 MiB costs next to nothing.
func New(t testing.TB, kind Kind, sizeBytes int64) string {
	t.Helper()
	spec, ok := specFor(kind)
	if !ok {
		t.Fatalf("testpool: unknown kind %q", kind)
	}
	loop := NewLoop(t, sizeBytes)

	mkfs := append(append([]string{}, spec.mkfs...), loop)
	if out, err := run(mkfs...); err != nil {
		t.Fatalf("testpool: %s: %v\n%s", strings.Join(mkfs, " "), err, out)
	}
	if kind == Btrfs {
		// mkfs.btrfs registers the device with the kernel; forget it before
		// the loop device is detached so a later pool on the same loop
		// number does not meet a stale registration.
		t.Cleanup(func() { _, _ = run("btrfs", "device", "scan", "--forget", loop) })
	}

	mnt := filepath.Join(t.TempDir(), marker("mnt"))
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatalf("testpool: %v", err)
	}
	if out, err := run("mount", "-t", spec.fsType, loop, mnt); err != nil {
		t.Fatalf("testpool: mount %s on %s: %v\n%s", loop, mnt, err, out)
	}
	t.Cleanup(func() {
		if err := unmount(mnt); err != nil {
			t.Errorf("testpool: %v", err)
		}
	})
	return mnt
}

// NewLoop attaches a sparse, zeroed image of sizeBytes to a free loop device
// and returns the device path; t.Cleanup detaches it. The device carries no
// filesystem, which is what raw block volumes look like.
func NewLoop(t testing.TB, sizeBytes int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("testpool: needs root to attach loop devices and mount")
	}
	if sizeBytes <= 0 {
		t.Fatalf("testpool: size must be positive, got %d", sizeBytes)
	}
	img := filepath.Join(t.TempDir(), marker("img"))
	if err := makeSparse(img, sizeBytes); err != nil {
		t.Fatalf("testpool: %v", err)
	}
	out, err := run("losetup", "--find", "--show", img)
	if err != nil {
		t.Fatalf("testpool: losetup %s: %v\n%s", img, err, out)
	}
	loop := strings.TrimSpace(string(out))
	if !strings.HasPrefix(loop, "/dev/") {
		t.Fatalf("testpool: losetup printed %q, want a device path", loop)
	}
	t.Cleanup(func() {
		if out, err := run("losetup", "-d", loop); err != nil {
			t.Errorf("testpool: losetup -d %s: %v\n%s", loop, err, out)
		}
	})
	return loop
}

// DeviceOf returns the source device of the filesystem mounted exactly at
// mountpoint, as listed in /proc/self/mountinfo; for a pool from New that is
// its loop device.
func DeviceOf(t testing.TB, mountpoint string) string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mountpoint))
	if err != nil {
		t.Fatalf("testpool: reading mountinfo: %v", err)
	}
	if len(mounts) == 0 {
		t.Fatalf("testpool: nothing is mounted at %s", mountpoint)
	}
	// The last entry is the visible one when mounts are stacked.
	return mounts[len(mounts)-1].Source
}

func marker(what string) string {
	return fmt.Sprintf("%s%d-%s", markerPrefix, os.Getpid(), what)
}

func makeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		_ = f.Close()
		return fmt.Errorf("sizing image %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing image %s: %w", path, err)
	}
	return nil
}

func unmount(mnt string) error {
	var lastErr error
	for i := 0; i < umountAttempts; i++ {
		out, err := run("umount", mnt)
		if err == nil {
			return nil
		}
		lastErr = fmt.Errorf("umount %s: %w: %s", mnt, err, bytes.TrimSpace(out))
		if !bytes.Contains(out, []byte("busy")) {
			return lastErr
		}
		time.Sleep(umountBackoff)
	}
	// A lazy unmount still lets the loop device go once the last user is
	// gone, which beats leaking the mount into every later test.
	if out, err := run("umount", "-l", mnt); err != nil {
		return errors.Join(lastErr, fmt.Errorf("umount -l %s: %w: %s", mnt, err, bytes.TrimSpace(out)))
	}
	return nil
}

// run executes argv and returns its combined output, so that failures can
// show what the tool said.
func run(argv ...string) ([]byte, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	// Tools print localised messages otherwise, and unmount looks for "busy".
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd.CombinedOutput()
}
