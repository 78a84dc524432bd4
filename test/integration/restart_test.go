package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

// serve starts `tarn serve` on the env's pool and socket: the first time,
// or again after the previous process died.
func (e *env) serve(t *testing.T) {
	t.Helper()
	first := e.proc == nil
	if !first && !e.proc.Exited() {
		t.Fatal("serve: the previous tarn process is still running")
	}
	p, err := harness.Start(exec.Command(tarnBinary, "serve",
		"--endpoint=unix://"+e.sock, "--node-id="+nodeID, "--pool-dir="+e.pool, "--kubelet-dir="+e.work, "-v=2"))
	if err != nil {
		t.Fatalf("start %s: %v", tarnBinary, err)
	}
	e.proc = p
	// Every run's output is shown if the test fails, killed ones too.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output of tarn serve (pid %d):\n%s", p.Pid(), p.Out.Since(0))
		}
	})
	if !first {
		e.waitReady(t)
		return
	}
	// One cleanup stops whichever process is current by then; it is
	// registered before any volume, so volumes are cleaned up through a
	// live driver first.
	t.Cleanup(func() { e.proc.Terminate(t, 30*time.Second) })
	e.dial(t)
}

// TestDriverKilledBetweenStageAndUnstage kills `tarn serve` while a volume
// is staged and published, then starts it again on the same pool and
// socket. The kernel keeps the mount and the loop device, so the workload
// must not notice; the new process must find the attached device from the
// kernel, not from memory it lost, and tear everything down.
func TestDriverKilledBetweenStageAndUnstage(t *testing.T) {
	e := newEnv(t, testpool.XFSReflink, 2*GiB)
	e.serve(t)
	vol := e.createVolume(t, "survivor", "ext4", 128*MiB, nil)
	id := vol.GetVolumeId()
	a := e.use(t, id, "ext4")
	want := map[string]string{"before": writeRandomFile(t, a.path("before"), 4*MiB)}
	dev := loopDeviceOf(t, e.volumeFile(id))

	e.proc.Kill(t, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err := e.ident.Probe(ctx, &csi.ProbeRequest{})
	cancel()
	if err == nil {
		t.Fatal("Probe answered while the driver was dead: the test is not talking to the process it killed")
	}
	// The outage: the published filesystem keeps working.
	want["outage"] = writeRandomFile(t, a.path("outage"), 4*MiB)
	checkFiles(t, a.target, want)
	if fi, err := os.Lstat(e.sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket %s after SIGKILL: %v; a killed driver cannot remove it, the restart must replace it", e.sock, err)
	}

	e.serve(t)
	ctx, cancel = callCtx()
	stats, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: a.target})
	cancel()
	if err != nil {
		t.Fatalf("NodeGetVolumeStats after restart: %v", err)
	}
	if total := bytesTotal(stats); total < 100*MiB || total > 128*MiB {
		t.Errorf("NodeGetVolumeStats after restart: %d bytes in total, want about 128 MiB", total)
	}
	if got := loopDeviceOf(t, e.volumeFile(id)); got != dev {
		t.Errorf("volume is on %s after the restart, was on %s", got, dev)
	}

	e.release(t, a)
	if loops := loopDevicesUnder(t, e.pool); len(loops) > 0 {
		t.Errorf("loop devices still backed by the pool after NodeUnstageVolume: %v", loops)
	}
	for _, p := range []string{a.target, a.staging} {
		if mounted, err := mountinfo.Mounted(p); err == nil && mounted {
			t.Errorf("%s is still mounted after unpublish and unstage", p)
		}
	}
	// What was written during the outage reached the volume.
	again := e.use(t, id, "ext4")
	checkFiles(t, again.target, want)
	e.release(t, again)

	ctx, cancel = callCtx()
	defer cancel()
	if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume after restart: %v", err)
	}
	if left := e.poolEntries(t, "volumes"); len(left) > 0 {
		t.Errorf("pool/volumes after DeleteVolume: %v", left)
	}
}

