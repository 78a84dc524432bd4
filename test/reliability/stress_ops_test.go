package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// allow lists the codes a call may answer besides OK. Each is what the
// spec prescribes for a situation other clients can create: Aborted while
// another call holds the volume or snapshot, NotFound once another client
// deleted it, FailedPrecondition for deleting or unstaging what is still
// in use (or publishing what another client just unstaged),
// ResourceExhausted when the pool is full.
func allow(cs ...codes.Code) []codes.Code { return cs }

// volInfo is what the clients know of a volume.
type volInfo struct {
	id, name string
	owner    int // the worker that created it, -1 for a shared volume
	mode     csi.VolumeCapability_AccessMode_Mode
	staging  string // shared volumes have one staging path for everyone
}

// span is one publication of a volume at a target, as the clients saw it:
// from the return of NodePublishVolume to the start of its unpublish.
type span struct {
	since, until time.Time
}

// stress is the state the workers share.
type stress struct {
	e        *env
	c        *caller
	deadline time.Time
	shared   []volInfo

	mu    sync.Mutex
	names map[string]string // volume ID → name, for every CreateVolume that succeeded
	vols  map[string]volInfo
	snaps map[string]string // snapshot ID → source volume ID
	pubs  map[string]map[string]*span
}

// created records a successful CreateVolume and fails the test if the ID
// was ever handed out for another name: a double allocation.
func (s *stress) created(v volInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev, ok := s.names[v.id]; ok && prev != v.name {
		s.c.t.Errorf("double allocation: volume %s returned for %q and for %q", v.id, prev, v.name)
	}
	s.names[v.id] = v.name
	s.vols[v.id] = v
}

func (s *stress) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.vols, id)
}

// published records a publication that returned at end after starting at
// start, and fails the test when a single-writer volume was then already
// published elsewhere for the whole duration of the call.
func (s *stress) published(v volInfo, target string, start, end time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pubs[v.id] == nil {
		s.pubs[v.id] = map[string]*span{}
	}
	if v.mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		for other, sp := range s.pubs[v.id] {
			if other != target && sp.since.Before(start) && (sp.until.IsZero() || sp.until.After(end)) {
				s.c.t.Errorf("single-writer volume %s published at %s while published at %s", v.id, target, other)
			}
		}
	}
	s.pubs[v.id][target] = &span{since: end}
}

func (s *stress) unpublishing(id, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp := s.pubs[id][target]; sp != nil {
		sp.until = time.Now()
	}
}

func (s *stress) createShared(k int) codes.Code {
	v := s.shared[k]
	var got string
	code := s.c.do("create-shared", "CreateVolume", allow(codes.Aborted, codes.ResourceExhausted), func(ctx context.Context) error {
		resp, err := s.e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v.name,
			CapacityRange: &csi.CapacityRange{RequiredBytes: volSize}, VolumeCapabilities: []*csi.VolumeCapability{mountCapability(v.mode)}})
		got = resp.GetVolume().GetVolumeId()
		return err
	})
	if code == codes.OK {
		if got != v.id {
			s.c.t.Errorf("CreateVolume %q returned %s, want %s: IDs must follow from names", v.name, got, v.id)
		}
		s.created(v)
	}
	return code
}

// worker is one client: a CO's controller and node plugin in one.
type worker struct {
	s     *stress
	id    int
	r     *rand.Rand
	own   []volInfo
	snaps []string
	seq   int
}

func (w *worker) next() int { w.seq++; return w.seq }

// run mixes operations until the deadline, then deletes what it owns.
func (w *worker) run() {
	ops := []struct {
		weight int
		fn     func()
	}{
		{3, w.create}, {1, func() { w.s.createShared(w.r.IntN(len(w.s.shared))) }},
		{3, w.snapshot}, {2, w.restore}, {2, w.expand}, {5, w.use},
		{1, func() { w.deleteOwn() }}, {1, w.deleteShared}, {1, w.deleteOthers},
	}
	total := 0
	for _, o := range ops {
		total += o.weight
	}
	for time.Now().Before(w.s.deadline) {
		n := w.r.IntN(total)
		for _, o := range ops {
			if n < o.weight {
				o.fn()
				break
			}
			n -= o.weight
		}
	}
	for len(w.snaps) > 0 {
		w.deleteOwnSnapshot()
	}
	for len(w.own) > 0 {
		if !w.deleteOwn() {
			// Left to the final cleanup, which reports it.
			w.own = w.own[1:]
		}
	}
}

func (w *worker) create() {
	if len(w.own) >= maxOwnVolumes && !w.deleteOwn() {
		return
	}
	v := volInfo{name: fmt.Sprintf("w%d-v%d", w.id, w.next()), owner: w.id, mode: sharedModes[w.r.IntN(len(sharedModes))]}
	w.createVolume("create", v, nil)
}

func (w *worker) restore() {
	w.s.mu.Lock()
	var snap string
	n := 0
	for id := range w.s.snaps {
		if n++; w.r.IntN(n) == 0 {
			snap = id
		}
	}
	w.s.mu.Unlock()
	if snap == "" {
		return
	}
	if len(w.own) >= maxOwnVolumes && !w.deleteOwn() {
		return
	}
	v := volInfo{name: fmt.Sprintf("w%d-r%d", w.id, w.next()), owner: w.id, mode: sharedModes[w.r.IntN(len(sharedModes))]}
	w.createVolume("restore", v, fromSnapshot(snap))
}

