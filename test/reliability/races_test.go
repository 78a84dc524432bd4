package reliability

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// TestLookupsSurviveConcurrentDetach isolates a race that TestStress hits
// now and then: every node call on a volume asks the kernel for its loop
// device by listing all of them, and a loop device of another volume being
// detached at that instant must not make the listing fail. One client
// attaches and detaches a raw block volume (no filesystem, so each cycle
// takes milliseconds) while another keeps unstaging a volume that is not
// staged, which is nothing but two lookups and must always succeed.
func TestLookupsSurviveConcurrentDetach(t *testing.T) {
	const runFor = 3 * time.Second
	e := newEnv(t, 2*GiB)
	e.startInProcess(t, false)
	c := &caller{t: t, tally: newTally()}
	block := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	var ids []string
	for _, name := range []string{"flapping", "idle"} {
		var id string
		if c.do("create", "CreateVolume", nil, func(ctx context.Context) error {
			resp, err := e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name,
				CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * MiB}, VolumeCapabilities: []*csi.VolumeCapability{block}})
			id = resp.GetVolume().GetVolumeId()
			return err
		}) != codes.OK {
			t.FailNow()
		}
		ids = append(ids, id)
		t.Cleanup(func() {
			c.do("cleanup", "DeleteVolume", nil, func(ctx context.Context) error {
				_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
				return err
			})
		})
	}
	flapping, idle := ids[0], ids[1]
	staging := filepath.Join(e.work, "flapping")

	deadline := time.Now().Add(runFor)
	var cycles, lookups, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for time.Now().Before(deadline) {
			c.do("stage", "NodeStageVolume", nil, func(ctx context.Context) error {
				_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: flapping,
					StagingTargetPath: staging, VolumeCapability: block})
				return err
			})
			c.do("unstage", "NodeUnstageVolume", nil, func(ctx context.Context) error {
				_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: flapping, StagingTargetPath: staging})
				return err
			})
			cycles.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for time.Now().Before(deadline) {
			// Reported once below rather than once per failure.
			code := c.do("lookup", "NodeUnstageVolume", []codes.Code{codes.Internal}, func(ctx context.Context) error {
				_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: idle,
					StagingTargetPath: filepath.Join(e.work, "idle")})
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
				}
				return err
			})
			lookups.Add(1)
			if code != codes.OK {
				failed.Add(1)
			}
		}
	}()
	wg.Wait()
	t.Logf("%d attach/detach cycles, %d lookups on another volume meanwhile, %d failed", cycles.Load(), lookups.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("NodeUnstageVolume of an unstaged volume failed %d times in %d while another volume was being detached "+
			"(listing loop devices must skip one that goes away under it); the first failure: %v", failed.Load(), lookups.Load(), firstErr.Load())
	}
}
