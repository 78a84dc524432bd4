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

	"github.com/tarn-csi/tarn/pkg/backend/loop"
	"github.com/tarn-csi/tarn/pkg/driver"
	"github.com/tarn-csi/tarn/test/testpool"
)

// configuration is one run of the suite.
type configuration struct {
	pool   testpool.Kind
	access string // "mount" or "block"
	fsType string // filesystem asked through the StorageClass parameter
}

func (c configuration) name() string {
	if c.access == "block" {
		return fmt.Sprintf("%s-pool/block", c.pool)
	}
	return fmt.Sprintf("%s-pool/mount-%s", c.pool, c.fsType)
}

var matrix = []configuration{
	{pool: testpool.XFSReflink, access: "mount", fsType: "ext4"},
	{pool: testpool.XFSReflink, access: "mount", fsType: "xfs"},
	{pool: testpool.XFSReflink, access: "block"},
	{pool: testpool.Ext4, access: "mount", fsType: "ext4"},
	{pool: testpool.Ext4, access: "block"},
}

const childEnv = "TARN_SANITY_CONFIG"

func TestSanity(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("child process")
	}
	if os.Geteuid() != 0 {
		t.Skip("sanity needs root: it attaches loop devices and mounts filesystems")
	}
	for i, c := range matrix {
		t.Run(c.name(), func(t *testing.T) {
			args := []string{"-test.run=^TestSanityConfiguration$", "-test.v"}
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
	if _, err := fmt.Sscan(v, &i); err != nil || i < 0 || i >= len(matrix) {
		t.Fatalf("bad %s=%q", childEnv, v)
	}
	c := matrix[i]

	poolMount := testpool.New(t, c.pool, 16<<30)
	before := testpool.Snapshot(t)
	work := t.TempDir()
	endpoint := "unix://" + filepath.Join(work, "csi.sock")

	ctx, cancel := context.WithCancel(context.Background())
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
		testpool.AssertNoLeaks(t, before)
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
