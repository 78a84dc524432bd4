package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lvmLockDir is LVM's own lock directory, which the deploy shares with the
// host, so that a tarn on the host and one in a container see each other.
const lvmLockDir = "/run/lock/lvm"

// instanceLockPath is the file whose lock says that a tarn serves this pool
// or volume group.
func instanceLockPath(c serveConfig) string {
	if c.backendKind == "lvm" {
		return filepath.Join(lvmLockDir, "tarn-"+c.volumeGroup+".lock")
	}
	return filepath.Join(c.poolDir, ".tarn.lock")
}

// lockInstance makes this process the only tarn serving what path stands
// for: a second one would sweep away the first one's objects in progress
// and thaw the filesystems it froze. The lock is the kernel's, so it goes
// with the process however it ends; the returned file must stay open for
// as long as the process serves. Close-on-exec keeps it from the LVM
// commands tarn runs, which may outlive a killed tarn.
func lockInstance(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open instance lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another tarn is serving this pool (it holds %s); stop it first", path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}
