//go:build linux

package loopdev

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// testMarker is part of every backing file name these tests create, so
// TestMain can spot leaked devices without confusing them with devices that
// other processes (or another run of this package) have attached.
var testMarker = fmt.Sprintf("tarn-loopdev-test-%d-", os.Getpid())

func TestMain(m *testing.M) {
	code := m.Run()
	if os.Geteuid() == 0 {
		devices, err := Manager{}.List()
		if err != nil {
			fmt.Fprintf(os.Stderr, "leak check: %v\n", err)
			code = 1
		}
		for _, d := range devices {
			if !strings.Contains(d.BackingFile, testMarker) {
				continue
			}
			fmt.Fprintf(os.Stderr, "leak check: %s still attached to %s\n", d.Path, d.BackingFile)
			_ = Manager{}.Detach(d.Path)
			code = 1
		}
	}
	os.Exit(code)
}

func requireLoopDevices(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach loop devices")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop support: %v", err)
	}
}

// newBackingFile creates a sparse file of the given size.
func newBackingFile(t *testing.T, size int64) string {
	t.Helper()
	return newBackingFileIn(t, t.TempDir(), size)
}

func newBackingFileIn(t *testing.T, dir string, size int64) string {
	t.Helper()
	f, err := os.CreateTemp(dir, testMarker+"*.img")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// attach registers a Detach for cleanup before checking the error, so no
// device outlives its test even when assertions fail.
func attach(t *testing.T, m Manager, file string, opts Options) Device {
	t.Helper()
	d, err := m.Attach(file, opts)
	if err != nil {
		t.Fatalf("Attach(%s, %+v): %v", file, opts, err)
	}
	t.Cleanup(func() {
		if err := m.Detach(d.Path); err != nil {
			t.Errorf("cleanup: Detach(%s): %v", d.Path, err)
		}
	})
	return d
}

func openDevice(t *testing.T, path string, flags int) int {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return fd
}

func deviceSize(t *testing.T, path string) uint64 {
	t.Helper()
	fd := openDevice(t, path, unix.O_RDONLY)
	defer unix.Close(fd)
	size, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
	if err != nil {
		t.Fatalf("BLKGETSIZE64 %s: %v", path, err)
	}
	return size
}

func deviceReadOnly(t *testing.T, path string) bool {
	t.Helper()
	fd := openDevice(t, path, unix.O_RDONLY)
	defer unix.Close(fd)
	ro, err := unix.IoctlGetInt(fd, unix.BLKROGET)
	if err != nil {
		t.Fatalf("BLKROGET %s: %v", path, err)
	}
	return ro != 0
}

// findOne asserts that exactly want is bound to file.
func findOne(t *testing.T, m Manager, file string, want Device) Device {
	t.Helper()
	found, err := m.FindByBackingFile(file)
	if err != nil {
		t.Fatalf("FindByBackingFile(%s): %v", file, err)
	}
	if len(found) != 1 || found[0].Path != want.Path || found[0].Number != want.Number {
		t.Fatalf("FindByBackingFile(%s) = %+v, want just %s", file, found, want.Path)
	}
	return found[0]
}

func requireDetached(t *testing.T, file string, d Device) {
	t.Helper()
	found, err := Manager{}.FindByBackingFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 0 {
		t.Errorf("FindByBackingFile(%s) after Detach = %+v, want none", file, found)
	}
	if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(d.Path), "loop")); !os.IsNotExist(err) {
		t.Errorf("%s still bound according to sysfs (stat err %v)", d.Path, err)
	}
}

const mib = 1 << 20

