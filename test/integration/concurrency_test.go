package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestCallsOnABusyVolume holds a CreateSnapshot in progress on purpose, by
// freezing the pool filesystem under it, and sends every other kind of
// call on its source volume meanwhile. Each must be turned away with
// Aborted, the CSI code that tells the CO to retry later, instead of
// touching a volume that is being copied.
func TestCallsOnABusyVolume(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	const size = 64 * MiB
	vol := e.createVolume(t, "busy", "ext4", size, nil).GetVolumeId()

	// Reading the pool works while it is frozen; the snapshot's first
	// write (its staging directory) blocks until the thaw.
	if out, err := runCmd("fsfreeze", "-f", e.poolMnt); err != nil {
		t.Fatalf("fsfreeze -f %s: %v: %s", e.poolMnt, err, out)
	}
	thawed := false
	thaw := func() {
		if thawed {
			return
		}
		thawed = true
		if out, err := runCmd("fsfreeze", "-u", e.poolMnt); err != nil {
			t.Errorf("fsfreeze -u %s: %v: %s", e.poolMnt, err, out)
		}
	}
	t.Cleanup(thaw)

	type result struct {
		resp *csi.CreateSnapshotResponse
		err  error
	}
	held := make(chan result, 1)
	go func() {
		ctx, cancel := callCtx()
		defer cancel()
		for {
			resp, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "held", SourceVolumeId: vol})
			// waitUntilHeld's probe may hold the volume for an instant;
			// the CO would retry too.
			if status.Code(err) != codes.Aborted {
				held <- result{resp, err}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	e.waitUntilHeld(t, vol, size)

	staging := filepath.Join(e.work, "busy-staging")
	// Only needed if the driver let NodeStageVolume through after all.
	t.Cleanup(func() {
		if err := e.tryUnstage(attachment{volID: vol, staging: staging}); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	calls := map[string]func(context.Context) error{
		"DeleteVolume": func(ctx context.Context) error {
			_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol})
			return err
		},
		"ControllerExpandVolume": func(ctx context.Context) error {
			_, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: vol, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * size}})
			return err
		},
		"NodeStageVolume": func(ctx context.Context) error {
			_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
				VolumeId: vol, StagingTargetPath: staging, VolumeCapability: capability("ext4")})
			return err
		},
		"NodeUnstageVolume": func(ctx context.Context) error {
			_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
			return err
		},
		"NodeExpandVolume": func(ctx context.Context) error {
			_, err := e.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol, VolumePath: staging})
			return err
		},
		"CreateSnapshot (retry)": func(ctx context.Context) error {
			_, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "held", SourceVolumeId: vol})
			return err
		},
		"CreateSnapshot (another)": func(ctx context.Context) error {
			_, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "another", SourceVolumeId: vol})
			return err
		},
		"CreateVolume (clone)": func(ctx context.Context) error {
			_, err := e.ctrl.CreateVolume(ctx, volumeRequest("busy-clone", "ext4", size, fromVolume(vol)))
			return err
		},
	}
	// An unlocked call would block on the frozen pool; the short timeout
	// turns that into a failure instead of a hang.
	errs := parallel(calls, 5*time.Second)
	thaw()
	for name, err := range errs {
		if status.Code(err) != codes.Aborted {
			t.Errorf("%s while CreateSnapshot holds the volume: %v, want Aborted", name, err)
		}
	}

	r := <-held
	if r.err != nil {
		t.Fatalf("the held CreateSnapshot: %v", r.err)
	}
	snapID := r.resp.GetSnapshot().GetSnapshotId()
	t.Cleanup(func() {
		ctx, cancel := callCtx()
		defer cancel()
		if _, err := e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapID}); err != nil {
			t.Errorf("cleanup: DeleteSnapshot: %v", err)
		}
	})
	if got := e.getVolume(t, vol).GetCapacityBytes(); got != size {
		t.Errorf("volume is %d bytes after the refused calls, want %d", got, size)
	}
	// Nothing but the held snapshot was made.
	if got, want := e.poolState(t), []string{"volumes/" + vol, "snapshots/" + snapID}; !slices.Equal(got, want) {
		t.Errorf("pool holds %v, want %v", got, want)
	}
}

// waitUntilHeld waits until a call holds vol: a no-op expansion (to the
// size it has) then answers Aborted instead of succeeding.
func (e *env) waitUntilHeld(t *testing.T, vol string, size int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
			VolumeId: vol, CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
		cancel()
		switch {
		case status.Code(err) == codes.Aborted:
			return
		case err != nil:
			t.Fatalf("no-op ControllerExpandVolume: %v", err)
		case time.Now().After(deadline):
			t.Fatal("CreateSnapshot never held its source volume")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// parallel starts all calls at once and returns their errors by name.
func parallel(calls map[string]func(context.Context) error, timeout time.Duration) map[string]error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		start = make(chan struct{})
		errs  = make(map[string]error, len(calls))
	)
	for name, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			<-start
			err := call(ctx)
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

// TestRacingCallsOnOneVolume sends eight calls on one volume at the same
// instant, expansions first and then deletions: each call either wins or
// is told Aborted, never fails otherwise, and the volume ends up in the
// state the winners agree on.
func TestRacingCallsOnOneVolume(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	const size = 64 * MiB
	vol := e.createVolume(t, "raced", "", size, nil).GetVolumeId()

	expand := map[string]func(context.Context) error{}
	var mu sync.Mutex
	granted := int64(0)
	for i := range 8 {
		want := size + int64(i+1)*MiB
		expand[fmt.Sprintf("ControllerExpandVolume to %d", want)] = func(ctx context.Context) error {
			resp, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: vol, CapacityRange: &csi.CapacityRange{RequiredBytes: want}})
			if err == nil {
				if resp.GetCapacityBytes() < want {
					return fmt.Errorf("granted %d bytes", resp.GetCapacityBytes())
				}
				mu.Lock()
				granted = max(granted, resp.GetCapacityBytes())
				mu.Unlock()
			}
			return err
		}
	}
	checkRace(t, parallel(expand, callTimeout))
	if got := e.getVolume(t, vol).GetCapacityBytes(); got != granted {
		t.Errorf("volume is %d bytes, the largest expansion granted was %d", got, granted)
	}
	if fi, err := os.Stat(e.volumeFile(vol)); err != nil || fi.Size() != granted {
		t.Errorf("backing file after the expansions: %v, want %d bytes", fi, granted)
	}

	del := map[string]func(context.Context) error{}
	for i := range 8 {
		del[fmt.Sprintf("DeleteVolume #%d", i)] = func(ctx context.Context) error {
			_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol})
			return err
		}
	}
	checkRace(t, parallel(del, callTimeout))
	if left := e.poolState(t); len(left) > 0 {
		t.Errorf("pool after the deletions: %v, want it empty", left)
	}
}

// checkRace fails the test unless every call succeeded or was Aborted and
// at least one succeeded.
func checkRace(t *testing.T, errs map[string]error) {
	t.Helper()
	won, aborted := 0, 0
	for name, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			won++
		case codes.Aborted:
			aborted++
		default:
			t.Errorf("%s: %v, want success or Aborted", name, err)
		}
	}
	if won == 0 {
		t.Errorf("none of %d racing calls succeeded", len(errs))
	}
	t.Logf("%d calls succeeded, %d were aborted", won, aborted)
}
