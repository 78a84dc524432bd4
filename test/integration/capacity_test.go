package integration

import (
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/pkg/driver"
	"github.com/tarn-csi/tarn/test/testpool"
)

// capacitySlack is how far GetCapacity may move for reasons other than the
// volume a test creates: the pool filesystem's own metadata and the
// volume's record.
const capacitySlack = 8 * MiB

// TestCapacity checks that GetCapacity tells the scheduler the truth on a
// small pool: what it reports can be provisioned, what it does not is
// refused before anything is written, and each volume costs its size.
func TestCapacity(t *testing.T) {
	const poolSize = 2 * GiB
	e := startInProcess(t, testpool.XFSReflink, poolSize)

	avail := e.capacity(t)
	if avail <= 0 || avail >= poolSize {
		t.Fatalf("GetCapacity on an empty %d-byte pool: %d, want more than 0 and less than the pool", poolSize, avail)
	}
	ctx, cancel := callCtx()
	other, err := e.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{
		AccessibleTopology: &csi.Topology{Segments: map[string]string{driver.TopologyKey: "some-other-node"}}})
	cancel()
	if err != nil || other.GetAvailableCapacity() != 0 {
		t.Errorf("GetCapacity for another node's topology: %v, %v; want 0 bytes", other, err)
	}

	for _, tc := range []struct {
		name string
		size int64
	}{
		{"far beyond", 4 * avail},
		{"one MiB beyond", avail + MiB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.poolState(t)
			_, err := e.tryCreateVolume(t, volumeRequest("too-big-"+tc.name, "ext4", tc.size, nil))
			wantCode(t, err, codes.ResourceExhausted, "CreateVolume of more than is available")
			if after := e.poolState(t); !slices.Equal(before, after) {
				t.Errorf("a refused CreateVolume changed the pool: %v before, %v after", before, after)
			}
		})
	}

	const size = 512 * MiB
	id := e.createVolume(t, "half-gig", "ext4", size, nil).GetVolumeId()
	afterCreate := e.capacity(t)
	if drop := avail - afterCreate; drop < size-capacitySlack || drop > size+capacitySlack {
		t.Errorf("available capacity dropped by %d bytes (%d -> %d) for a %d-byte volume", drop, avail, afterCreate, size)
	}

	// A volume's reservation already covers the blocks it fills, so using
	// it must not make the pool look fuller.
	a := e.use(t, id, "ext4")
	writeRandomFile(t, a.path("data"), 64*MiB)
	e.release(t, a)
	used := e.capacity(t)
	if used < afterCreate-capacitySlack || used > afterCreate+capacitySlack {
		t.Errorf("available capacity moved from %d to %d bytes when data was written into a volume", afterCreate, used)
	}
	// The filled blocks count once, against free space and no longer
	// against the volume's promise: (nearly) all that GetCapacity reports
	// can be had, which is more than free space minus every volume's size.
	_, err = e.tryCreateVolume(t, volumeRequest("rest-and-more", "ext4", used+MiB, nil))
	wantCode(t, err, codes.ResourceExhausted, "CreateVolume of one MiB more than GetCapacity reported")
	rest := e.createVolume(t, "rest", "ext4", used-capacitySlack, nil).GetVolumeId()
	if left := e.capacity(t); left > 2*capacitySlack {
		t.Errorf("GetCapacity after a volume of all that was available: %d bytes, want about 0", left)
	}
	ctx, cancel = callCtx()
	_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: rest})
	cancel()
	if err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}

	ctx, cancel = callCtx()
	_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	cancel()
	if err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	// xfs frees the blocks of an unlinked file in the background, so the
	// pool's free space comes back a moment after the delete.
	deadline := time.Now().Add(10 * time.Second)
	for {
		back := e.capacity(t)
		if back >= avail-capacitySlack && back <= avail+capacitySlack {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("available capacity 10s after deleting the only volume: %d bytes, was %d on the empty pool", back, avail)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// poolState lists what the pool holds in every directory the backend
// writes, so that a refused call can be shown to have left nothing.
func (e *env) poolState(t *testing.T) []string {
	t.Helper()
	var all []string
	for _, dir := range []string{"volumes", "snapshots", ".staging", ".trash"} {
		for _, name := range e.poolEntries(t, dir) {
			all = append(all, dir+"/"+name)
		}
	}
	return all
}

// TestTopology checks that a volume is only created where the CO requires
// it to be reachable, and says where it is.
func TestTopology(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, GiB)
	here := &csi.Topology{Segments: map[string]string{driver.TopologyKey: nodeID}}
	elsewhere := &csi.Topology{Segments: map[string]string{driver.TopologyKey: "some-other-node"}}

	ctx, cancel := callCtx()
	info, err := e.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if got := info.GetAccessibleTopology().GetSegments(); len(got) != 1 || got[driver.TopologyKey] != nodeID {
		t.Errorf("NodeGetInfo topology: %v, want {%s: %s}", got, driver.TopologyKey, nodeID)
	}

	for _, tc := range []struct {
		name string
		req  *csi.TopologyRequirement
		want codes.Code
	}{
		{"another node", &csi.TopologyRequirement{Requisite: []*csi.Topology{elsewhere}, Preferred: []*csi.Topology{elsewhere}}, codes.ResourceExhausted},
		{"this node", &csi.TopologyRequirement{Requisite: []*csi.Topology{here}, Preferred: []*csi.Topology{here}}, codes.OK},
		{"either, other preferred", &csi.TopologyRequirement{Requisite: []*csi.Topology{elsewhere, here}, Preferred: []*csi.Topology{elsewhere, here}}, codes.OK},
		{"no requirement", nil, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.poolState(t)
			req := volumeRequest("topology-"+tc.name, "ext4", 16*MiB, nil)
			req.AccessibilityRequirements = tc.req
			resp, err := e.tryCreateVolume(t, req)
			wantCode(t, err, tc.want, "CreateVolume")
			if tc.want != codes.OK {
				if after := e.poolState(t); !slices.Equal(before, after) {
					t.Errorf("a refused CreateVolume changed the pool: %v before, %v after", before, after)
				}
				return
			}
			topo := resp.GetVolume().GetAccessibleTopology()
			if len(topo) != 1 || len(topo[0].GetSegments()) != 1 || topo[0].GetSegments()[driver.TopologyKey] != nodeID {
				t.Errorf("accessible topology %v, want exactly {%s: %s}", topo, driver.TopologyKey, nodeID)
			}
		})
	}
}