// ramfsDir mounts a ramfs, which cannot do direct I/O at all, so the
// fallback to buffered I/O is exercised whatever t.TempDir() is on. The
// unmount is registered first so that it runs after the test's Detach.
func ramfsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("ramfs", dir, "ramfs", 0, "mode=0700"); err != nil {
		t.Skipf("cannot mount ramfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			_ = unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

func TestAttachOptions(t *testing.T) {
	requireLoopDevices(t)
	tests := []struct {
		name   string
		legacy bool
		ramfs  bool
		opts   Options
		// wantDirectIO is only asserted where the outcome is certain; on
		// t.TempDir() it depends on the filesystem, so it is just logged.
		wantDirectIO *bool
	}{
		{name: "buffered"},
		{name: "read-only", opts: Options{ReadOnly: true}},
		{name: "direct-io", opts: Options{DirectIO: true}},
		{name: "read-only direct-io", opts: Options{ReadOnly: true, DirectIO: true}},
		{name: "legacy buffered", legacy: true},
		{name: "legacy read-only", legacy: true, opts: Options{ReadOnly: true}},
		{name: "legacy direct-io", legacy: true, opts: Options{DirectIO: true}},
		{name: "direct-io refused", ramfs: true, opts: Options{DirectIO: true}, wantDirectIO: new(false)},
		{name: "legacy direct-io refused", legacy: true, ramfs: true, opts: Options{DirectIO: true}, wantDirectIO: new(false)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.ramfs {
				dir = ramfsDir(t)
			}
			file := newBackingFileIn(t, dir, 64*mib)
			m := Manager{legacyOnly: tc.legacy}
			d := attach(t, m, file, tc.opts)
			t.Logf("attached %s to %s, direct I/O requested=%v got=%v", d.Path, file, tc.opts.DirectIO, d.DirectIO)

			if d.BackingFile != file || d.Deleted {
				t.Errorf("Device = %+v, want BackingFile %s and not deleted", d, file)
			}
			if n, ok := loopNumber(d.Path); !ok || n != d.Number {
				t.Errorf("Path %s does not match Number %d", d.Path, d.Number)
			}
			if got := deviceSize(t, d.Path); got != 64*mib {
				t.Errorf("device size = %d, want %d", got, 64*mib)
			}
			if got := deviceReadOnly(t, d.Path); got != tc.opts.ReadOnly {
				t.Errorf("device read-only = %v, want %v", got, tc.opts.ReadOnly)
			}
			if !tc.opts.DirectIO && d.DirectIO {
				t.Error("direct I/O enabled without being requested")
			}
			if tc.wantDirectIO != nil && d.DirectIO != *tc.wantDirectIO {
				t.Errorf("DirectIO = %v, want %v", d.DirectIO, *tc.wantDirectIO)
			}

			// A fresh Manager has nothing but the kernel to go on, like a
			// restarted driver.
			got := findOne(t, Manager{}, file, d)
			if got.DirectIO != d.DirectIO || got.BackingFile != d.BackingFile {
				t.Errorf("FindByBackingFile = %+v, Attach returned %+v", got, d)
			}

			fd := openDevice(t, d.Path, unix.O_RDONLY)
			defer unix.Close(fd)
			info, err := unix.IoctlLoopGetStatus64(fd)
			if err != nil {
				t.Fatal(err)
			}
			want := file
			if len(want) > 63 {
				want = want[:63]
			}
			if name := strings.TrimRight(string(info.File_name[:]), "\x00"); name != want {
				t.Errorf("lo_file_name = %q, want %q", name, want)
			}
		})
	}
}

func TestAttachErrors(t *testing.T) {
	requireLoopDevices(t)
	dir := filepath.Join(t.TempDir(), testMarker+"dir")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		file string
		opts Options
	}{
		{name: "missing file", file: filepath.Join(dir, "missing.img")},
		{name: "directory read-write", file: dir},
		{name: "directory read-only", file: dir, opts: Options{ReadOnly: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Manager{}.Attach(tc.file, tc.opts)
			if err == nil {
				_ = Manager{}.Detach(d.Path)
				t.Fatalf("Attach(%s) succeeded with %s", tc.file, d.Path)
			}
			if !strings.Contains(err.Error(), tc.file) {
				t.Errorf("error %q does not name the backing file", err)
			}
			t.Logf("error: %v", err)
		})
	}
}

func TestWriteThroughDevice(t *testing.T) {
	requireLoopDevices(t)
	file := newBackingFile(t, 16*mib)
	d := attach(t, Manager{}, file, Options{})

	payload := []byte(strings.Repeat("tarn loop device round trip\n", 200))
	const offset = 3 * mib
	fd := openDevice(t, d.Path, unix.O_RDWR)
	defer unix.Close(fd)
	if _, err := unix.Pwrite(fd, payload, offset); err != nil {
		t.Fatalf("write %s: %v", d.Path, err)
	}
	// Push the device's page cache down into the backing file.
	if err := unix.Fsync(fd); err != nil {
		t.Fatalf("fsync %s: %v", d.Path, err)
	}

	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(payload))
	if _, err := f.ReadAt(got, offset); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(payload) {
		t.Errorf("backing file at %d = %q..., want %q...", offset, got[:32], payload[:32])
	}
}

func TestRefreshSize(t *testing.T) {
	requireLoopDevices(t)
	file := newBackingFile(t, 32*mib)
	d := attach(t, Manager{}, file, Options{})

	if err := os.Truncate(file, 48*mib); err != nil {
		t.Fatal(err)
	}
	if got := deviceSize(t, d.Path); got != 32*mib {
		t.Fatalf("size before RefreshSize = %d, want the old %d", got, 32*mib)
	}
	if err := (Manager{}).RefreshSize(d.Path); err != nil {
		t.Fatal(err)
	}
	if got := deviceSize(t, d.Path); got != 48*mib {
		t.Errorf("size after RefreshSize = %d, want %d", got, 48*mib)
	}
}

func TestBlockSizeIsKept(t *testing.T) {
	requireLoopDevices(t)
	for _, legacy := range []bool{false, true} {
		for _, directIO := range []bool{false, true} {
			file := newBackingFile(t, 8*mib)
			d := attach(t, Manager{legacyOnly: legacy}, file, Options{BlockSize: 4096, DirectIO: directIO})
			fd := openDevice(t, d.Path, unix.O_RDONLY)
			got, err := unix.IoctlGetInt(fd, unix.BLKSSZGET)
			unix.Close(fd)
			if err != nil {
				t.Fatal(err)
			}
			if got != 4096 {
				t.Errorf("legacy=%v directIO=%v: logical block size %d, want 4096", legacy, directIO, got)
			}
		}
	}
}
