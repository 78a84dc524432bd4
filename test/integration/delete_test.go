package integration

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestDeleteSemantics checks what deletion may and may not take with it:
// a staged volume is refused, while snapshots outlive their volume and
// restored volumes outlive their snapshot. On a reflink pool they all
// share extents, so this is where a careless delete would hurt.
func TestDeleteSemantics(t *testing.T) {
	for _, pool := range []testpool.Kind{testpool.XFSReflink, testpool.Ext4} {
		t.Run(string(pool), func(t *testing.T) {
			e := startInProcess(t, pool, 4*GiB)
			id := e.createVolume(t, "doomed", "ext4", bigVolume, nil).GetVolumeId()
			a := e.use(t, id, "ext4")
			want := map[string]string{"data": writeRandomFile(t, a.path("data"), 8*MiB)}

			ctx, cancel := callCtx()
			_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			cancel()
			wantCode(t, err, codes.FailedPrecondition, "DeleteVolume of a staged volume")
			checkFiles(t, a.target, want)
			e.getVolume(t, id)

			snap := e.createSnapshot(t, "doomed-snap", id)
			e.release(t, a)
			ctx, cancel = callCtx()
			_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			cancel()
			if err != nil {
				t.Fatalf("DeleteVolume after unstage: %v", err)
			}
			ctx, cancel = callCtx()
			_, err = e.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
			cancel()
			wantCode(t, err, codes.NotFound, "ControllerGetVolume of a deleted volume")

			// The snapshot outlives its volume.
			restored := e.createVolume(t, "doomed-restored", "ext4", bigVolume, fromSnapshot(snap.GetSnapshotId())).GetVolumeId()
			r := e.use(t, restored, "ext4")
			checkFiles(t, r.target, want)

			// The restored volume outlives the snapshot, also once its
			// data is read from the pool again rather than from the page
			// cache.
			ctx, cancel = callCtx()
			_, err = e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
			cancel()
			if err != nil {
				t.Fatalf("DeleteSnapshot: %v", err)
			}
			ctx, cancel = callCtx()
			list, err := e.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()})
			cancel()
			if err != nil || len(list.GetEntries()) != 0 {
				t.Errorf("ListSnapshots of the deleted snapshot: %v, %v; want no entries", list.GetEntries(), err)
			}
			checkFiles(t, r.target, want)
			e.release(t, r)
			e.fsckVolume(t, restored, "ext4")
			r = e.use(t, restored, "ext4")
			checkFiles(t, r.target, want)
			writeRandomFile(t, r.path("more"), 8*MiB)

			_, err = e.tryCreateVolume(t, volumeRequest("too-late", "ext4", bigVolume, fromSnapshot(snap.GetSnapshotId())))
			wantCode(t, err, codes.NotFound, "CreateVolume from a deleted snapshot")
		})
	}
}
