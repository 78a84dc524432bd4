package reliability

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/faults"
	"github.com/tarn-csi/tarn/test/testpool"
)

// TestFaultPoints kills a faultinject build of `tarn serve` at every named
// fault point of the loop backend and the node service (package faults),
// one point per subtest: the driver is restarted armed at the point, the
// operation that reaches it is called, and the driver must die there by
// SIGKILL; a point that is never reached fails. Then, as after a crash, an
// unarmed driver starts on the same pool and the call is retried as the
// sidecars would, with the same request. After the restart and after the
// retry: the object is complete with intact data (a volume staged and its
// data checksummed, a snapshot restored and checksummed) or absent, and
// the retry succeeds at once; .staging and .trash are swept; no loop
// device or mount is left for anything incomplete or deleted; a source
// filesystem frozen at the kill is thawed; ListVolumes, ListSnapshots and
// GetCapacity agree with the pool, and a volume sharing extents is
// recorded as such. Each point's run ends with the pool and the node as
// they were before it.
func TestFaultPoints(t *testing.T) {
	e := newEnv(t, 4*GiB)
	kernelBefore := testpool.Snapshot(t)
	start := time.Now()
	// A production build ignores the arming: the fixture is built right
	// through the point.
	e.serveWith(t, e.work, faults.EnvPoint+"=create-volume.after-staging-dir")
	c := &crasher{t: t, e: e, points: map[string]map[string]int{}, early: map[string]int{}, retryErrors: map[string]int{}}
	fx := newFaultFixture(c)
	if e.proc.Exited() || !strings.Contains(e.proc.Out.Since(0), "Ignoring fault injection") {
		t.Fatalf("a tarn built without the faultinject tag did not ignore %s", faults.EnvPoint)
	}
	e.proc.Terminate(t, terminateWait)
	e.binary = faultTarn(t)
	e.serve(t, e.work)

	scenarios := map[string]func(*faultRun){
		"create-volume":   (*faultRun).killCreateVolume,
		"create-snapshot": (*faultRun).killCreateSnapshot,
		"delete-volume":   (*faultRun).killDeleteVolume,
		"delete-snapshot": (*faultRun).killDeleteSnapshot,
		"expand-volume":   (*faultRun).killExpandVolume,
		"stage-volume":    (*faultRun).killStageVolume,
		"unstage-volume":  (*faultRun).killUnstageVolume,
	}
	var durations []string
	reached := 0
	for _, p := range faults.Known() {
		if p.Backends&faults.Loop == 0 {
			continue
		}
		op, _, _ := strings.Cut(p.Name, ".")
		scenario := scenarios[op]
		if scenario == nil {
			t.Errorf("fault point %s: no scenario reaches it", p.Name)
			continue
		}
		began, ran := time.Now(), false
		ok := t.Run(p.Name, func(t *testing.T) {
			c.t = t
			r := &faultRun{crasher: c, fx: fx, point: p.Name}
			scenario(r)
			r.checkBaseline()
			ran = true
		})
		c.t = t
		if !ok {
			break
		}
		if !ran {
			continue // left out by -run
		}
		reached++
		durations = append(durations, fmt.Sprintf("%s %v", p.Name, time.Since(began).Round(10*time.Millisecond)))
	}
	fx.finish()
	t.Logf("fault points: %d reached, killed at and recovered from in %v:\n  %s", reached,
		time.Since(start).Round(100*time.Millisecond), strings.Join(durations, "\n  "))
	for _, leak := range testpool.Diff(kernelBefore, testpool.Snapshot(t)) {
		t.Errorf("left behind: %s", leak)
	}
}

// faultFixture is what the points share: a volume holding data and a
// snapshot of it taken while it was mounted, whose XFS log the first
// mount of a restore replays.
type faultFixture struct {
	c     *crasher
	src   string
	snap  string
	data  string // sha256 of the file "data" on src and snap
	paths int
}

func newFaultFixture(c *crasher) *faultFixture {
	fx := &faultFixture{c: c}
	fx.src = c.createVolume("fault-source", nil)
	staging := fx.path("source")
	c.stage(fx.src, staging)
	fx.data = writeRandom(c.t, filepath.Join(staging, "data"), dataSize)
	fx.snap = c.createSnapshot("fault-source-snap", fx.src)
	c.unstage(fx.src, staging)
	return fx
}

// path returns a new path in the work directory, named after base.
func (fx *faultFixture) path(base string) string {
	fx.paths++
	return filepath.Join(fx.c.e.work, fmt.Sprintf("%s-%d", base, fx.paths))
}

// name returns a new name for a volume or snapshot.
func (fx *faultFixture) name() string {
	return filepath.Base(fx.path("fault"))
}

