package freeze

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/test/testpool"
	"golang.org/x/sys/unix"
)

const (
	poolSize = 512 << 20
	// stillBlocked is how long a write must stay stuck to count as blocked
	// by a freeze. A write that should block never completes early, so a
	// short wait cannot make a correct freeze look broken.
	stillBlocked = 300 * time.Millisecond
	// generous bounds how long a write that should go through may take,
	// loose enough for a loaded CI machine.
	generous = 30 * time.Second
)

// startWrite creates and writes a new file in dir in the background; the
// channel yields the result.
func startWrite(dir string) <-chan error {
	ch := make(chan error, 1)
	go func() {
		f, err := os.CreateTemp(dir, "write-")
		if err != nil {
			ch <- err
			return
		}
		_, err = f.Write([]byte("data"))
		ch <- errors.Join(err, f.Close())
	}()
	return ch
}

func assertBlocked(t *testing.T, write <-chan error) {
	t.Helper()
	select {
	case err := <-write:
		t.Fatalf("write went through a frozen filesystem (err=%v)", err)
	case <-time.After(stillBlocked):
	}
}

func awaitWrite(t *testing.T, write <-chan error) {
	t.Helper()
	select {
	case err := <-write:
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	case <-time.After(generous):
		t.Fatalf("write still blocked after %v: filesystem left frozen", generous)
	}
}

func assertWritable(t *testing.T, dir string) {
	t.Helper()
	awaitWrite(t, startWrite(dir))
}

// thawAtCleanup keeps a failing test from leaving a frozen filesystem, whose
// unmount would hang. Registered after the pool, it runs before the unmount.
func thawAtCleanup(t *testing.T, mountpoint string) {
	t.Cleanup(func() {
		if err := Thaw(mountpoint); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

func TestFreezeBlocksWritesUntilThaw(t *testing.T) {
	for _, kind := range []testpool.Kind{testpool.Ext4, testpool.XFSReflink, testpool.Btrfs} {
		t.Run(string(kind), func(t *testing.T) {
			mnt := testpool.New(t, kind, poolSize)
			thawAtCleanup(t, mnt)

			if err := Freeze(mnt); err != nil {
				t.Fatal(err)
			}
			write := startWrite(mnt)
			assertBlocked(t, write)

			if err := Freeze(mnt); !errors.Is(err, unix.EBUSY) {
				t.Errorf("second Freeze = %v, want EBUSY", err)
			}
			if thawed, err := ThawFrozen(mnt); err != nil || !thawed {
				t.Fatalf("ThawFrozen of a frozen filesystem = %v, %v; want true, nil", thawed, err)
			}
			awaitWrite(t, write)
			if thawed, err := ThawFrozen(mnt); err != nil || thawed {
				t.Errorf("ThawFrozen of a thawed filesystem = %v, %v; want false, nil", thawed, err)
			}
			if err := Thaw(mnt); err != nil {
				t.Errorf("Thaw of a thawed filesystem = %v, want nil", err)
			}
		})
	}
}

func TestThawWhenNotFrozen(t *testing.T) {
	mnt := testpool.New(t, testpool.Ext4, poolSize)
	if err := Thaw(mnt); err != nil {
		t.Errorf("Thaw = %v, want nil", err)
	}
	assertWritable(t, mnt)
}

func TestFreezeMissingMountpoint(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	if err := Freeze(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Freeze = %v, want ErrNotExist", err)
	}
	if err := Thaw(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Thaw = %v, want ErrNotExist", err)
	}
}

func TestMountpointOf(t *testing.T) {
	ext4 := testpool.New(t, testpool.Ext4, poolSize)
	// btrfs lists an anonymous device number in mountinfo, so it is found
	// through the mount source instead.
	btrfs := testpool.New(t, testpool.Btrfs, poolSize)
	unmounted := testpool.NewLoop(t, 1<<20)
	for _, tc := range []struct {
		name, device, want string
	}{
		{"ext4", testpool.DeviceOf(t, ext4), ext4},
		{"btrfs", testpool.DeviceOf(t, btrfs), btrfs},
		{"unmounted", unmounted, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MountpointOf(tc.device)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("MountpointOf(%s) = %q, want %q", tc.device, got, tc.want)
			}
		})
	}
}

func TestMountpointOfRejectsNonDevices(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := MountpointOf(file); err == nil {
		t.Errorf("MountpointOf(regular file) succeeded")
	}
	if _, err := MountpointOf(file + ".missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("MountpointOf(missing) = %v, want ErrNotExist", err)
	}
}

func TestMountpointOfSkipsCoveredMounts(t *testing.T) {
	mnt := testpool.New(t, testpool.Ext4, poolSize)
	dev := testpool.DeviceOf(t, mnt)
	bind := t.TempDir()
	mountT(t, "--bind", mnt, bind)
	mountT(t, "-t", "tmpfs", "tmpfs", mnt)

	got, err := MountpointOf(dev)
	if err != nil {
		t.Fatal(err)
	}
	if got != bind {
		t.Errorf("MountpointOf with %s covered = %q, want the bind mount %s", mnt, got, bind)
	}

	mountT(t, "-t", "tmpfs", "tmpfs", bind)
	if got, err := MountpointOf(dev); err == nil {
		t.Errorf("MountpointOf with every mount covered = %q, want an error", got)
	}
}

// mountT runs mount with args, the last being the target, and unmounts the
// target at cleanup.
func mountT(t *testing.T, args ...string) {
	t.Helper()
	target := args[len(args)-1]
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Fatalf("mount %v: %v\n%s", args, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", target).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", target, err, out)
		}
	})
}
