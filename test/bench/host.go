package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
)

// run executes argv (never through a shell) and returns its combined
// output, so that a failure can show what the tool said.
func run(ctx context.Context, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// Messages are matched ("busy") and shown; they must not be localised.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// attachImage makes a sparse image of size bytes and attaches it to a free
// loop device. Direct I/O keeps the host's page cache from sitting under
// the pool, so the pool behaves like a disk rather than like RAM; kernels
// or host filesystems that refuse it get a buffered device instead.
func attachImage(ctx context.Context, image string, size int64) (device string, err error) {
	f, err := os.OpenFile(image, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	out, err := run(ctx, "losetup", "--find", "--show", "--direct-io=on", image)
	if err != nil {
		out, err = run(ctx, "losetup", "--find", "--show", image)
	}
	if err != nil {
		return "", err
	}
	device = strings.TrimSpace(string(out))
	if !strings.HasPrefix(device, "/dev/loop") {
		return "", fmt.Errorf("losetup printed %q, not a loop device", device)
	}
	return device, nil
}

// unmount retries while the mount is busy: a file just closed or writeback
// finishing can hold it for a moment.
func unmount(ctx context.Context, mnt string) error {
	var err error
	for range 10 {
		if _, err = run(ctx, "umount", mnt); err == nil || !strings.Contains(err.Error(), "busy") {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// leftovers are loop devices and mounts that belong under a directory the
// harness made, read from the kernel rather than from what anyone claims.
type leftovers struct {
	Loops  []string `json:"loop_devices"`
	Mounts []string `json:"mounts"`
}

func (l leftovers) empty() bool { return len(l.Loops) == 0 && len(l.Mounts) == 0 }

func (l leftovers) String() string {
	var parts []string
	for _, d := range l.Loops {
		parts = append(parts, "loop device "+d)
	}
	for _, m := range l.Mounts {
		parts = append(parts, "mount "+m)
	}
	return strings.Join(parts, "; ")
}

// findLeftovers lists loop devices whose backing file is under dir (a
// deleted backing file still counts: the device pins its data) and mounts
// at or under dir, deepest first so that they can be unmounted in order.
func findLeftovers(dir string) (leftovers, error) {
	l := leftovers{Loops: []string{}, Mounts: []string{}}
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return l, err
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // detached since the glob
		}
		if err != nil {
			return l, err
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(data)), " (deleted)")
		if within(backing, dir) {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
			l.Loops = append(l.Loops, dev+" ("+backing+")")
		}
	}
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !within(m.Mountpoint, dir), false
	})
	if err != nil {
		return l, err
	}
	for _, m := range mounts {
		l.Mounts = append(l.Mounts, m.Mountpoint)
	}
	slices.SortFunc(l.Mounts, func(a, b string) int { return len(b) - len(a) })
	slices.Sort(l.Loops)
	return l, nil
}

// forceClean removes leftovers whatever they are, lazily if need be, so
// that a failed run still leaves the machine as it found it.
func forceClean(ctx context.Context, l leftovers) error {
	var errs []error
	for _, m := range l.Mounts {
		if err := unmount(ctx, m); err != nil {
			if _, lerr := run(ctx, "umount", "-l", m); lerr != nil {
				errs = append(errs, err, lerr)
			}
		}
	}
	for _, d := range l.Loops {
		dev, _, _ := strings.Cut(d, " ")
		if _, err := run(ctx, "losetup", "-d", dev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator))
}

// supportsReflink asks coreutils whether dir's filesystem clones files:
// the harness checks the pool itself instead of trusting the driver's
// probe, since a "reflink" pool that copies would make the snapshot
// figures meaningless.
func supportsReflink(ctx context.Context, dir string) bool {
	src := filepath.Join(dir, ".bench-reflink-src")
	dst := filepath.Join(dir, ".bench-reflink-dst")
	defer os.Remove(src)
	defer os.Remove(dst)
	if err := os.WriteFile(src, make([]byte, 4096), 0o600); err != nil {
		return false
	}
	_, err := run(ctx, "cp", "--reflink=always", src, dst)
	return err == nil
}