func (w *worker) createVolume(op string, v volInfo, src *csi.VolumeContentSource) {
	var vol *csi.Volume
	allowed := allow(codes.ResourceExhausted)
	if src != nil {
		// The snapshot may be deleted by its owner meanwhile.
		allowed = allow(codes.ResourceExhausted, codes.NotFound, codes.Aborted)
	}
	code := w.s.c.do(op, "CreateVolume", allowed, func(ctx context.Context) error {
		resp, err := w.s.e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v.name,
			CapacityRange:       &csi.CapacityRange{RequiredBytes: volSize},
			VolumeCapabilities:  []*csi.VolumeCapability{mountCapability(v.mode)},
			VolumeContentSource: src})
		vol = resp.GetVolume()
		return err
	})
	if code != codes.OK {
		return
	}
	if src != nil && vol.GetContentSource().GetSnapshot().GetSnapshotId() != src.GetSnapshot().GetSnapshotId() {
		w.s.c.t.Errorf("restore %q: content source %v, want %v", v.name, vol.GetContentSource(), src)
	}
	v.id = vol.GetVolumeId()
	w.s.created(v)
	w.own = append(w.own, v)
}

// pick returns one of the worker's volumes, a shared one or, now and
// then, another worker's.
func (w *worker) pick() volInfo {
	switch n := w.r.IntN(10); {
	case n < 5 && len(w.own) > 0:
		return w.own[w.r.IntN(len(w.own))]
	case n < 8:
		return w.s.shared[w.r.IntN(len(w.s.shared))]
	}
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	var v volInfo
	i := 0
	for _, cand := range w.s.vols {
		if i++; w.r.IntN(i) == 0 {
			v = cand
		}
	}
	return v
}

func (w *worker) snapshot() {
	v := w.pick()
	if v.id == "" {
		return
	}
	name := fmt.Sprintf("w%d-s%d", w.id, w.next())
	var snap *csi.Snapshot
	code := w.s.c.do("snapshot", "CreateSnapshot", allow(codes.NotFound, codes.Aborted, codes.ResourceExhausted), func(ctx context.Context) error {
		resp, err := w.s.e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: v.id})
		snap = resp.GetSnapshot()
		return err
	})
	if code != codes.OK {
		return
	}
	if !snap.GetReadyToUse() || snap.GetSourceVolumeId() != v.id {
		w.s.c.t.Errorf("CreateSnapshot %q of %s: got %v", name, v.id, snap)
	}
	w.s.mu.Lock()
	w.s.snaps[snap.GetSnapshotId()] = v.id
	w.s.mu.Unlock()
	w.snaps = append(w.snaps, snap.GetSnapshotId())
	if len(w.snaps) > maxOwnSnapshots {
		w.deleteOwnSnapshot()
	}
}

func (w *worker) deleteOwnSnapshot() {
	id := w.snaps[0]
	// Unlisted first, so that no restore starts from it meanwhile (one
	// that already did holds it: Aborted, retried).
	w.s.mu.Lock()
	delete(w.s.snaps, id)
	w.s.mu.Unlock()
	code := w.s.c.until("delete-snapshot", "DeleteSnapshot", nil, func(ctx context.Context) error {
		_, err := w.s.e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		return err
	})
	if code == codes.OK {
		w.snaps = w.snaps[1:]
	}
}

func (w *worker) expand() {
	v := w.pick()
	if v.id == "" {
		return
	}
	w.expandVolume(v)
}

// expandVolume asks for a little more than the volume's first size; a
// volume already larger keeps its size, which is success too.
func (w *worker) expandVolume(v volInfo) int64 {
	want := volSize + int64(1+w.r.IntN(64))*MiB
	var got int64
	code := w.s.c.do("expand", "ControllerExpandVolume", allow(codes.NotFound, codes.Aborted, codes.ResourceExhausted), func(ctx context.Context) error {
		resp, err := w.s.e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.id,
			CapacityRange: &csi.CapacityRange{RequiredBytes: want}})
		got = resp.GetCapacityBytes()
		return err
	})
	if code == codes.OK && got < want {
		w.s.c.t.Errorf("ControllerExpandVolume %s to %d: granted %d", v.id, want, got)
	}
	if code != codes.OK {
		return 0
	}
	return got
}

// deleteOwn deletes the worker's oldest volume. Nobody else stages it, so
// FailedPrecondition would mean its loop device leaked.
func (w *worker) deleteOwn() bool {
	if len(w.own) == 0 {
		return true
	}
	v := w.own[0]
	code := w.s.c.until("delete", "DeleteVolume", nil, func(ctx context.Context) error {
		_, err := w.s.e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
		return err
	})
	if code != codes.OK {
		return false
	}
	w.own = w.own[1:]
	w.s.forget(v.id)
	if _, err := os.Stat(filepath.Join(w.s.e.pool, "volumes", v.id)); !os.IsNotExist(err) {
		w.s.c.t.Errorf("volume %s is still in the pool after DeleteVolume succeeded: %v", v.id, err)
	}
	return true
}

// deleteShared deletes a shared volume, which someone may be using
// (FailedPrecondition); createShared brings it back under the same ID.
func (w *worker) deleteShared() {
	v := w.s.shared[w.r.IntN(len(w.s.shared))]
	w.s.c.do("delete-shared", "DeleteVolume", allow(codes.Aborted, codes.FailedPrecondition), func(ctx context.Context) error {
		_, err := w.s.e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
		return err
	})
}

// deleteOthers deletes some other worker's volume, which its owner may be
// using; the owner then meets NotFound.
func (w *worker) deleteOthers() {
	v := w.pick()
	if v.id == "" || v.owner == w.id || v.owner < 0 {
		return
	}
	code := w.s.c.do("delete-others", "DeleteVolume", allow(codes.Aborted, codes.FailedPrecondition), func(ctx context.Context) error {
		_, err := w.s.e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
		return err
	})
	if code == codes.OK {
		w.s.forget(v.id)
	}
}

func codeOf(err error) codes.Code { return status.Code(err) }
