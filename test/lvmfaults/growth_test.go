package lvmfaults

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/test/harness"
)

// TestOnlineGrowth grows a mounted filesystem on an LV the way Kubernetes
// does, through ControllerExpandVolume then NodeExpandVolume on the staging
// path, for each LV type and filesystem: the filesystem the pod sees must
// grow while mounted, and keep its data. (Sanity only checks that the
// calls answer; the backend tests only that the LV grew.)
func TestOnlineGrowth(t *testing.T) {
	e := newEnv(t)
	e.serve()
	// mkfs.xfs refuses less than 300 MiB.
	const size, grown = 320 * MiB, 448 * MiB
	// No subtests: the harness reports through the parent test.
	for _, typ := range []string{thin, thick} {
		for _, fs := range []string{"ext4", "xfs"} {
			func() {
				t.Logf("%s volume, %s", typ, fs)
				name := e.name("grow-" + typ + "-" + fs)
				capability := &csi.VolumeCapability{
					AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
					AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
				}
				e.must("create", "CreateVolume "+name, e.createVolumeCall(&csi.CreateVolumeRequest{
					Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
					VolumeCapabilities: []*csi.VolumeCapability{capability},
					Parameters:         map[string]string{"type": typ, "fsType": fs},
				}))
				id := backend.VolumeIDFor(name)
				e.known[id] = true
				staging := e.path("grow-staging-" + typ + "-" + fs)
				e.must("stage", "NodeStageVolume "+id, func(ctx context.Context) error {
					_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id,
						StagingTargetPath: staging, VolumeCapability: capability})
					return err
				})
				sum := writeRandom(t, filepath.Join(staging, "data"), 8*MiB)
				before := harness.FilesystemSize(t, staging)

				e.must("expand", "ControllerExpandVolume "+id, e.expandCall(id, grown))
				e.must("node-expand", "NodeExpandVolume "+id, func(ctx context.Context) error {
					resp, err := e.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id,
						VolumePath: staging, StagingTargetPath: staging, VolumeCapability: capability,
						CapacityRange: &csi.CapacityRange{RequiredBytes: grown}})
					if err == nil && resp.GetCapacityBytes() < grown {
						t.Errorf("%s/%s: NodeExpandVolume answered %d bytes, want at least %d", typ, fs, resp.GetCapacityBytes(), grown)
					}
					return err
				})
				// The filesystem's own overhead differs by type; what
				// matters is that it gained (nearly) all the new space.
				after := harness.FilesystemSize(t, staging)
				if gained := after - before; gained < (grown-size)*9/10 {
					t.Errorf("%s: mounted %s grew from %d to %d bytes, want about %d more", typ, fs, before, after, grown-size)
				}
				if got := sha256Of(t, filepath.Join(staging, "data")); got != sum {
					t.Errorf("%s/%s: data changed across the growth: sha256 %s, want %s", typ, fs, got, sum)
				}
				e.unstage(id, staging)
				e.deleteVolume(id)
			}()
		}
	}
}
