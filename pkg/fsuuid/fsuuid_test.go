package fsuuid

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tarn-csi/tarn/pkg/freeze"
	"github.com/tarn-csi/tarn/test/testpool"
)

func TestMain(m *testing.M) { os.Exit(testpool.RunWithLeakCheck(m)) }

func mkfsImage(t *testing.T, fsType string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320<<20); err != nil {
		t.Fatal(err)
	}
	args := map[string][]string{"ext4": {"mkfs.ext4", "-q", "-F", img}, "xfs": {"mkfs.xfs", "-q", "-f", img}}[fsType]
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v %s", args, err, out)
	}
	return img
}

func TestRegenerateChangesUUID(t *testing.T) {
	ctx := context.Background()
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			img := mkfsImage(t, fs)
			before, _ := uuidOf(ctx, img)
			if err := (Tool{BlockSize: 4096}).Regenerate(ctx, img); err != nil {
				t.Fatal(err)
			}
			after, _ := uuidOf(ctx, img)
			if before == "" || before == after {
				t.Errorf("UUID %q -> %q", before, after)
			}
		})
	}
}

func TestRegenerateLeavesNonFilesystemsAlone(t *testing.T) {
	img := filepath.Join(t.TempDir(), "raw.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := (Tool{}).Regenerate(context.Background(), img); err != nil {
		t.Fatalf("raw data: %v", err)
	}
}

// A copy of a frozen XFS has a log to replay, which makes xfs_admin decline
// (exiting 0); Regenerate must still deliver a new UUID.
func TestRegenerateFrozenXFSCopy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	ctx := context.Background()
	mnt := testpool.New(t, testpool.XFSReflink, 512<<20)
	device := testpool.DeviceOf(t, mnt)
	if err := os.WriteFile(filepath.Join(mnt, "data"), []byte("payload"), 0o600); err != nil {
		t.Fatal(err)
	}
	origin, _ := uuidOf(ctx, device)
	copyPath := filepath.Join(t.TempDir(), "copy.img")
	_, err := freeze.WhileQuiesced(ctx, device, 30e9, func() error {
		return exec.Command("cp", "--sparse=always", device, copyPath).Run()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := (Tool{BlockSize: 512}).Regenerate(ctx, copyPath); err != nil {
		t.Fatal(err)
	}
	if got, _ := uuidOf(ctx, copyPath); got == origin || got == "" {
		t.Errorf("copy UUID %q, origin %q", got, origin)
	}
}

// The magic check must let every ext4 and XFS through (blkid decides then)
// and may only rule out what cannot be either.
func TestMayHoldExtOrXFS(t *testing.T) {
	withMagic := func(off int, magic []byte, size int) []byte {
		b := make([]byte, size)
		copy(b[off:], magic)
		return b
	}
	tests := []struct {
		name string
		data []byte
		want bool
	}{
		{"empty", nil, false},
		{"zeros", make([]byte, 1<<20), false},
		{"xfs magic", withMagic(0, []byte("XFSB"), 4096), true},
		{"ext magic", withMagic(1080, []byte{0x53, 0xef}, 4096), true},
		{"ext magic byte-swapped", withMagic(1080, []byte{0xef, 0x53}, 4096), false},
		{"ext magic cut short", withMagic(1080, []byte{0x53}, 1081), false},
		{"xfs magic elsewhere", withMagic(512, []byte("XFSB"), 4096), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "img")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if got, err := mayHoldExtOrXFS(path); err != nil || got != tc.want {
				t.Errorf("mayHoldExtOrXFS = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	for _, fs := range []string{"ext4", "xfs"} {
		if got, err := mayHoldExtOrXFS(mkfsImage(t, fs)); err != nil || !got {
			t.Errorf("a real %s image: mayHoldExtOrXFS = %v, %v; want true", fs, got, err)
		}
	}
	if _, err := mayHoldExtOrXFS(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing file gave no error")
	}
}
