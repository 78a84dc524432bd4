// Package sanity runs csi-test's sanity suite against `tarn serve`: the
// loop backend on real pools made on loop devices, real mounts; the LVM
// backend in the project's VM.
//
// Ginkgo runs one suite per process, so TestSanity runs each configuration
// of the matrix in a child process of this test binary.
package sanity

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/tarn-csi/tarn/pkg/backend/lvm"
	"github.com/tarn-csi/tarn/pkg/driver"
	"github.com/tarn-csi/tarn/pkg/filecopy"
	"github.com/tarn-csi/tarn/test/harness"
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

const (
	vgEnv    = "TARN_TEST_VG"
	childEnv = "TARN_SANITY_CONFIG"
	// binaryEnv names a prebuilt tarn binary; make test-vm sets it, since
	// the VM has no Go toolchain. Elsewhere TestSanity builds one.
	binaryEnv = "TARN_TEST_BINARY"
)

func TestSanity(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("child process")
	}
	if os.Geteuid() != 0 {
		t.Skip("sanity needs root: it attaches loop devices and mounts filesystems")
	}
	binary := os.Getenv(binaryEnv)
	if binary == "" {
		binary = filepath.Join(t.TempDir(), "tarn")
		if err := harness.BuildTarn(binary); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range matrix() {
		t.Run(c.name(), func(t *testing.T) {
			args := []string{"-test.run=^TestSanityConfiguration$", "-test.v", "-ginkgo.no-color"}
			if testing.Verbose() {
				args = append(args, "-ginkgo.v")
			}
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", childEnv, i), binaryEnv+"="+binary)
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

// TestSanityConfiguration runs the suite against `tarn serve`, the binary
// a node runs, started with the flags of one configuration.
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
	socket := filepath.Join(work, "csi.sock")
	args := []string{"serve", "--endpoint", "unix://" + socket, "--node-id", "sanity-node", "--kubelet-dir", work}
	params := map[string]string{}
	if c.backend == "lvm" {
		args = append(args, lvmFlags(t, c)...)
		// The class, not the driver's default, picks the LV type: the
		// thin pool exists in both runs, so thick volumes are a choice.
		params[lvm.ParamType] = c.lvmType
	} else {
		args = append(args, loopFlags(t, c)...)
	}
	if c.fsType != "" {
		params[driver.ParamFsType] = c.fsType
	}
	p, err := harness.Start(exec.Command(os.Getenv(binaryEnv), args...))
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the driver stops (gracefully, or the
	// test fails) before the pool's leak checks run.
	t.Cleanup(func() {
		p.Terminate(t, 30*time.Second)
		if t.Failed() {
			t.Logf("tarn serve output:\n%s", p.Out.Since(0))
		}
	})
	waitForSocket(t, socket, p)

	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + socket
	cfg.TargetPath = filepath.Join(work, "target")
	cfg.StagingPath = filepath.Join(work, "staging")
	cfg.TestVolumeSize = 320 << 20
	cfg.TestVolumeExpandSize = 512 << 20
	cfg.TestVolumeAccessType = c.access
	cfg.IdempotentCount = 3
	cfg.TestVolumeParameters = params
	sanity.Test(t, cfg)
}

// loopFlags makes a real pool on a loop device; after the suite nothing it
// attached or mounted may be left.
func loopFlags(t *testing.T, c configuration) []string {
	poolMount := testpool.New(t, c.pool, 16<<30)
	before := testpool.Snapshot(t)
	t.Cleanup(func() { testpool.AssertNoLeaks(t, before) })
	poolDir := filepath.Join(poolMount, "pool")
	if err := os.MkdirAll(poolDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The reflink configuration must really take the O(1) path.
	reflink, err := filecopy.SupportsReflink(poolDir)
	if err != nil {
		t.Fatal(err)
	}
	if want := c.pool != testpool.Ext4; reflink != want {
		t.Fatalf("reflink on %s pool = %v, want %v", c.pool, reflink, want)
	}
	return []string{"--pool-dir", poolDir, "--direct-io=true"}
}

// lvmFlags serves the VM's volume group, with a thin pool made for the
// run; afterwards no LV of Tarn's may be left.
func lvmFlags(t *testing.T, c configuration) []string {
	vg := os.Getenv(vgEnv)
	const thinPool = "sanitypool"
	lvmCommand(t, "lvcreate", "--type", "thin-pool", "-L", "6g", "-n", thinPool, vg)
	t.Cleanup(func() { lvmCommand(t, "lvremove", "-y", vg+"/"+thinPool) })
	t.Cleanup(func() {
		out := lvmCommand(t, "lvs", "--noheadings", "-o", "lv_name,lv_tags", vg)
		if strings.Contains(out, "tarn.owner") {
			t.Errorf("Tarn LVs left after the suite:\n%s", out)
		}
	})
	return []string{"--backend", "lvm", "--volume-group", vg, "--thin-pool", thinPool}
}

func lvmCommand(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
	return string(out)
}

func waitForSocket(t *testing.T, path string, p *harness.Process) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		if p.Exited() {
			t.Fatalf("tarn serve exited (%v) before serving:\n%s", p.Err(), p.Out.Since(0))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("driver socket %s did not appear:\n%s", path, p.Out.Since(0))
}
