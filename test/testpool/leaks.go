package testpool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/moby/sys/mountinfo"
)

// LoopDevicesAndMounts returns the attached loop devices (those with a
// /sys/block/loop*/loop/backing_file) and the mountpoints of this process's
// mount namespace, both sorted. A mountpoint appears once per mount stacked
// on it.
func LoopDevicesAndMounts() (loops []string, mounts []string, err error) {
	backing, err := loopBackingFiles()
	if err != nil {
		return nil, nil, err
	}
	for dev := range backing {
		loops = append(loops, dev)
	}
	sort.Strings(loops)
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	for _, m := range infos {
		mounts = append(mounts, m.Mountpoint)
	}
	sort.Strings(mounts)
	return loops, mounts, nil
}

// State is what Snapshot saw: loop devices with their backing files, and
// mountpoints with how many mounts are stacked on each.
type State struct {
	Loops  map[string]string
	Mounts map[string]int
}

// Snapshot records the current loop devices and mounts for a later
// AssertNoLeaks. Take it in a test that does not run in parallel with other
// tests of the same binary, or their pools will show up as leaks.
func Snapshot(t testing.TB) State {
	t.Helper()
	s, err := CurrentState()
	if err != nil {
		t.Fatalf("testpool: snapshot: %v", err)
	}
	return s
}

// AssertNoLeaks fails the test if a loop device or a mount of this process
// exists now that did not exist in before. Call it after the cleanups that
// should have removed everything, e.g. from an outer t.Cleanup registered
// before the pools were made. For a whole test binary use RunWithLeakCheck.
//
// Only what this process made counts: loop devices and mounts whose path
// (backing file or mountpoint) carries this process's marker. Pools from New
// and NewLoop always do, and under RunWithLeakCheck so does everything in
// t.TempDir. That way loop devices and mounts of other test binaries, which
// go test runs at the same time, are never taken for leaks.
func AssertNoLeaks(t testing.TB, before State) {
	t.Helper()
	now, err := CurrentState()
	if err != nil {
		t.Fatalf("testpool: checking for leaks: %v", err)
	}
	for _, leak := range Diff(before, now) {
		t.Errorf("testpool: leaked %s", leak)
	}
}

// RunWithLeakCheck runs the tests of m and then fails the binary if any loop
// device or mount it made is left. Use it as the body of TestMain:
// os.Exit(testpool.RunWithLeakCheck(m)). It points TMPDIR at a directory
// carrying this process's marker for the duration, so that whatever the
// tests attach or mount under t.TempDir is checked too.
func RunWithLeakCheck(m *testing.M) int {
	before, err := CurrentState()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testpool: snapshot: %v\n", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", marker("tmp-"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "testpool: %v\n", err)
		return 1
	}
	oldTmp, hadTmp := os.LookupEnv("TMPDIR")
	if err := os.Setenv("TMPDIR", tmp); err != nil {
		fmt.Fprintf(os.Stderr, "testpool: %v\n", err)
		return 1
	}
	code := m.Run()
	if hadTmp {
		_ = os.Setenv("TMPDIR", oldTmp)
	} else {
		_ = os.Unsetenv("TMPDIR")
	}

	now, err := CurrentState()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testpool: checking for leaks: %v\n", err)
		return 1
	}
	leaks := Diff(before, now)
	for _, leak := range leaks {
		fmt.Fprintf(os.Stderr, "testpool: leaked %s\n", leak)
	}
	if len(leaks) > 0 {
		// Removing the directory could reach into a leaked mount.
		fmt.Fprintf(os.Stderr, "testpool: left %s in place\n", tmp)
		return 1
	}
	if err := os.RemoveAll(tmp); err != nil {
		fmt.Fprintf(os.Stderr, "testpool: %v\n", err)
	}
	return code
}

// Diff lists the loop devices and mounts of this process that are in now but
// not in before; see AssertNoLeaks for which count as this process's.
func Diff(before, now State) []string {
	var leaks []string
	for dev, file := range now.Loops {
		if old, ok := before.Loops[dev]; (ok && old == file) || !ours(file) {
			continue
		}
		leaks = append(leaks, fmt.Sprintf("loop device %s (backing file %s)", dev, file))
	}
	for mp, n := range now.Mounts {
		if n <= before.Mounts[mp] || !ours(mp) {
			continue
		}
		leaks = append(leaks, fmt.Sprintf("mount on %s (%d new)", mp, n-before.Mounts[mp]))
	}
	sort.Strings(leaks)
	return leaks
}

// CurrentState returns the loop devices and mounts that exist now.
func CurrentState() (State, error) {
	loops, err := loopBackingFiles()
	if err != nil {
		return State{}, err
	}
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return State{}, fmt.Errorf("reading mountinfo: %w", err)
	}
	mounts := make(map[string]int, len(infos))
	for _, m := range infos {
		mounts[m.Mountpoint]++
	}
	return State{Loops: loops, Mounts: mounts}, nil
}

// loopBackingFiles maps /dev/loopN to its backing file for every attached
// loop device.
func loopBackingFiles() (map[string]string, error) {
	paths, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, fmt.Errorf("listing loop devices: %w", err)
	}
	loops := make(map[string]string, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENXIO) {
			// Detached between the glob and the read.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", p, err)
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(p)))
		loops["/dev/"+name] = strings.TrimSpace(string(b))
	}
	return loops, nil
}

// ours reports whether path lies in something this process made: a pool, or
// a temp dir under RunWithLeakCheck.
func ours(path string) bool {
	return strings.Contains(path, marker(""))
}
