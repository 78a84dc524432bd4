//go:build linux

package loopdev

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDetach(t *testing.T) {
	requireLoopDevices(t)
	file := newBackingFile(t, 8*mib)
	m := Manager{}
	d := attach(t, m, file, Options{})

	for i := range 2 {
		if err := m.Detach(d.Path); err != nil {
			t.Fatalf("Detach #%d: %v", i+1, err)
		}
	}
	requireDetached(t, file, d)

	list, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list {
		if l.BackingFile == file {
			t.Errorf("List still shows %+v", l)
		}
	}
}

func TestDetachNotAttached(t *testing.T) {
	requireLoopDevices(t)
	tests := []struct {
		name    string
		path    string
		wantErr bool
	}{
		// Far beyond any allocated number, and neither node nor sysfs entry
		// exists: nothing to detach.
		{name: "unknown number", path: filepath.Join(t.TempDir(), "loop1048000")},
		{name: "not a loop name", path: filepath.Join(t.TempDir(), "sdz"), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Manager{}.Detach(tc.path)
			if (err != nil) != tc.wantErr {
				t.Errorf("Detach(%s) = %v, want error %v", tc.path, err, tc.wantErr)
			}
		})
	}
}

// An open device stands in for a mounted filesystem: the kernel refuses or
// defers the unbind, and Detach must say so with EBUSY.
func TestDetachBusy(t *testing.T) {
	requireLoopDevices(t)
	file := newBackingFile(t, 8*mib)
	m := Manager{}
	d := attach(t, m, file, Options{})

	holder := openDevice(t, d.Path, unix.O_RDONLY)
	err := m.Detach(d.Path)
	if !errors.Is(err, unix.EBUSY) {
		unix.Close(holder)
		t.Fatalf("Detach of an open device = %v, want EBUSY", err)
	}
	t.Logf("busy detach: %v", err)
	unix.Close(holder)

	// Kernels that set autoclear unbind on that close; older ones need the
	// retry. Either way a second Detach must succeed and leave nothing.
	if err := m.Detach(d.Path); err != nil {
		t.Fatalf("Detach after release: %v", err)
	}
	requireDetached(t, file, d)
}

func TestDeletedBackingFile(t *testing.T) {
	requireLoopDevices(t)
	file := newBackingFile(t, 8*mib)
	m := Manager{}
	d := attach(t, m, file, Options{})

	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	got := findOne(t, Manager{}, file, d)
	if !got.Deleted || got.BackingFile != file+deletedSuffix {
		t.Errorf("FindByBackingFile after unlink = %+v, want Deleted with %q", got, file+deletedSuffix)
	}

	list, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, l := range list {
		if l.Number == d.Number {
			listed = true
			if !l.Deleted {
				t.Errorf("List entry %+v not marked Deleted", l)
			}
		}
	}
	if !listed {
		t.Errorf("List() = %+v does not include %s", list, d.Path)
	}

	// A new file at the old path is a different inode and must not be
	// mistaken for the deleted one.
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	found, err := m.FindByBackingFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 0 {
		t.Errorf("FindByBackingFile(new file at old path) = %+v, want none", found)
	}
}

func TestFindByBackingFileThroughSymlink(t *testing.T) {
	requireLoopDevices(t)
	file := newBackingFile(t, 8*mib)
	d := attach(t, Manager{}, file, Options{})

	link := filepath.Join(t.TempDir(), "link.img")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	findOne(t, Manager{}, link, d)
}

func TestConcurrentAttach(t *testing.T) {
	requireLoopDevices(t)
	const n = 4
	m := Manager{}
	files := make([]string, n)
	for i := range files {
		files[i] = newBackingFile(t, 8*mib)
	}

	devices := make([]Device, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { devices[i], errs[i] = m.Attach(files[i], Options{}) })
	}
	wg.Wait()

	seen := map[string]bool{}
	for i, d := range devices {
		if errs[i] != nil {
			t.Errorf("Attach(%s): %v", files[i], errs[i])
			continue
		}
		t.Cleanup(func() {
			if err := m.Detach(d.Path); err != nil {
				t.Errorf("cleanup: Detach(%s): %v", d.Path, err)
			}
		})
		if seen[d.Path] {
			t.Errorf("%s handed out twice", d.Path)
		}
		seen[d.Path] = true
	}
	if t.Failed() {
		return
	}
	for i, d := range devices {
		findOne(t, m, files[i], d)
	}
}

// Reproduces a kind node: /dev was populated before the loop devices existed,
// so Attach has to create loop-control and loopN itself.
func TestAttachCreatesMissingNodes(t *testing.T) {
	requireLoopDevices(t)
	devRoot := t.TempDir()
	probe := filepath.Join(devRoot, "probe")
	if err := unix.Mknod(probe, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("cannot create device nodes in %s: %v", devRoot, err)
	}
	if f, err := os.Open(probe); err != nil {
		t.Skipf("device nodes unusable in %s (nodev?): %v", devRoot, err)
	} else {
		f.Close()
	}

	file := newBackingFile(t, 8*mib)
	m := Manager{DevRoot: devRoot}
	d := attach(t, m, file, Options{})
	if !strings.HasPrefix(d.Path, devRoot+"/") {
		t.Fatalf("device path %s not under DevRoot %s", d.Path, devRoot)
	}
	for _, node := range []string{"loop-control", filepath.Base(d.Path)} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(devRoot, node), &st); err != nil {
			t.Fatalf("%s not created: %v", node, err)
		}
		if perm := st.Mode & 0o7777; perm != 0o660 {
			t.Errorf("%s mode = %o, want 660", node, perm)
		}
	}
	if got := deviceSize(t, d.Path); got != 8*mib {
		t.Errorf("size through created node = %d, want %d", got, 8*mib)
	}
	findOne(t, Manager{}, file, Device{Path: "/dev/" + filepath.Base(d.Path), Number: d.Number})

	// Detach must also cope with the node vanishing, as when /dev is
	// recreated under a running driver.
	if err := os.Remove(d.Path); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(d.Path); err != nil {
		t.Fatalf("Detach without node: %v", err)
	}
	requireDetached(t, file, d)
}
