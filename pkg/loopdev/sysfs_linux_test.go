//go:build linux

package loopdev

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

type fakeLoop struct {
	name    string // directory under block/
	backing string // "" means unbound (no loop/ directory)
	dio     string
}

// fakeSysfs builds a sysfs tree with the same shape the kernel exposes, so
// enumeration can be tested without root or loop devices.
func fakeSysfs(t *testing.T, loops []fakeLoop) string {
	t.Helper()
	root := t.TempDir()
	for _, l := range loops {
		dir := filepath.Join(root, "block", l.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if l.backing == "" {
			continue
		}
		if err := os.MkdirAll(filepath.Join(dir, "loop"), 0o755); err != nil {
			t.Fatal(err)
		}
		write := func(name, content string) {
			if err := os.WriteFile(filepath.Join(dir, "loop", name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		write("backing_file", l.backing+"\n")
		write("dio", l.dio+"\n")
	}
	return root
}

func TestListFakeSysfs(t *testing.T) {
	tests := []struct {
		name  string
		loops []fakeLoop
		want  []Device
	}{
		{name: "no loop devices", want: []Device{}},
		{
			name:  "unbound devices are skipped",
			loops: []fakeLoop{{name: "loop0"}, {name: "loop1"}},
			want:  []Device{},
		},
		{
			name: "bound, deleted, direct I/O, sorted numerically",
			loops: []fakeLoop{
				{name: "loop10", backing: "/data/b.img", dio: "1"},
				{name: "loop2", backing: "/data/a.img (deleted)", dio: "0"},
				{name: "loop3"},
				{name: "sda", backing: "/not/a/loop"},
			},
			want: []Device{
				{Path: "/fakedev/loop2", Number: 2, BackingFile: "/data/a.img (deleted)", Deleted: true},
				{Path: "/fakedev/loop10", Number: 10, BackingFile: "/data/b.img", DirectIO: true},
			},
		},
		{
			name:  "path containing spaces",
			loops: []fakeLoop{{name: "loop0", backing: "/data/my vol.img", dio: "0"}},
			want:  []Device{{Path: "/fakedev/loop0", Number: 0, BackingFile: "/data/my vol.img"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := Manager{SysfsRoot: fakeSysfs(t, tc.loops), DevRoot: "/fakedev"}
			got, err := m.List()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("List() =\n  %+v\nwant\n  %+v", got, tc.want)
			}
		})
	}
}

// When the backing file is gone there is no inode to compare, so the path
// recorded by the kernel is the only evidence left.
func TestFindByBackingFileMissingFile(t *testing.T) {
	sys := fakeSysfs(t, []fakeLoop{
		{name: "loop0", backing: "/gone/vol-a.img (deleted)", dio: "0"},
		{name: "loop1", backing: "/gone/vol-b.img", dio: "0"},
		{name: "loop2", backing: "/gone/vol-a.img.bak (deleted)", dio: "0"},
	})
	m := Manager{SysfsRoot: sys, DevRoot: "/fakedev"}
	tests := []struct {
		path string
		want []int
	}{
		{"/gone/vol-a.img", []int{0}},
		{"/gone/../gone/vol-b.img", []int{1}},
		{"/gone/vol-c.img", nil},
		{"/gone/vol-a.img/under-a-file", nil},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			got, err := m.FindByBackingFile(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Fatal("FindByBackingFile returned a nil slice")
			}
			var nums []int
			for _, d := range got {
				nums = append(nums, d.Number)
			}
			if !reflect.DeepEqual(nums, tc.want) {
				t.Errorf("FindByBackingFile(%q) numbers = %v, want %v", tc.path, nums, tc.want)
			}
		})
	}
}

func TestFindByBackingFileNonexistentRealSysfs(t *testing.T) {
	got, err := Manager{}.FindByBackingFile(filepath.Join(t.TempDir(), "does-not-exist.img"))
	if err != nil {
		t.Fatal(err)
	}
	if got == nil || len(got) != 0 {
		t.Errorf("FindByBackingFile = %#v, want empty non-nil slice", got)
	}
}