func (fx *faultFixture) finish() {
	c := fx.c
	c.deleteSnapshot(fx.snap)
	c.deleteVolume(fx.src)
	for _, dir := range []string{"volumes", "snapshots", ".staging", ".trash"} {
		if left := c.e.poolEntries(c.t, dir); len(left) > 0 {
			c.t.Errorf("pool/%s at the end: %v, want it empty", dir, left)
		}
	}
}

// killCreateVolume: CreateVolume from the snapshot, which reaches every point
// of building a volume, the clone included.
func (r *faultRun) killCreateVolume() {
	name := r.fx.name()
	id := backend.VolumeIDFor(name)
	call := func(ctx context.Context) error {
		resp, err := r.e.ctrl.CreateVolume(ctx, volumeRequest(name, fromSnapshot(r.fx.snap)))
		if err == nil {
			v := resp.GetVolume()
			if v.GetVolumeId() != id || v.GetCapacityBytes() != volSize || v.GetContentSource().GetSnapshot().GetSnapshotId() != r.fx.snap {
				r.t.Errorf("CreateVolume answered %v", v)
			}
		}
		return err
	}
	r.killAt(call, func() string { return r.objectPhase("volumes", id) + r.stagingContents() })
	r.restart()
	r.retry("CreateVolume from a snapshot", call)
	r.verify(id, r.fx.data)
	r.deleteVolume(id)
}

// killCreateSnapshot: CreateSnapshot of a mounted volume that shares no
// extents yet. Where the point lies inside the freeze, the filesystem must
// be frozen at the kill (a write blocks), and the restarted driver must
// thaw it (the write goes through).
func (r *faultRun) killCreateSnapshot() {
	src := r.createVolume(r.fx.name(), nil)
	staging := r.fx.path("snapshot-source")
	r.stage(src, staging)
	// No cleanup may meet a frozen filesystem: its unmount would hang.
	r.t.Cleanup(func() { _ = runQuiet("fsfreeze", "-u", staging) })
	sum := writeRandom(r.t, filepath.Join(staging, "data"), MiB)
	name := r.fx.name()
	id := backend.SnapshotIDFor(name)
	call := func(ctx context.Context) error {
		resp, err := r.e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src})
		if s := resp.GetSnapshot(); err == nil && (s.GetSnapshotId() != id || s.GetSourceVolumeId() != src || !s.GetReadyToUse()) {
			r.t.Errorf("CreateSnapshot answered %v", s)
		}
		return err
	}
	r.killAt(call, func() string { return r.objectPhase("snapshots", id) + r.stagingContents() })
	// Only the points between freeze and thaw may leave the source
	// frozen; a write then blocks until the restarted driver thaws it.
	write := startWrite(staging)
	frozen := r.instant() == "before-clone" || r.instant() == "after-clone"
	wait := 10 * time.Second
	if frozen {
		wait = 300 * time.Millisecond
	}
	select {
	case err := <-write:
		if frozen {
			r.t.Errorf("a write to the source went through (%v) while the driver lay dead at %s: it was not frozen", err, r.point)
		} else if err != nil {
			r.t.Errorf("write to the source after the kill: %v", err)
		}
		write = nil
	case <-time.After(wait):
		if !frozen {
			r.t.Errorf("the source is frozen after a kill at %s, outside the freeze", r.point)
		}
	}
	r.restart()
	if write != nil {
		select {
		case err := <-write:
			if err != nil {
				r.t.Errorf("write to the source after the restart: %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = runQuiet("fsfreeze", "-u", staging)
			r.t.Fatalf("the source is still frozen 10s after the driver restarted")
		}
		if !strings.Contains(r.e.proc.Out.Since(0), "Thawed filesystem left frozen by an interrupted snapshot") {
			r.t.Errorf("the restarted driver did not report thawing the source")
		}
	}
	r.retry("CreateSnapshot of a mounted volume", call)
	restored := r.createVolume(r.fx.name(), fromSnapshot(id))
	r.verify(restored, sum)
	r.deleteVolume(restored)
	r.deleteSnapshot(id)
	r.unstage(src, staging)
	r.deleteVolume(src)
}

// killDeleteVolume: DeleteVolume of a volume holding data, which must be
// whole if it is still there after the restart.
func (r *faultRun) killDeleteVolume() {
	id := r.createVolume(r.fx.name(), fromSnapshot(r.fx.snap))
	call := func(ctx context.Context) error {
		_, err := r.e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	}
	r.killAt(call, func() string { return r.objectPhase("volumes", id) })
	r.restart()
	if exists(filepath.Join(r.e.pool, "volumes", id)) {
		r.verify(id, r.fx.data)
	}
	r.retry("DeleteVolume", call)
	if exists(filepath.Join(r.e.pool, "volumes", id)) {
		r.t.Errorf("volume %s is in the pool after DeleteVolume succeeded", id)
	}
}

// killDeleteSnapshot: DeleteSnapshot, whose snapshot must restore whole if it
// is still there after the restart.
func (r *faultRun) killDeleteSnapshot() {
	id := r.createSnapshot(r.fx.name(), r.fx.src)
	call := func(ctx context.Context) error {
		_, err := r.e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		return err
	}
	r.killAt(call, func() string { return r.objectPhase("snapshots", id) })
	r.restart()
	if exists(filepath.Join(r.e.pool, "snapshots", id)) {
		restored := r.createVolume(r.fx.name(), fromSnapshot(id))
		r.verify(restored, r.fx.data)
		r.deleteVolume(restored)
	}
	r.retry("DeleteSnapshot", call)
	if exists(filepath.Join(r.e.pool, "snapshots", id)) {
		r.t.Errorf("snapshot %s is in the pool after DeleteSnapshot succeeded", id)
	}
}

// killExpandVolume: ControllerExpandVolume of an unstaged volume; the next
// stage grows its filesystem, and its data is intact.
func (r *faultRun) killExpandVolume() {
	id := r.createVolume(r.fx.name(), fromSnapshot(r.fx.snap))
	size := r.volumeSize(id)
	want := size + 64*MiB
	call := func(ctx context.Context) error {
		_, err := r.e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
			CapacityRange: &csi.CapacityRange{RequiredBytes: want}})
		return err
	}
	r.killAt(call, func() string { return r.expandPhase(id, size) })
	r.restart()
	switch got := r.volumeSize(id); {
	case got != size && got != want:
		r.t.Errorf("after the restart volume %s is %d bytes, neither the old %d nor the new %d", id, got, size, want)
	case fileSize(r.t, r.e.volumeFile(id)) < got:
		r.t.Errorf("after the restart volume %s's file is smaller than its recorded %d bytes", id, got)
	}
	r.retry("ControllerExpandVolume", call)
	if got := r.volumeSize(id); got < want {
		r.t.Errorf("volume %s is %d bytes after its expansion to %d succeeded", id, got, want)
	}
	r.verify(id, r.fx.data)
	r.deleteVolume(id)
}

