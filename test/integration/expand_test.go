package integration

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

// TestOnlineExpansion grows published volumes and checks that the
// workload sees the new size at once and keeps its data.
func TestOnlineExpansion(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 4*GiB)
	for _, tc := range []struct {
		name     string
		fsType   string
		from, to int64
		// controller sends ControllerExpandVolume first, as a central
		// resizer does; without it NodeExpandVolume must grow the backing
		// file itself, as in a per-node deployment.
		controller bool
	}{
		{"ext4", "ext4", 320 * MiB, 640 * MiB, true},
		{"xfs", "xfs", 320 * MiB, 640 * MiB, true},
		{"ext4/node-only", "ext4", 64 * MiB, 128 * MiB, false},
		{"xfs/node-only", "xfs", 320 * MiB, 480 * MiB, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := e.createVolume(t, "grow-"+tc.name, tc.fsType, tc.from, nil).GetVolumeId()
			a := e.use(t, id, tc.fsType)
			want := map[string]string{"data": writeRandomFile(t, a.path("data"), 16*MiB)}
			before := harness.FilesystemSize(t, a.target)
			growTo := &csi.CapacityRange{RequiredBytes: tc.to}

			if tc.controller {
				ctx, cancel := callCtx()
				resp, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
					VolumeId: id, CapacityRange: growTo, VolumeCapability: capability(tc.fsType)})
				cancel()
				if err != nil {
					t.Fatalf("ControllerExpandVolume: %v", err)
				}
				if resp.GetCapacityBytes() < tc.to || !resp.GetNodeExpansionRequired() {
					t.Fatalf("ControllerExpandVolume: %v, want at least %d bytes and node expansion required for a filesystem", resp, tc.to)
				}
			}
			if tc.fsType == "ext4" && !hasCapability(unix.CAP_SYS_RESOURCE) {
				// ext4_resize_begin answers EPERM without it, whatever
				// the driver does; containers often drop it.
				t.Skip("ext4 online resize needs CAP_SYS_RESOURCE, which this process does not have")
			}
			ctx, cancel := callCtx()
			resp, err := e.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
				VolumeId: id, VolumePath: a.target, StagingTargetPath: a.staging,
				CapacityRange: growTo, VolumeCapability: capability(tc.fsType)})
			cancel()
			if err != nil {
				t.Fatalf("NodeExpandVolume: %v", err)
			}
			if resp.GetCapacityBytes() < tc.to {
				t.Errorf("NodeExpandVolume: capacity %d, want at least %d", resp.GetCapacityBytes(), tc.to)
			}

			after := harness.FilesystemSize(t, a.target)
			// Filesystem overhead grows with the size, but by far less
			// than a tenth of the growth.
			if grown := after - before; grown < (tc.to-tc.from)*9/10 || after > tc.to {
				t.Errorf("statfs of %s: %d bytes, was %d; want about %d more and at most %d", a.target, after, before, tc.to-tc.from, tc.to)
			}
			if got := e.getVolume(t, id).GetCapacityBytes(); got != tc.to {
				t.Errorf("ControllerGetVolume after expansion: capacity %d, want %d", got, tc.to)
			}
			checkFiles(t, a.target, want)

			// Off the page cache: the grown filesystem is clean and holds
			// the data.
			e.release(t, a)
			e.fsckVolume(t, id, tc.fsType)
			b := e.use(t, id, tc.fsType)
			checkFiles(t, b.target, want)
			if got := harness.FilesystemSize(t, b.target); got != after {
				t.Errorf("statfs after restaging: %d bytes, was %d right after the expansion", got, after)
			}
		})
	}

	// A raw block volume has no filesystem to grow, so the controller
	// call must make the attached device see the new size by itself.
	t.Run("block", func(t *testing.T) {
		const from, to = 64 * MiB, 128 * MiB
		id := e.createVolume(t, "grow-block", "", from, nil).GetVolumeId()
		a := e.use(t, id, "")
		head, tail := randomBytes(t, int(MiB)), randomBytes(t, int(MiB))
		writeAt(t, a.target, 0, head)
		writeAt(t, a.target, from-MiB, tail)

		ctx, cancel := callCtx()
		resp, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
			VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: to}, VolumeCapability: capability("")})
		cancel()
		if err != nil {
			t.Fatalf("ControllerExpandVolume: %v", err)
		}
		if resp.GetCapacityBytes() != to || resp.GetNodeExpansionRequired() {
			t.Errorf("ControllerExpandVolume: %v, want %d bytes and no node expansion for block access", resp, to)
		}
		if got := blockSize(t, a.target); got != to {
			t.Errorf("BLKGETSIZE64 of the published device: %d, want %d", got, to)
		}
		ctx, cancel = callCtx()
		stats, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: a.target})
		cancel()
		if err != nil {
			t.Fatalf("NodeGetVolumeStats: %v", err)
		}
		if got := bytesTotal(stats); got != to {
			t.Errorf("NodeGetVolumeStats: %d bytes in total, want %d", got, to)
		}
		grown := randomBytes(t, int(MiB))
		writeAt(t, a.target, to-MiB, grown)
		checkAt(t, a.target, 0, head)
		checkAt(t, a.target, from-MiB, tail)

		// What the device holds is what the backing file holds.
		e.release(t, a)
		file := e.volumeFile(id)
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != to {
			t.Errorf("backing file %s: %d bytes, want %d", file, fi.Size(), to)
		}
		checkAt(t, file, 0, head)
		checkAt(t, file, from-MiB, tail)
		checkAt(t, file, to-MiB, grown)
	})
}

// TestExpandThroughReadOnlyPublication grows a volume whose only
// publication is read-only, as kubelet does for a ReadOnlyMany claim: the
// filesystem must grow through a writable mount of the same device, and
// with none left the call must say so with a spec code.
func TestExpandThroughReadOnlyPublication(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	const from, mid, to = 320 * MiB, 480 * MiB, 640 * MiB
	id := e.createVolume(t, "grow-readonly", "xfs", from, nil).GetVolumeId()
	a := e.stage(t, id, "xfs")
	want := map[string]string{"data": writeRandomFile(t, filepath.Join(a.staging, "data"), 4*MiB)}

	ctx, cancel := callCtx()
	_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: a.staging, TargetPath: a.target,
		VolumeCapability: capability("xfs"), Readonly: true})
	cancel()
	if err != nil {
		t.Fatalf("NodePublishVolume read-only: %v", err)
	}
	t.Cleanup(func() {
		if err := e.tryUnpublish(a); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	expand := func(size int64) error {
		ctx, cancel := callCtx()
		defer cancel()
		_, err := e.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
			VolumeId: id, VolumePath: a.target, CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
		return err
	}
	before := harness.FilesystemSize(t, a.target)
	if err := expand(mid); err != nil {
		t.Fatalf("NodeExpandVolume at the read-only publication, staging mount writable: %v", err)
	}
	if after := harness.FilesystemSize(t, a.target); after-before < (mid-from)*9/10 {
		t.Errorf("statfs of %s: %d bytes, was %d; want about %d more", a.target, after, before, mid-from)
	}
	checkFiles(t, a.target, want)

	// Only the read-only bind is left: the superblock is still writable,
	// but no mount of it is, and the driver must not grow through one.
	if err := unix.Unmount(a.staging, 0); err != nil {
		t.Fatalf("unmount the staging mount behind the driver's back: %v", err)
	}
	if err := expand(to); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("NodeExpandVolume with only a read-only mount: %v, want FailedPrecondition", err)
	}
	checkFiles(t, a.target, want)
}
