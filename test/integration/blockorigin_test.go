package integration

import (
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestBlockContentIsNeverRestoredAsFilesystem asks for filesystem volumes
// from a raw block volume's snapshot and from the volume itself: a mount
// of them would hand the tenant's bytes to the kernel as a filesystem, so
// each is refused as an invalid argument that says why, before anything
// is made. A filesystem volume's snapshot restored as block stays allowed.
func TestBlockContentIsNeverRestoredAsFilesystem(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 4*GiB)
	raw := e.createVolume(t, "raw", "", rawVolume, nil).GetVolumeId()
	dev := e.use(t, raw, "")
	writeTenantImage(t, tenantImages[0], dev.target)
	rawSnap := e.createSnapshot(t, "raw-snap", raw).GetSnapshotId()
	e.release(t, dev)
	fs := e.createVolume(t, "fs", "ext4", rawVolume, nil).GetVolumeId()
	fsSnap := e.createSnapshot(t, "fs-snap", fs).GetSnapshotId()

	for _, tc := range []struct {
		name   string
		fsType string
		src    *csi.VolumeContentSource
		want   codes.Code
	}{
		{"block snapshot as ext4", "ext4", fromSnapshot(rawSnap), codes.InvalidArgument},
		{"block snapshot as xfs", "xfs", fromSnapshot(rawSnap), codes.InvalidArgument},
		{"block volume cloned as ext4", "ext4", fromVolume(raw), codes.InvalidArgument},
		{"block volume cloned as xfs", "xfs", fromVolume(raw), codes.InvalidArgument},
		{"filesystem snapshot as block", "", fromSnapshot(fsSnap), codes.OK},
		{"filesystem volume cloned as block", "", fromVolume(fs), codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, avail := e.poolState(t), e.capacity(t)
			resp, err := e.tryCreateVolume(t, volumeRequest(strings.ReplaceAll(tc.name, " ", "-"), tc.fsType, rawVolume, tc.src))
			if status.Code(err) != tc.want {
				t.Fatalf("CreateVolume: %v (volume %v), want code %s", err, resp.GetVolume(), tc.want)
			}
			if tc.want == codes.OK {
				return
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "raw block") {
				t.Errorf("the refusal does not say why: %q", msg)
			}
			if after := e.poolState(t); !slices.Equal(before, after) {
				t.Errorf("a refused CreateVolume changed the pool: %v before, %v after", before, after)
			}
			if now := e.capacity(t); now != avail {
				t.Errorf("a refused CreateVolume moved the available capacity from %d to %d", avail, now)
			}
			ctx, cancel := callCtx()
			defer cancel()
			list, err := e.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if n := len(list.GetEntries()); n != 2 {
				t.Errorf("ListVolumes shows %d volumes after the refusal, want the 2 sources", n)
			}
		})
	}
}

// TestBlockVolumeIsNeverStagedAsFilesystem: a PersistentVolume written by
// hand can name a raw block volume with volumeMode Filesystem. Its stage
// would have the node inspect and mount what the tenant wrote, so it is
// refused, saying why, with nothing mounted, probed or changed.
func TestBlockVolumeIsNeverStagedAsFilesystem(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 4*GiB)
	for _, img := range tenantImages {
		t.Run(img.name, func(t *testing.T) {
			raw := e.createVolume(t, "raw-"+img.name, "", rawVolume, nil).GetVolumeId()
			dev := e.use(t, raw, "")
			uuid := writeTenantImage(t, img, dev.target)
			want := fileSHA256(t, dev.target)
			e.release(t, dev)
			kmsg := testpool.OpenKernelLog(t)
			for _, fsType := range []string{"ext4", "xfs", ""} {
				c := capability("ext4")
				c.GetMount().FsType = fsType
				a, err := e.tryStageWith(t, raw, fsType, c)
				if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "raw block") {
					t.Fatalf("mount-mode stage (%q) of a raw block volume: %v; want FailedPrecondition saying it is raw block", fsType, err)
				}
				if mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(a.staging)); err != nil || len(mounts) > 0 {
					t.Errorf("the refused stage left %v mounted at %s (%v)", mounts, a.staging, err)
				}
			}
			if lines := naming(kmsg.Read(t), uuid); len(lines) > 0 {
				t.Errorf("the kernel mounted the tenant's image:\n%s", strings.Join(lines, "\n"))
			}
			dev = e.use(t, raw, "")
			if got := fileSHA256(t, dev.target); got != want {
				t.Errorf("the volume's bytes changed: sha256 %s, was %s", got, want)
			}
		})
	}
}

// TestInUseBlockVolumeIsNotCopiedTorn: on a pool without reflinks a
// snapshot or clone copies the volume's file, which takes a while; a raw
// block volume a pod writes meanwhile has no filesystem to freeze, so the
// copy would mix old and new blocks. Such a copy is refused with a message
// that says what to do, and works once the volume is no longer in use. On
// a reflink pool the clone is one atomic step and is allowed.
func TestInUseBlockVolumeIsNotCopiedTorn(t *testing.T) {
	for _, tc := range []struct {
		pool testpool.Kind
		want codes.Code
	}{
		{testpool.Ext4, codes.FailedPrecondition},
		{testpool.XFSReflink, codes.OK},
	} {
		t.Run(string(tc.pool), func(t *testing.T) {
			e := startInProcess(t, tc.pool, 2*GiB)
			raw := e.createVolume(t, "raw", "", rawVolume, nil).GetVolumeId()
			dev := e.use(t, raw, "")
			ctx, cancel := callCtx()
			defer cancel()
			_, errSnap := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "in-use-snap", SourceVolumeId: raw})
			_, errClone := e.tryCreateVolume(t, volumeRequest("in-use-clone", "", rawVolume, fromVolume(raw)))
			for what, err := range map[string]error{"CreateSnapshot": errSnap, "CreateVolume from the volume": errClone} {
				if status.Code(err) != tc.want {
					t.Errorf("%s of a raw block volume in use: %v, want %s", what, err, tc.want)
				} else if err != nil && !strings.Contains(status.Convert(err).Message(), "reflink") {
					t.Errorf("%s: the refusal does not say what to do: %q", what, status.Convert(err).Message())
				}
			}
			if tc.want == codes.OK {
				return
			}
			e.release(t, dev)
			e.createSnapshot(t, "idle-snap", raw)
			e.createVolume(t, "idle-clone", "", rawVolume, fromVolume(raw))

			// A filesystem volume staged for block access has no
			// filesystem mounted to freeze either.
			fs := e.createVolume(t, "fs", "ext4", rawVolume, nil).GetVolumeId()
			asBlock := e.stageWith(t, fs, "", capability(""))
			_, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "fs-as-block-snap", SourceVolumeId: fs})
			if status.Code(err) != codes.FailedPrecondition {
				t.Errorf("CreateSnapshot of a filesystem volume in use as raw block: %v, want FailedPrecondition", err)
			}
			if err := e.tryUnstage(asBlock); err != nil {
				t.Fatal(err)
			}
			// Mounted, it is frozen for the copy.
			mounted := e.use(t, fs, "ext4")
			e.createSnapshot(t, "fs-mounted-snap", fs)
			e.release(t, mounted)
		})
	}
}
