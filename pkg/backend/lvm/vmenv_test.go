package lvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// The tests below need a real volume group: the host's kernel may have no
// device-mapper, so they run in a VM whose harness creates a scratch VG and
// names it in TARN_TEST_VG. Without it they skip. The VG must be scratch:
// the tests create and remove LVs and thin pools in it, and New sweeps
// every incomplete Tarn LV it finds there.
const testVGEnv = "TARN_TEST_VG"

// env is one test's slice of the VG: its own thin pool (if any) and objects
// whose CSI names start with a prefix unique to the test, all removed at
// cleanup.
type env struct {
	t      *testing.T
	ctx    context.Context
	vg     string
	pool   string
	prefix string
	client *lvmcmd.Client
	b      *Backend
}

// newEnv opens the backend on the test VG, with a fresh thin pool of
// poolSize bytes when poolSize > 0.
func newEnv(t *testing.T, poolSize int64) *env {
	t.Helper()
	vg := os.Getenv(testVGEnv)
	if vg == "" {
		t.Skipf("%s is not set: these tests need a scratch LVM volume group (run them in the test VM)", testVGEnv)
	}
	safe := regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "_")
	e := &env{t: t, ctx: context.Background(), vg: vg, prefix: t.Name() + "/", client: lvmcmd.NewClient(nil, 0)}
	if poolSize > 0 {
		e.pool = "pool_" + safe
		if len(e.pool) > 60 {
			e.pool = e.pool[:60]
		}
		e.lvm("lvcreate", "--yes", "--type", "thin-pool", "--size", strconv.FormatInt(poolSize, 10)+"b", "--name", e.pool, vg)
		t.Cleanup(func() { e.lvm("lvremove", "--yes", vg+"/"+e.pool) })
	}
	t.Cleanup(e.removeObjects)
	e.b = e.open()
	return e
}

func (e *env) open() *Backend {
	e.t.Helper()
	b, err := New(e.ctx, Config{VolumeGroup: e.vg, ThinPool: e.pool})
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// lvm runs an LVM command the backend has no call for.
func (e *env) lvm(args ...string) string {
	e.t.Helper()
	out, err := exec.Command("lvm", args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("lvm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// removeObjects removes the LVs of this test's objects that are left, so
// that the next test sees the VG as it was.
func (e *env) removeObjects() {
	lvs, err := e.client.LVs(e.ctx, e.vg)
	if err != nil {
		e.t.Errorf("cleanup: %v", err)
		return
	}
	for _, lv := range lvs {
		if e.mine(lv) {
			if err := e.client.Remove(e.ctx, e.vg, lv.Name); err != nil {
				e.t.Errorf("cleanup: %v", err)
			}
		}
	}
}

func (e *env) mine(lv lvmcmd.LV) bool {
	for _, tag := range lv.Tags {
		if v, ok := strings.CutPrefix(tag, keyName+"="); ok {
			name, err := base64.RawURLEncoding.DecodeString(v)
			return err == nil && strings.HasPrefix(string(name), e.prefix)
		}
	}
	return false
}

// name makes a CSI name private to the test; the odd characters check that
// names survive the trip through LVM tags.
func (e *env) name(short string) string { return e.prefix + short + ", é=1" }

func (e *env) params(typ string) map[string]string {
	return map[string]string{ParamType: typ, paramFsType: "ext4"}
}

func (e *env) createVolume(short, typ string, size int64, src backend.Source) backend.Volume {
	e.t.Helper()
	v, err := e.b.CreateVolume(e.ctx, backend.VolumeRequest{
		Name: e.name(short), RequiredBytes: size, FsType: "ext4", Parameters: e.params(typ), Source: src,
	})
	if err != nil {
		e.t.Fatalf("CreateVolume %s: %v", short, err)
	}
	return v
}

func (e *env) lv(id string) lvmcmd.LV {
	e.t.Helper()
	lv, err := e.client.LV(e.ctx, e.vg, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return lv
}

func (e *env) attach(id string) string {
	e.t.Helper()
	dev, err := e.b.AttachVolume(e.ctx, id)
	if err != nil {
		e.t.Fatalf("AttachVolume %s: %v", id, err)
	}
	return dev
}

func (e *env) detach(id string) {
	e.t.Helper()
	if err := e.b.DetachVolume(e.ctx, id); err != nil {
		e.t.Fatalf("DetachVolume %s: %v", id, err)
	}
}

// assertNoLV fails if the VG holds an LV named id.
func (e *env) assertNoLV(id string) {
	e.t.Helper()
	if _, err := e.client.LV(e.ctx, e.vg, id); !errors.Is(err, backend.ErrNotFound) {
		e.t.Errorf("LV %s: %v, want it gone", id, err)
	}
}

// Data patterns are written at the start, the middle and the end of a
// device, so that a copy or snapshot that misses any part shows.
const patternLen = 1 << 20

func patternOffsets(size int64) []int64 { return []int64{0, size / 2, size - patternLen} }

func pattern(seed string, off int64) []byte {
	out := make([]byte, 0, patternLen)
	block := sha256.Sum256([]byte(seed + strconv.FormatInt(off, 10)))
	for len(out) < patternLen {
		out = append(out, block[:]...)
		block = sha256.Sum256(block[:])
	}
	return out
}

func writePattern(t *testing.T, dev, seed string) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range patternOffsets(deviceSizeT(t, dev)) {
		if _, err := f.WriteAt(pattern(seed, off), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// checkPattern compares the pattern regions of a device of origSize bytes
// (a larger device, grown after the pattern was written, keeps it there).
func checkPattern(t *testing.T, dev, seed string, origSize int64) {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, patternLen)
	for _, off := range patternOffsets(origSize) {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, pattern(seed, off)) {
			t.Fatalf("%s at %d: data is not pattern %q", dev, off, seed)
		}
	}
}

func deviceSizeT(t *testing.T, dev string) int64 {
	t.Helper()
	n, err := deviceSize(dev)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// mount mounts dev at a new directory and unmounts it at cleanup.
func mount(t *testing.T, dev string) string {
	t.Helper()
	dir := t.TempDir()
	run(t, "mount", dev, dir)
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	return dir
}