// bytesTotal returns the total of the BYTES usage entry, -1 without one.
func bytesTotal(r *csi.NodeGetVolumeStatsResponse) int64 {
	if bytes, _ := harness.Usage(r); bytes != nil {
		return bytes.GetTotal()
	}
	return -1
}

// TestDriverKilledWhileSnapshotFreezes kills `tarn serve` in the middle of
// a snapshot on a pool without reflinks, where the volume's filesystem
// stays frozen for the whole copy. Nothing thaws it while the driver is
// dead, so its writers hang; the restarted driver must thaw it, sweep the
// half-made snapshot, and take the snapshot again when the CO retries.
func TestDriverKilledWhileSnapshotFreezes(t *testing.T) {
	e := newEnv(t, testpool.Ext4, 4*GiB)
	e.serve(t)
	id := e.createVolume(t, "frozen", "ext4", GiB, nil).GetVolumeId()
	a := e.use(t, id, "ext4")
	// Whatever happens, no cleanup may meet a frozen filesystem: unmount
	// would hang on it.
	t.Cleanup(func() { _, _ = runCmd("fsfreeze", "-u", a.staging) })
	// Enough data that the copy takes a second or so: long enough to be
	// caught mid-way, which takes milliseconds.
	writePattern(t, a.path("bulk"), 256*MiB)

	snapDone := make(chan error, 1)
	go func() {
		ctx, cancel := callCtx()
		defer cancel()
		_, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "frozen-snap", SourceVolumeId: id})
		snapDone <- err
	}()
	// The copy happens inside the freeze, so once the snapshot's data file
	// has grown, the filesystem is frozen.
	copying := filepath.Join(e.pool, ".staging", "*", "data.img")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m, _ := filepath.Glob(copying); len(m) == 1 {
			if fi, err := os.Stat(m[0]); err == nil && fi.Size() > 0 {
				break
			}
		}
		select {
		case err := <-snapDone:
			t.Fatalf("CreateSnapshot finished (%v) before the test could kill the driver mid-copy", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the snapshot copy did not start within 30s")
		}
		time.Sleep(time.Millisecond)
	}
	e.proc.Kill(t, 10*time.Second)
	if err := <-snapDone; err == nil {
		t.Fatal("CreateSnapshot succeeded although the driver was killed mid-copy")
	}

	// A writer now hangs on the frozen filesystem.
	written := make(chan error, 1)
	go func() {
		err := os.WriteFile(a.path("after-kill"), []byte("thawed"), 0o644)
		if err == nil {
			err = syncPath(a.target)
		}
		written <- err
	}()
	select {
	case err := <-written:
		t.Fatalf("a write went through while the driver was dead (%v): the filesystem was not frozen when it was killed", err)
	case <-time.After(500 * time.Millisecond):
	}

	e.serve(t)
	select {
	case err := <-written:
		if err != nil {
			t.Fatalf("write after the restart: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the filesystem is still frozen 10s after the driver restarted")
	}
	if left := e.poolEntries(t, ".staging"); len(left) > 0 {
		t.Errorf("pool/.staging after the restart: %v, want the interrupted snapshot swept", left)
	}
	ctx, cancel := callCtx()
	list, err := e.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	cancel()
	if err != nil || len(list.GetEntries()) != 0 {
		t.Errorf("ListSnapshots after the restart: %v, %v; want none", list.GetEntries(), err)
	}
	// The CO retries the snapshot.
	e.createSnapshot(t, "frozen-snap", id)
}

// writePattern fills path with size bytes of a cheap non-zero pattern and
// syncs it, so that the data is on disk before the test goes on.
func writePattern(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte("tarn integration "), int(MiB)/17+1)[:MiB]
	for off := int64(0); off < size; off += MiB {
		if _, err := f.Write(buf); err != nil {
			t.Fatalf("write %s: %v", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
}

// syncPath syncs the filesystem holding path.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
