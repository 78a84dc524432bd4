package testpool

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// KernelLog reads the kernel's log from the moment it was opened, so that a
// test can tell what the kernel did meanwhile: the filesystems it mounted,
// for one, which XFS and ext4 always log.
type KernelLog struct {
	fd int
}

// OpenKernelLog returns nil where /dev/kmsg cannot be read (a container may
// hide it), and a nil KernelLog reads nothing: a test then says it could
// not look rather than failing.
func OpenKernelLog(t testing.TB) *KernelLog {
	t.Helper()
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Logf("cannot read the kernel log: %v", err)
		return nil
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		t.Logf("cannot skip the kernel log's past: %v", err)
		return nil
	}
	return &KernelLog{fd: fd}
}

// Read returns the messages logged since the last Read.
func (k *KernelLog) Read(t testing.TB) []string {
	t.Helper()
	if k == nil {
		return nil
	}
	var out []string
	// /dev/kmsg hands out one record per read, at most this long.
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(k.fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return out
		case errors.Is(err, unix.EPIPE):
			// Records were overwritten before they were read; the next
			// read gets the oldest one left.
			t.Logf("the kernel log overran while it was read")
			continue
		case err != nil:
			t.Fatalf("read the kernel log: %v", err)
		}
		// A record is "prefix;message\n", then " KEY=value" lines.
		_, msg, _ := strings.Cut(string(buf[:n]), ";")
		msg, _, _ = strings.Cut(msg, "\n")
		out = append(out, msg)
	}
}
