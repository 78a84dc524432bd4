package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

// TestOneServePerPool starts a second `tarn serve` on a pool that one is
// already serving, with a socket of its own (a debugging session on the
// host, a rollout that surges): it must refuse to start rather than sweep
// away the first one's work in progress, and the first keeps serving.
func TestOneServePerPool(t *testing.T) {
	e := newEnv(t, testpool.XFSReflink, 2*GiB)
	e.serve(t)
	vol := e.createVolume(t, "held", "ext4", 128*MiB, nil).GetVolumeId()
	a := e.use(t, vol, "ext4")
	want := map[string]string{"data": writeRandomFile(t, a.path("data"), 1*MiB)}

	second, err := harness.Start(exec.Command(tarnBinary, "serve",
		"--endpoint=unix://"+filepath.Join(filepath.Dir(e.sock), "second.sock"), "--node-id="+nodeID,
		"--pool-dir="+e.pool, "--kubelet-dir="+e.work))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.Done():
	case <-time.After(20 * time.Second):
		second.Terminate(t, 10*time.Second)
		t.Fatal("a second tarn serve on the same pool kept running")
	}
	if second.Err() == nil {
		t.Error("the second tarn serve exited successfully; want a failure")
	}
	if out := string(second.Out.Since(0)); !strings.Contains(out, "another tarn") {
		t.Errorf("the second tarn serve does not say why it stopped:\n%s", out)
	}
	e.waitReady(t)
	checkFiles(t, a.target, want)
	e.createSnapshot(t, "still-served", vol)
}
