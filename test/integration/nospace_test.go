package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

// TestFullPool fills the pool's filesystem from outside Tarn, as other data
// sharing it can, and checks that every call that would need its blocks
// says so: ResourceExhausted naming the pool, which tells the CO (and the
// person reading the event) to free space rather than retry a broken
// driver, and leaves nothing half-made. Deletions must still work, or a
// full pool could never be emptied.
func TestFullPool(t *testing.T) {
	for _, kind := range []testpool.Kind{testpool.Ext4, testpool.XFSReflink} {
		t.Run(string(kind), func(t *testing.T) {
			e := startInProcess(t, kind, GiB)
			data := e.createVolume(t, "data", "ext4", 32*MiB, nil).GetVolumeId()
			a := e.use(t, data, "ext4")
			writeRandomFile(t, a.path("data"), 4*MiB)
			e.release(t, a)
			// On a reflink pool this also marks data as shared, so that
			// a second snapshot is not checked against capacity first.
			snap := e.createSnapshot(t, "snap", data).GetSnapshotId()
			blank := e.createVolume(t, "blank", "ext4", 32*MiB, nil).GetVolumeId()
			// A raw volume never written holds no block: a copy of it
			// needs no data space, only the pool's metadata.
			empty := e.createVolume(t, "empty", "", 16*MiB, nil).GetVolumeId()
			doomed := e.createVolume(t, "doomed", "", 16*MiB, nil).GetVolumeId()
			grown := e.createVolume(t, "grown", "xfs", 320*MiB, nil).GetVolumeId()
			g := e.use(t, grown, "xfs")
			ctx, cancel := callCtx()
			_, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: grown, CapacityRange: &csi.CapacityRange{RequiredBytes: 480 * MiB}, VolumeCapability: capability("xfs")})
			cancel()
			if err != nil {
				t.Fatalf("ControllerExpandVolume before the pool is full: %v", err)
			}

			harness.FillFilesystem(t, e.poolMnt)

			for _, tc := range []struct {
				name string
				call func(ctx context.Context) error
			}{
				{"CreateVolume", func(ctx context.Context) error {
					_, err := e.ctrl.CreateVolume(ctx, volumeRequest("new", "ext4", 16*MiB, nil))
					return err
				}},
				{"CreateVolume from snapshot", func(ctx context.Context) error {
					_, err := e.ctrl.CreateVolume(ctx, volumeRequest("restored", "ext4", 32*MiB, fromSnapshot(snap)))
					return err
				}},
				{"CreateVolume clone", func(ctx context.Context) error {
					_, err := e.ctrl.CreateVolume(ctx, volumeRequest("clone", "ext4", 32*MiB, fromVolume(data)))
					return err
				}},
				{"CreateSnapshot", func(ctx context.Context) error {
					_, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap2", SourceVolumeId: data})
					return err
				}},
				{"CreateSnapshot of an unwritten volume", func(ctx context.Context) error {
					_, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-empty", SourceVolumeId: empty})
					return err
				}},
				{"ControllerExpandVolume", func(ctx context.Context) error {
					_, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
						VolumeId: blank, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * MiB}, VolumeCapability: capability("ext4")})
					return err
				}},
				{"NodeStageVolume formatting", func(context.Context) error {
					_, err := e.tryStage(t, blank, "ext4")
					return err
				}},
				{"NodeExpandVolume growing the filesystem", func(ctx context.Context) error {
					_, err := e.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
						VolumeId: grown, VolumePath: g.target, StagingTargetPath: g.staging, VolumeCapability: capability("xfs")})
					return err
				}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					before := e.poolState(t)
					ctx, cancel := callCtx()
					err := tc.call(ctx)
					cancel()
					t.Logf("on a full pool: %v", err)
					if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), e.pool) {
						t.Errorf("on a full pool: %v; want ResourceExhausted naming the pool %s", err, e.pool)
					}
					if after := e.poolState(t); strings.Join(after, " ") != strings.Join(before, " ") {
						t.Errorf("the failed call changed the pool: %v before, %v after", before, after)
					}
				})
			}

			ctx, cancel = callCtx()
			defer cancel()
			// Not ready would tell the CO to stop sending calls, the
			// deletions among them that would make room again.
			if resp, err := e.ident.Probe(ctx, &csi.ProbeRequest{}); err != nil || !resp.GetReady().GetValue() {
				t.Errorf("Probe on a full pool: %v, %v; want ready", resp, err)
			}
			if _, err := e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap}); err != nil {
				t.Errorf("DeleteSnapshot on a full pool: %v", err)
			}
			if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: doomed}); err != nil {
				t.Errorf("DeleteVolume on a full pool: %v", err)
			}
		})
	}
}
