package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// leftovers is what the demo may have left on the machine, read from the
// kernel rather than from anything the driver says.
type leftovers struct {
	loops  []string // "/dev/loopN -> backing file"
	mounts []string // mount points
}

func (l leftovers) empty() bool { return len(l.loops) == 0 && len(l.mounts) == 0 }

func (l leftovers) String() string {
	var b strings.Builder
	for _, d := range l.loops {
		fmt.Fprintf(&b, "loop device still attached: %s\n", d)
	}
	for _, m := range l.mounts {
		fmt.Fprintf(&b, "still mounted: %s\n", m)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// hint tells the user how to remove leftovers by hand, innermost first.
func (l leftovers) hint() string {
	var b strings.Builder
	if len(l.mounts) > 0 {
		// A tarn that died mid-snapshot leaves the filesystem frozen, and
		// a frozen filesystem keeps its loop device busy after umount.
		fmt.Fprintf(&b, "  fsfreeze -u %s 2>/dev/null  # in case tarn died with it frozen\n", strconv.Quote(l.mounts[0]))
	}
	for i := len(l.mounts) - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "  umount %s\n", strconv.Quote(l.mounts[i]))
	}
	for _, d := range l.loops {
		dev, _, _ := strings.Cut(d, " ")
		fmt.Fprintf(&b, "  losetup -d %s\n", dev)
	}
	return b.String()
}

// findLeftovers lists loop devices backed by files under dir and mounts at
// or under dir.
func findLeftovers(dir string) (leftovers, error) {
	var l leftovers
	var err error
	if l.loops, err = loopsUnder(dir); err != nil {
		return l, err
	}
	if l.mounts, err = mountsUnder(dir); err != nil {
		return l, err
	}
	return l, nil
}

// loopsUnder reads sysfs, which lists every bound loop device with its
// backing file (suffixed " (deleted)" once the file is unlinked, which
// still counts: the device holds the data until detached).
func loopsUnder(dir string) ([]string, error) {
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var found []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			if os.IsNotExist(err) {
				// Detached between the glob and the read.
				continue
			}
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(data)), " (deleted)")
		if under(backing, dir) {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
			found = append(found, dev+" -> "+strings.TrimSpace(string(data)))
		}
	}
	return found, nil
}

// mountsUnder lists mount points at or under dir.
func mountsUnder(dir string) ([]string, error) {
	all, err := readMountinfo()
	if err != nil {
		return nil, err
	}
	var found []string
	for _, m := range all {
		if under(m.point, dir) {
			found = append(found, m.point)
		}
	}
	return found, nil
}

// mountEntry is one line of mountinfo, reduced to what the demo shows.
type mountEntry struct {
	point, fsType, source string
}

// mountAt returns the mount whose mount point is path, the last one when
// several are stacked since that is the one visible there.
func mountAt(path string) (mountEntry, bool, error) {
	all, err := readMountinfo()
	if err != nil {
		return mountEntry{}, false, err
	}
	var found mountEntry
	ok := false
	for _, m := range all {
		if m.point == path {
			found, ok = m, true
		}
	}
	return found, ok, nil
}

// readMountinfo reads this process's mount table; tarn is a child in the
// same mount namespace, so its mounts are ours.
func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// Fields: id parent major:minor root mountpoint options
		// [optional...] - fstype source superoptions.
		pre, post, found := strings.Cut(sc.Text(), " - ")
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if !found || len(fields) < 5 || len(tail) < 2 {
			continue
		}
		out = append(out, mountEntry{
			point:  unescapeMountPath(fields[4]),
			fsType: tail[0],
			source: unescapeMountPath(tail[1]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMountPath undoes the kernel's octal escaping of space, tab,
// newline and backslash in mountinfo paths.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func under(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}
