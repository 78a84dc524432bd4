package loopdev

import (
	"strings"
	"testing"
)

func TestLoopNumber(t *testing.T) {
	tests := []struct {
		path   string
		want   int
		wantOK bool
	}{
		{"/dev/loop0", 0, true},
		{"/dev/loop17", 17, true},
		{"/sys/block/loop1048575", 1048575, true},
		{"loop3", 3, true},
		{"/dev/loop", 0, false},
		{"/dev/loop-control", 0, false},
		{"/dev/loop1p1", 0, false},
		{"/dev/sda", 0, false},
		{"/dev/loop-1", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			got, ok := loopNumber(tc.path)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("loopNumber(%q) = %d, %v; want %d, %v", tc.path, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestFileName(t *testing.T) {
	long := "/var/lib/tarn/" + strings.Repeat("x", 100)
	tests := []struct {
		name, path, want string
	}{
		{"empty", "", ""},
		{"short", "/var/lib/tarn/vol.img", "/var/lib/tarn/vol.img"},
		{"exactly 63", long[:63], long[:63]},
		{"truncated", long, long[:63]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := fileName(tc.path)
			if got[len(got)-1] != 0 {
				t.Fatal("lo_file_name is not NUL-terminated")
			}
			if s := strings.TrimRight(string(got[:]), "\x00"); s != tc.want {
				t.Errorf("fileName(%q) = %q, want %q", tc.path, s, tc.want)
			}
		})
	}
}

func TestManagerDefaults(t *testing.T) {
	var m Manager
	if got := m.devicePath(5); got != "/dev/loop5" {
		t.Errorf("devicePath(5) = %q", got)
	}
	if got := m.sysfsDir(5); got != "/sys/block/loop5" {
		t.Errorf("sysfsDir(5) = %q", got)
	}
	m = Manager{SysfsRoot: "/fake/sys", DevRoot: "/fake/dev"}
	if got := m.devicePath(5); got != "/fake/dev/loop5" {
		t.Errorf("devicePath(5) = %q", got)
	}
	if got := m.sysfsDir(5); got != "/fake/sys/block/loop5" {
		t.Errorf("sysfsDir(5) = %q", got)
	}
}
