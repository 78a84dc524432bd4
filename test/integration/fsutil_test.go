package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/test/testpool"
)

// runCmd runs a tool with messages in English and returns what it said.
func runCmd(argv ...string) ([]byte, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd.CombinedOutput()
}

// writeRandomFile writes size random bytes to path, without fsync: the
// driver is what must get them to disk (a freeze syncs, an unmount
// syncs). It returns their SHA-256.
func writeRandomFile(t *testing.T, path string, size int64) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		f.Close()
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkFiles compares the files under root with the checksums in want,
// keyed by path relative to root.
func checkFiles(t *testing.T, root string, want map[string]string) {
	t.Helper()
	for rel, sum := range want {
		if got := fileSHA256(t, filepath.Join(root, rel)); got != sum {
			t.Errorf("%s: sha256 %s, want %s", rel, got, sum)
		}
	}
}

// loopDevicesUnder maps each attached loop device whose backing file lies
// under dir to that file, as the kernel reports it in sysfs.
func loopDevicesUnder(t *testing.T, dir string) map[string]string {
	t.Helper()
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	state, err := testpool.CurrentState()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for dev, file := range state.Loops {
		if strings.HasPrefix(file, dir+"/") {
			out[dev] = file
		}
	}
	return out
}

// loopDeviceOf returns the loop device attached to file, failing the test
// unless there is exactly one.
func loopDeviceOf(t *testing.T, file string) string {
	t.Helper()
	if r, err := filepath.EvalSymlinks(file); err == nil {
		file = r
	}
	var found []string
	for dev, backing := range loopDevicesUnder(t, filepath.Dir(file)) {
		if backing == file {
			found = append(found, dev)
		}
	}
	if len(found) != 1 {
		t.Fatalf("loop devices backed by %s: %v, want exactly one", file, found)
	}
	return found[0]
}

// fsck checks the unmounted filesystem on device without changing it and
// fails the test unless the filesystem's own checker finds it clean and,
// for ext4, its journal has nothing to replay.
func fsck(t *testing.T, device, fsType string) {
	t.Helper()
	var argv []string
	switch fsType {
	case "ext4":
		argv = []string{"e2fsck", "-f", "-n", device}
	case "xfs":
		argv = []string{"xfs_repair", "-n", device}
	default:
		t.Fatalf("no checker for %q", fsType)
	}
	if out, err := runCmd(argv...); err != nil {
		t.Errorf("%s: %v: the filesystem is damaged or unreadable on this device\n%s", strings.Join(argv, " "), err, out)
	}
	if fsType != "ext4" {
		return
	}
	// e2fsck -n only warns about a journal it may not replay, yet a
	// journal to replay is what an image taken from a filesystem in use
	// has, and what a freeze or an unmount leaves behind never has.
	out, err := runCmd("dumpe2fs", "-h", device)
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v\n%s", device, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Filesystem features:") && strings.Contains(line, "needs_recovery") {
			t.Errorf("ext4 on %s needs journal recovery: it was captured in use, not frozen or unmounted", device)
		}
	}
}

// blockSize returns BLKGETSIZE64 of a block device or of a file a block
// device is bound onto.
func blockSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		t.Fatalf("BLKGETSIZE64 %s: %v", path, err)
	}
	return int64(size)
}

// writeAt writes data at off in path and syncs it.
func writeAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write %s at %d: %v", path, off, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
}

// checkAt fails the test unless path holds data at off.
func checkAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("%s at %d: %d bytes differ from what was written", path, off, len(data))
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// hasCapability says whether capability c is in this process's effective
// set.
func hasCapability(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}
