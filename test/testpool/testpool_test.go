package testpool

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

const poolSize = 512 << 20

func TestNewMountsEachKind(t *testing.T) {
	before := Snapshot(t)
	for _, tc := range []struct {
		kind   Kind
		fsType string
	}{
		{XFSReflink, "xfs"},
		{Ext4, "ext4"},
		{Btrfs, "btrfs"},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			mnt := New(t, tc.kind, poolSize)
			mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mnt))
			if err != nil {
				t.Fatal(err)
			}
			if len(mounts) != 1 || mounts[0].FSType != tc.fsType {
				t.Fatalf("mounts at %s = %+v, want one %s", mnt, mounts, tc.fsType)
			}
			if dev := DeviceOf(t, mnt); !strings.HasPrefix(dev, "/dev/loop") {
				t.Errorf("DeviceOf(%s) = %q, want a loop device", mnt, dev)
			}
			if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("hello"), 0o644); err != nil {
				t.Fatal(err)
			}
			loops, mps, err := LoopDevicesAndMounts()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(loops, DeviceOf(t, mnt)) || !slices.Contains(mps, mnt) {
				t.Errorf("LoopDevicesAndMounts() = %v, %v; want %s and %s among them", loops, mps, DeviceOf(t, mnt), mnt)
			}
		})
	}
	// Subtests have run their cleanups by now, so the pools must be gone.
	AssertNoLeaks(t, before)
}

func TestDiffSeesOnlyThisProcess(t *testing.T) {
	before := Snapshot(t)
	loop := NewLoop(t, 1<<20)
	leaks := Diff(before, Snapshot(t))
	if len(leaks) != 1 || !strings.Contains(leaks[0], loop) {
		t.Errorf("Diff after NewLoop = %q, want just %s", leaks, loop)
	}

	other := fmt.Sprintf("/tmp/T/001/%s%d-mnt", markerPrefix, os.Getpid()+1)
	mine := "/tmp/T/002/" + marker("mnt")
	synthetic := State{
		Loops: map[string]string{
			"/dev/loop98": other + ".img",
			"/dev/loop99": "/var/lib/elsewhere.img",
		},
		Mounts: map[string]int{other: 1, other + "/nested": 1, "/mnt/elsewhere": 1, mine: 2},
	}
	got := Diff(State{Mounts: map[string]int{mine: 1}}, synthetic)
	want := []string{fmt.Sprintf("mount on %s (1 new)", mine)}
	if !slices.Equal(got, want) {
		t.Errorf("Diff = %q, want %q", got, want)
	}
}

// Under RunWithLeakCheck, which TestMain uses, temp dirs carry the marker.
func TestTempDirsAreMarked(t *testing.T) {
	if dir := t.TempDir(); !ours(dir) {
		t.Errorf("t.TempDir() = %s, want it marked as this process's", dir)
	}
}

func TestFiemapLayoutMatchesKernel(t *testing.T) {
	if s := unsafe.Sizeof(fiemapExtent{}); s != 56 {
		t.Errorf("sizeof(fiemap_extent) = %d, want 56", s)
	}
	if o := unsafe.Offsetof(fiemapReq{}.extents); o != 32 {
		t.Errorf("offsetof(fiemap.fm_extents) = %d, want 32", o)
	}
}

func TestSharedExtents(t *testing.T) {
	mnt := New(t, XFSReflink, poolSize)
	src := filepath.Join(mnt, "src")
	if err := os.WriteFile(src, []byte(strings.Repeat("x", 1<<20)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		reflnk string
		want   bool
	}{
		{"reflink copy", "always", true},
		{"full copy", "never", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(mnt, "cp-"+tc.reflnk)
			if out, err := exec.Command("cp", "--reflink="+tc.reflnk, src, dst).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v\n%s", err, out)
			}
			assertShared(t, dst, tc.want)
		})
	}

	t.Run("empty file", func(t *testing.T) {
		p := filepath.Join(mnt, "empty")
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		assertShared(t, p, false)
	})

	// Only the last of many extents is shared, so the answer needs more than
	// one FIEMAP batch.
	t.Run("shared extent past the first batch", func(t *testing.T) {
		p := filepath.Join(mnt, "many")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		block := []byte(strings.Repeat("y", 4096))
		const extents = 3 * fiemapBatch
		for i := 0; i < extents; i++ {
			if _, err := f.WriteAt(block, int64(i)*2*4096); err != nil {
				t.Fatal(err)
			}
		}
		assertShared(t, p, false)
		s, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		err = unix.IoctlFileCloneRange(int(f.Fd()), &unix.FileCloneRange{
			Src_fd:      int64(s.Fd()),
			Src_length:  4096,
			Dest_offset: uint64(extents) * 2 * 4096,
		})
		if err != nil {
			t.Fatalf("FICLONERANGE: %v", err)
		}
		assertShared(t, p, true)
	})
}

func assertShared(t *testing.T, path string, want bool) {
	t.Helper()
	got, err := SharedExtents(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("SharedExtents(%s) = %v, want %v", path, got, want)
	}
}