// killStageVolume: NodeStageVolume of a blank volume (mkfs before the mount)
// for before-mount, otherwise of a volume restored into a larger size,
// whose filesystem the stage must grow.
func (r *faultRun) killStageVolume() {
	blank := r.instant() == "before-mount"
	var id, sum string
	if blank {
		id = r.createVolume(r.fx.name(), nil)
	} else {
		id = r.createLarger(r.fx.name(), volSize+64*MiB)
		sum = r.fx.data
	}
	staging := r.fx.path("stage")
	call := func(ctx context.Context) error {
		_, err := r.e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)})
		return err
	}
	r.killAt(call, func() string { return r.nodePhase(id, staging) + formatted(r.t, r.e.volumeFile(id)) })
	r.restart()
	r.retry("NodeStageVolume", call)
	r.checkStaged(id, staging)
	r.checkFilesystemSize(id, staging)
	if blank {
		sum = writeRandom(r.t, filepath.Join(staging, "data"), MiB)
	} else if got := sha256Of(r.t, filepath.Join(staging, "data"), -1); got != sum {
		r.t.Errorf("staged volume %s: data sha256 %s, want %s", id, got, sum)
	}
	r.unstage(id, staging)
	r.checkUnstaged(id, staging)
	if blank {
		r.verify(id, sum)
	}
	r.deleteVolume(id)
}

// killUnstageVolume: NodeUnstageVolume of a volume holding data, which is
// intact when staged again.
func (r *faultRun) killUnstageVolume() {
	id := r.createVolume(r.fx.name(), fromSnapshot(r.fx.snap))
	staging := r.fx.path("unstage")
	r.stage(id, staging)
	call := func(ctx context.Context) error {
		_, err := r.e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		return err
	}
	r.killAt(call, func() string { return r.nodePhase(id, staging) })
	r.restart()
	r.retry("NodeUnstageVolume", call)
	r.checkUnstaged(id, staging)
	r.verify(id, r.fx.data)
	r.deleteVolume(id)
}

// createLarger restores the fixture's snapshot into a volume of size.
func (r *faultRun) createLarger(name string, size int64) string {
	r.t.Helper()
	var id string
	r.must("CreateVolume "+name, func(ctx context.Context) error {
		req := volumeRequest(name, fromSnapshot(r.fx.snap))
		req.CapacityRange.RequiredBytes = size
		resp, err := r.e.ctrl.CreateVolume(ctx, req)
		id = resp.GetVolume().GetVolumeId()
		return err
	})
	return id
}
