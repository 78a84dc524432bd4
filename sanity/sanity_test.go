// Package sanity runs csi-test's sanity suite against a real Tarn driver:
// loop backend, real pools made on loop devices, real mounts.
//
// Ginkgo runs one suite per process, so TestSanity runs each configuration
// of the matrix in a child process of this test binary.
package sanity

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/backend/loop"
	"github.com/tarn-csi/tarn/pkg/backend/lvm"
	"github.com/tarn-csi/tarn/pkg/driver"
	"github.com/tarn-csi/tarn/test/testpool"
)

// configuration is one run of the suite.
type configuration struct {
	backend string // "loop" or "lvm"
	pool    testpool.Kind
	lvmType string // "thin" or "thick"
	access  string // "mount" or "block"
	fsType  string // filesystem asked through the StorageClass parameter
}

func (c configuration) name() string {
	where := fmt.Sprintf("%s-pool", c.pool)
	if c.backend == "lvm" {
		where = "lvm-" + c.lvmType
	}
	if c.access == "block" {
		return where + "/block"
	}
	return where + "/mount-" + c.fsType
}

// loopMatrix runs on the host; lvmMatrix inside the project's VM, where
// TARN_TEST_VG names a fresh volume group (make test-vm). The VM emulates
// its CPU, so its matrix covers each LV type once per access type and
// leaves the xfs variant to the loop runs (the node code is shared).
var (
	loopMatrix = []configuration{
		{backend: "loop", pool: testpool.XFSReflink, access: "mount", fsType: "ext4"},
		{backend: "loop", pool: testpool.XFSReflink, access: "mount", fsType: "xfs"},
		{backend: "loop", pool: testpool.XFSReflink, access: "block"},
		{backend: "loop", pool: testpool.Ext4, access: "mount", fsType: "ext4"},
		{backend: "loop", pool: testpool.Ext4, access: "block"},
	}
	lvmMatrix = []configuration{
		{backend: "lvm", lvmType: "thin", access: "mount", fsType: "ext4"},
		{backend: "lvm", lvmType: "thin", access: "block"},
		{backend: "lvm", lvmType: "thick", access: "mount", fsType: "ext4"},
		{backend: "lvm", lvmType: "thick", access: "block"},
	}
)

func matrix() []configuration {
	if os.Getenv(vgEnv) != "" {
		return lvmMatrix
	}
	return loopMatrix
}

const vgEnv = "TARN_TEST_VG"

const childEnv = "TARN_SANITY_CONFIG"

func TestSanity(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("child process")
	}
	if os.Geteuid() != 0 {
		t.Skip("sanity needs root: it attaches loop devices and mounts filesystems")
	}
	for i, c := range matrix() {
		t.Run(c.name(), func(t *testing.T) {
			args := []string{"-test.run=^TestSanityConfiguration$", "-test.v", "-ginkgo.no-color"}
			if testing.Verbose() {
				args = append(args, "-ginkgo.v")
			}
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", childEnv, i))
			out, err := cmd.CombinedOutput()
			summary := ginkgoSummary(string(out))
			t.Logf("%s: %s", c.name(), summary)
			if err != nil {
				t.Fatalf("sanity failed for %s: %v\n%s", c.name(), err, out)
			}
			// A child that ran no spec would also exit 0.
			if !strings.Contains(summary, " Passed | 0 Failed") {
				t.Fatalf("sanity for %s did not report a clean run: %s\n%s", c.name(), summary, out)
			}
		})
	}
}

// ginkgoSummary returns the line in which Ginkgo counts passed, failed and
// skipped specs.
func ginkgoSummary(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "Passed |") {
			return strings.TrimSpace(line)
		}
	}
	return "no Ginkgo summary in output"
}

func TestSanityConfiguration(t *testing.T) {
	v := os.Getenv(childEnv)
	if v == "" {
		t.Skip("run by TestSanity")
	}
	var i int
	if _, err := fmt.Sscan(v, &i); err != nil || i < 0 || i >= len(matrix()) {
		t.Fatalf("bad %s=%q", childEnv, v)
	}
	c := matrix()[i]
	work := t.TempDir()
	endpoint := "unix://" + filepath.Join(work, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var b backend.Backend
	if c.backend == "lvm" {
		b = openLVM(t, ctx, c)
	} else {
		b = openLoop(t, ctx, c)
	}
	d, err := driver.New(driver.Config{Endpoint: endpoint, NodeID: "sanity-node", Version: "sanity", Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("driver stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("driver did not stop")
		}
	})
	waitForSocket(t, filepath.Join(work, "csi.sock"))

	cfg := sanity.NewTestConfig()
	cfg.Address = endpoint
	cfg.TargetPath = filepath.Join(work, "target")
	cfg.StagingPath = filepath.Join(work, "staging")
	cfg.TestVolumeSize = 320 << 20
	cfg.TestVolumeExpandSize = 512 << 20
	cfg.TestVolumeAccessType = c.access
	cfg.IdempotentCount = 3
	if c.fsType != "" {
		cfg.TestVolumeParameters = map[string]string{driver.ParamFsType: c.fsType}
	}
	sanity.Test(t, cfg)
}

// openLoop makes a real pool on a loop device; after the suite (cleanups
// run last-in first-out, so after the driver stopped) nothing it attached
// or mounted may be left.
func openLoop(t *testing.T, ctx context.Context, c configuration) backend.Backend {
	poolMount := testpool.New(t, c.pool, 16<<30)
	before := testpool.Snapshot(t)
	t.Cleanup(func() { testpool.AssertNoLeaks(t, before) })
	poolDir := filepath.Join(poolMount, "pool")
	if err := os.MkdirAll(poolDir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := loop.New(ctx, loop.Config{PoolDir: poolDir, DirectIO: true})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	if want := c.pool != testpool.Ext4; b.Reflink() != want {
		t.Fatalf("reflink on %s pool = %v, want %v", c.pool, b.Reflink(), want)
	}
	return b
}

// openLVM serves the VM's volume group, with a thin pool made for the run;
// afterwards no LV of Tarn's may be left.
func openLVM(t *testing.T, ctx context.Context, c configuration) backend.Backend {
	vg := os.Getenv(vgEnv)
	cfg := lvm.Config{VolumeGroup: vg, DefaultType: c.lvmType}
	if c.lvmType == "thin" {
		cfg.ThinPool = "sanitypool"
		lvmCommand(t, "lvcreate", "--type", "thin-pool", "-L", "6g", "-n", cfg.ThinPool, vg)
		t.Cleanup(func() { lvmCommand(t, "lvremove", "-y", vg+"/"+cfg.ThinPool) })
	}
	b, err := lvm.New(ctx, cfg)
	if err != nil {
		t.Fatalf("open volume group: %v", err)
	}
	t.Cleanup(func() {
		out := lvmCommand(t, "lvs", "--noheadings", "-o", "lv_name,lv_tags", vg)
		if strings.Contains(out, "tarn.owner") {
			t.Errorf("Tarn LVs left after the suite:\n%s", out)
		}
	})
	return b
}

func lvmCommand(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
	return string(out)
}

func waitForSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("driver socket %s did not appear", path)
}
