package lvmfaults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/faults"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// TestLVMCrashSafety kills a faultinject build of `tarn serve --backend
// lvm` in the middle of operations on thin and thick volumes, then starts
// it again unarmed on the same VG and socket and retries the call with the
// same request, as the CSI sidecars would. The kills, one subtest each:
//
//   - point/<type>/<point>: at each of the LVM backend's fault points
//     (package faults), for thin and thick volumes; the driver kills
//     itself there and must have died of SIGKILL at that point, leaving
//     the LV in the state the point's name promises. With
//     TARN_LVM_NODE_POINTS=1 also at the node service's points (thin
//     only: that code is the driver's, shared with the loop backend);
//   - in-copy/thick: while a thick snapshot copies a mounted volume (its
//     filesystem frozen) and while a thick restore copies that snapshot
//     (activated for the copy);
//   - random/<type>/<operation>: with TARN_LVM_CRASH_ITERATIONS=n, n
//     kills at random instants of a create, restore, snapshot of a mounted
//     volume, expand and delete, per type.
//
// After the restart and after the retry: the object is complete with its
// data intact (a volume staged and its files checksummed, a snapshot
// restored and checksummed) or absent (a delete), and the retry succeeds
// at its first real answer; no LV lacking tarn.complete is left (the
// start-up sweep removed it), and ListVolumes and ListSnapshots, which
// are watched while an armed create runs, never show one; GetCapacity
// matches what LVM reports, and is back to where it was once the object
// is gone; no mount is left, no filesystem frozen, and no LV active that
// is neither staged nor being staged. Each run ends with the VG as it
// found it.
func TestLVMCrashSafety(t *testing.T) {
	e := newEnv(t)
	start := time.Now()
	e.serve()
	fx := newFixture(e)
	baseThin, baseThick := e.checkVG(true)
	t.Logf("fixture ready in %v; capacity: thin %d MiB, thick %d MiB", time.Since(start).Round(100*time.Millisecond),
		baseThin/MiB, baseThick/MiB)

	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("TARN_CRASH_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("TARN_CRASH_SEED=%q: want an unsigned integer", v)
		}
		seed = n
	}
	iterations := 0
	if v := os.Getenv("TARN_LVM_CRASH_ITERATIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			t.Fatalf("TARN_LVM_CRASH_ITERATIONS=%q: want a count", v)
		}
		iterations = n
	}
	nodePoints := os.Getenv("TARN_LVM_NODE_POINTS") != ""
	rng := rand.New(rand.NewPCG(seed, 0x1f3))
	t.Logf("random kills: %d per operation and type, seed %d (TARN_CRASH_SEED replays it)", iterations, seed)

	var timings []string
	landed := map[string]map[string]int{}
	runOne := func(name, typ, point string, scenario func(*run)) bool {
		began := time.Now()
		ran := false
		ok := t.Run(name, func(t *testing.T) {
			e.t = t
			e.trace()
			r := &run{env: e, fx: fx, typ: typ, point: point, rng: rng, landed: landed}
			scenario(r)
			if thinCap, thickCap := e.checkVG(false); thinCap != baseThin || thickCap != baseThick {
				t.Errorf("capacity after the run: thin %d, thick %d; before: thin %d, thick %d", thinCap, thickCap, baseThin, baseThick)
			}
			e.trace()
			ran = true
		})
		e.t = t
		if ran {
			timings = append(timings, fmt.Sprintf("%-46s %v", name, time.Since(began).Round(100*time.Millisecond)))
		}
		return ok
	}

	scenarios := map[string]func(*run){
		"create-volume":   (*run).pointCreateVolume,
		"create-snapshot": (*run).pointCreateSnapshot,
		"delete-volume":   (*run).pointDeleteVolume,
		"delete-snapshot": (*run).pointDeleteSnapshot,
		"stage-volume":    (*run).pointStageVolume,
		"unstage-volume":  (*run).pointUnstageVolume,
	}
	failed := false
points:
	for _, typ := range []string{thin, thick} {
		for _, p := range faults.Known() {
			if p.Backends&faults.LVM == 0 {
				continue
			}
			op, _, _ := strings.Cut(p.Name, ".")
			scenario := scenarios[op]
			if scenario == nil {
				t.Errorf("fault point %s: no scenario reaches it", p.Name)
				continue
			}
			// The node service's points are the driver's, the same for
			// both types (attaching is lvchange either way) and tested
			// with the loop backend: thin only, and only when asked.
			if p.Backends&faults.Loop != 0 && (typ != thin || !nodePoints) {
				continue
			}
			if !runOne("point/"+typ+"/"+p.Name, typ, p.Name, scenario) {
				failed = true
				break points
			}
		}
	}
	random := []struct {
		op  string
		run func(*run)
	}{
		{"create", (*run).randomCreate}, {"restore", (*run).randomRestore}, {"snapshot", (*run).randomSnapshot},
		{"expand", (*run).randomExpand}, {"delete", (*run).randomDelete},
	}
random:
	for i := 0; i < iterations && !failed; i++ {
		for _, typ := range []string{thin, thick} {
			for _, op := range random {
				if !runOne(fmt.Sprintf("random/%s/%s", typ, op.op), typ, "", op.run) {
					failed = true
					break random
				}
			}
		}
	}
	if !failed {
		failed = !runOne("in-copy/thick", thick, "", (*run).inCopy)
	}
	if !failed {
		e.t = t
		fx.finish()
	}
	var report []string
	for op, states := range landed {
		var parts []string
		for s, n := range states {
			parts = append(parts, fmt.Sprintf("%s=%d", s, n))
		}
		sort.Strings(parts)
		report = append(report, fmt.Sprintf("%-16s %s", op, strings.Join(parts, ", ")))
	}
	sort.Strings(report)
	if len(report) > 0 {
		t.Logf("random kills, the state each left:\n  %s", strings.Join(report, "\n  "))
	}
	t.Logf("%d runs in %v:\n  %s", len(timings), time.Since(start).Round(100*time.Millisecond), strings.Join(timings, "\n  "))
}

// fixture is what the runs share, per volume type: a volume that stays
// staged (so snapshots are taken of a mounted filesystem), and a snapshot
// of it to restore from.
type fixture struct {
	e         *env
	src       map[string]string
	staging   map[string]string
	snap      map[string]string
	srcFiles  map[string]files // what src holds now
	snapFiles map[string]files // what snap holds
}

func newFixture(e *env) *fixture {
	fx := &fixture{e: e, src: map[string]string{}, staging: map[string]string{}, snap: map[string]string{},
		srcFiles: map[string]files{}, snapFiles: map[string]files{}}
	for _, typ := range []string{thin, thick} {
		src := e.createVolume(e.name("source-"+typ), typ, "")
		staging := e.path("source-" + typ + "-staging")
		e.stage(src, staging)
		e.staged[src] = staging
		fx.src[typ], fx.staging[typ] = src, staging
		fx.srcFiles[typ] = files{"data": writeRandom(e.t, filepath.Join(staging, "data"), MiB)}
		fx.snap[typ] = e.createSnapshot(e.name("source-"+typ+"-snap"), src)
		fx.snapFiles[typ] = fx.srcFiles[typ]
	}
	return fx
}

func (fx *fixture) finish() {
	e := fx.e
	for _, typ := range []string{thin, thick} {
		e.deleteSnapshot(fx.snap[typ])
		e.unstage(fx.src[typ], fx.staging[typ])
		delete(e.staged, fx.src[typ])
		e.deleteVolume(fx.src[typ])
	}
	e.checkVG(true)
	if len(e.known) > 0 {
		e.t.Errorf("objects left at the end: %v", e.known)
	}
}

// addToSource writes a new file into the staged source of the type and
// returns what the source then holds.
func (fx *fixture) addToSource(typ string) files {
	name := fx.e.name("file")
	fx.srcFiles[typ] = fx.srcFiles[typ].with(name, writeRandom(fx.e.t, filepath.Join(fx.staging[typ], name), 256<<10))
	return fx.srcFiles[typ]
}

// run is one kill and its recovery.
type run struct {
	*env
	fx     *fixture
	typ    string
	point  string // for point/ runs
	rng    *rand.Rand
	landed map[string]map[string]int
}

// ---- kills at named points -----------------------------------------------------

// phaseAtKill is the state each point leaves the object's LV in, read
// right after the kill: the proof that the point lies where its name says.
// The node points also say whether the staging path is mounted.
var phaseAtKill = map[string]map[string]string{
	// Restores: a thin clone is made active; a linear LV always is.
	"create-volume.after-lvcreate":  {thin: "incomplete, active", thick: "incomplete, active"},
	"create-volume.before-complete": {thin: "incomplete, inactive", thick: "incomplete, inactive"},
	// Snapshots of a mounted volume: a thin one keeps the activation
	// skip flag; a thick one is a linear LV, deactivated after the copy.
	"create-snapshot.after-lvcreate":  {thin: "incomplete, inactive", thick: "incomplete, active"},
	"create-snapshot.before-complete": {thin: "incomplete, inactive", thick: "incomplete, inactive"},
	"delete-volume.before-lvremove":   {thin: "complete, inactive", thick: "complete, inactive"},
	"delete-snapshot.before-lvremove": {thin: "complete, inactive", thick: "complete, inactive"},
	"stage-volume.after-attach":       {thin: "complete, active, unmounted, holding ext4"},
	"stage-volume.before-mount":       {thin: "complete, active, unmounted, holding ext4"}, // a blank volume: after mkfs
	"stage-volume.after-mount":        {thin: "complete, active, mounted, holding ext4"},
	"unstage-volume.after-unmount":    {thin: "complete, active, unmounted, holding ext4"},
}

// killAt stops the driver, starts it again armed at the run's point, and
// makes call, which must reach the point: the driver SIGKILLs itself there
// and the call fails. When watch is set, ListVolumes and ListSnapshots are
// called meanwhile and must never show id. It returns the LV's state
// right after the kill.
func (r *run) killAt(id string, watch bool, call func(ctx context.Context) error) string {
	t := r.t
	t.Helper()
	r.proc.Terminate(t, time.Minute)
	r.serve(faults.EnvPoint + "=" + r.point)
	p := r.proc
	stop, watched := make(chan struct{}), make(chan []string, 1)
	go func() {
		var shown []string
		defer func() { watched <- shown }()
		for watch {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			vols, err1 := r.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
			snaps, err2 := r.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
			cancel()
			for _, v := range vols.GetEntries() {
				if v.GetVolume().GetVolumeId() == id {
					shown = append(shown, "ListVolumes")
				}
			}
			for _, s := range snaps.GetEntries() {
				if s.GetSnapshot().GetSnapshotId() == id {
					shown = append(shown, "ListSnapshots")
				}
			}
			if err1 != nil || err2 != nil {
				return // the driver is gone
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	ctx, cancel := callCtx()
	err := call(ctx)
	cancel()
	close(stop)
	r.mark("armed call")
	if shown := <-watched; len(shown) > 0 {
		t.Errorf("%v showed %s while it was being built", shown, id)
	}
	wait := 30 * time.Second
	if err == nil {
		wait = time.Second
	}
	select {
	case <-p.Done():
	case <-time.After(wait):
		r.kill()
		t.Fatalf("the call returned %v and the driver kept running: %s was never reached", err, r.point)
	}
	if err == nil {
		t.Fatalf("the call succeeded, then the driver died (%v): %s was reached after the call", p.Err(), r.point)
	}
	var exit *exec.ExitError
	if !errors.As(p.Err(), &exit) {
		t.Fatalf("the driver ended with %v, not SIGKILL", p.Err())
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the driver ended with %v, not SIGKILL", p.Err())
	}
	if out := p.Out.Since(0); !strings.Contains(out, "Fault point reached") || !strings.Contains(out, `point="`+r.point+`"`) {
		t.Fatalf("the driver was SIGKILLed, but its log does not say it was at %s", r.point)
	}
	r.waitOrphans()
	return r.state(id)
}

// checkPhase compares the state a kill left with phaseAtKill.
func (r *run) checkPhase(got string) {
	r.t.Helper()
	if want := phaseAtKill[r.point][r.typ]; got != want {
		r.t.Errorf("right after the kill at %s: %q, want %q", r.point, got, want)
	}
}

// restart starts the driver unarmed, checks what it made of the VG before
// any retry, and returns the log of its start.
func (r *run) restart() string {
	r.t.Helper()
	r.serve()
	r.checkVG(true)
	return r.proc.Out.Since(0)
}

// retry repeats the call; after a restart the first real answer must be
// success.
func (r *run) retry(kind, what string, call func(ctx context.Context) error) {
	r.t.Helper()
	if errs := r.env.retry(kind, what, call); len(errs) > 0 {
		r.t.Errorf("%s after the restart failed before it succeeded: %q", what, errs)
	}
}

// swept checks that the restarted driver's start-up sweep removed id.
func (r *run) swept(log, id string) {
	r.t.Helper()
	if !strings.Contains(log, "Removed leftover LV of an interrupted call") || !strings.Contains(log, id) {
		r.t.Errorf("the restarted driver did not report removing the leftover LV %s", id)
	}
}

// pointCreateVolume: CreateVolume from the fixture's snapshot (a thin
// snapshot of it for thin, a copy for thick), which reaches both points.
func (r *run) pointCreateVolume() {
	name := r.name("restore")
	id := backend.VolumeIDFor(name)
	call := r.createVolumeCall(volumeRequest(name, r.typ, fromSnapshot(r.fx.snap[r.typ])))
	r.checkPhase(r.killAt(id, true, call))
	r.swept(r.restart(), id)
	r.retry("restore", "CreateVolume from a snapshot", call)
	r.known[id] = true
	r.verifyVolume(id, r.fx.snapFiles[r.typ])
	r.deleteVolume(id)
}

// pointCreateSnapshot: CreateSnapshot of the mounted source, which must
// take writes again after the restart (checkVG writes to it).
func (r *run) pointCreateSnapshot() {
	want := r.fx.addToSource(r.typ)
	name := r.name("snapshot")
	id := backend.SnapshotIDFor(name)
	call := r.createSnapshotCall(name, r.fx.src[r.typ])
	r.checkPhase(r.killAt(id, true, call))
	r.swept(r.restart(), id)
	r.retry("snapshot", "CreateSnapshot of a mounted volume", call)
	r.known[id] = true
	r.verifySnapshot(id, r.typ, want)
	r.deleteSnapshot(id)
}

// pointDeleteVolume: DeleteVolume of a volume holding data, which must be
// whole while it is still there.
func (r *run) pointDeleteVolume() {
	id := r.createVolume(r.name("delete"), r.typ, r.fx.snap[r.typ])
	call := r.deleteVolumeCall(id)
	r.checkPhase(r.killAt(id, false, call))
	r.restart()
	r.verifyVolume(id, r.fx.snapFiles[r.typ])
	r.retry("delete-volume", "DeleteVolume", call)
	delete(r.known, id)
}

// pointDeleteSnapshot: DeleteSnapshot, whose snapshot must restore whole
// while it is still there.
func (r *run) pointDeleteSnapshot() {
	want := r.fx.addToSource(r.typ)
	id := r.createSnapshot(r.name("delete-snapshot"), r.fx.src[r.typ])
	call := r.deleteSnapshotCall(id)
	r.checkPhase(r.killAt(id, false, call))
	r.restart()
	r.verifySnapshot(id, r.typ, want)
	r.retry("delete-snapshot", "DeleteSnapshot", call)
	delete(r.known, id)
}

// nodePhase adds the staging path's state to the LV's.
func (r *run) nodePhase(id, staging string) string {
	s := r.state(id)
	if len(mountsUnder(r.t, staging)) > 0 {
		s += ", mounted"
	} else {
		s += ", unmounted"
	}
	out, err := exec.Command("blkid", "-p", "-s", "TYPE", "-o", "value", lvmcmd.DevicePath(r.vg, id)).Output()
	if err != nil {
		return s + ", holding nothing"
	}
	return s + ", holding " + strings.TrimSpace(string(out))
}

// pointStageVolume: NodeStageVolume of a blank volume (mkfs before the
// mount) for before-mount, otherwise of a volume restored into a larger
// size, whose filesystem the stage must grow.
func (r *run) pointStageVolume() {
	blank := strings.HasSuffix(r.point, ".before-mount")
	var id string
	var want files
	if blank {
		id = r.createVolume(r.name("stage"), r.typ, "")
	} else {
		name := r.name("stage")
		req := volumeRequest(name, r.typ, fromSnapshot(r.fx.snap[r.typ]))
		req.CapacityRange.RequiredBytes = grownSize
		r.must("restore", "CreateVolume "+name, r.createVolumeCall(req))
		id = backend.VolumeIDFor(name)
		r.known[id] = true
		want = r.fx.snapFiles[r.typ]
	}
	staging := r.path("stage")
	call := func(ctx context.Context) error {
		_, err := r.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			VolumeCapability: mountCapability()})
		return err
	}
	// Until the retried stage succeeds, the volume is half staged.
	r.staged[id] = staging
	r.settling = id
	r.checkPhase(r.killAt(id, false, call) + r.phaseSuffix(id, staging))
	r.restart()
	r.retry("stage", "NodeStageVolume", call)
	r.settling = ""
	r.checkVG(true)
	if blank {
		want = files{"data": writeRandom(r.t, filepath.Join(staging, "data"), MiB)}
	}
	r.unstage(id, staging)
	delete(r.staged, id)
	r.verifyVolume(id, want)
	r.deleteVolume(id)
}

// phaseSuffix is what nodePhase adds to state.
func (r *run) phaseSuffix(id, staging string) string {
	return strings.TrimPrefix(r.nodePhase(id, staging), r.state(id))
}

// pointUnstageVolume: NodeUnstageVolume of a volume holding data, which is
// intact when staged again.
func (r *run) pointUnstageVolume() {
	id := r.createVolume(r.name("unstage"), r.typ, r.fx.snap[r.typ])
	staging := r.path("unstage")
	r.stage(id, staging)
	r.staged[id] = staging
	call := func(ctx context.Context) error {
		_, err := r.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		return err
	}
	r.settling = id
	r.checkPhase(r.killAt(id, false, call) + r.phaseSuffix(id, staging))
	r.restart()
	r.retry("unstage", "NodeUnstageVolume", call)
	r.settling = ""
	delete(r.staged, id)
	r.checkVG(true)
	r.verifyVolume(id, r.fx.snapFiles[r.typ])
	r.deleteVolume(id)
}

// ---- kills at random instants --------------------------------------------------

// killDuring starts call, SIGKILLs the driver after a random delay of up
// to the last successful call of the same kind (two seconds if there was
// none), and returns once the call has returned; then it restarts the
// driver. It records the state the kill left id in, and, as what the
// restart must have left, whether id should exist now.
func (r *run) killDuring(kind, id string, call func(ctx context.Context) error) (present bool) {
	t := r.t
	t.Helper()
	typical := r.took[kind]
	if typical == 0 {
		typical = 2 * time.Second
	}
	delay := time.Duration(r.rng.Int64N(int64(typical) + 1))
	done := make(chan error, 1)
	go func() {
		ctx, cancel := callCtx()
		defer cancel()
		done <- call(ctx)
	}()
	returned := false
	select {
	case <-done:
		returned = true
	case <-time.After(delay):
	}
	r.kill()
	if !returned {
		<-done
	}
	state := r.state(id)
	if returned {
		state += " (after the call returned)"
	}
	t.Logf("killed %v into %s (typical %v): %s", delay.Round(time.Millisecond), kind, typical.Round(time.Millisecond), state)
	op := r.typ + "/" + kind
	if r.landed[op] == nil {
		r.landed[op] = map[string]int{}
	}
	r.landed[op][state]++
	r.serve()
	// What the restart leaves: a complete object stays, anything else goes.
	present = r.state(id) != "absent"
	if present {
		r.known[id] = true
	} else {
		delete(r.known, id)
	}
	r.checkVG(true)
	return present
}

func (r *run) randomCreate() {
	name := r.name("create")
	id := backend.VolumeIDFor(name)
	call := r.createVolumeCall(volumeRequest(name, r.typ, nil))
	r.killDuring("create", id, call)
	r.retry("create", "CreateVolume", call)
	r.known[id] = true
	r.verifyVolume(id, nil)
	r.deleteVolume(id)
}

func (r *run) randomRestore() {
	name := r.name("restore")
	id := backend.VolumeIDFor(name)
	call := r.createVolumeCall(volumeRequest(name, r.typ, fromSnapshot(r.fx.snap[r.typ])))
	r.killDuring("restore", id, call)
	r.retry("restore", "CreateVolume from a snapshot", call)
	r.known[id] = true
	r.verifyVolume(id, r.fx.snapFiles[r.typ])
	r.deleteVolume(id)
}

func (r *run) randomSnapshot() {
	want := r.fx.addToSource(r.typ)
	name := r.name("snapshot")
	id := backend.SnapshotIDFor(name)
	call := r.createSnapshotCall(name, r.fx.src[r.typ])
	r.killDuring("snapshot", id, call)
	r.retry("snapshot", "CreateSnapshot of a mounted volume", call)
	r.known[id] = true
	r.verifySnapshot(id, r.typ, want)
	r.deleteSnapshot(id)
}

func (r *run) randomExpand() {
	id := r.createVolume(r.name("expand"), r.typ, r.fx.snap[r.typ])
	call := r.expandCall(id, grownSize)
	r.killDuring("expand", id, call)
	if size := r.lvSize(id); size != volSize && size != grownSize {
		r.t.Errorf("after the restart volume %s is %d bytes, neither the old %d nor the new %d", id, size, volSize, grownSize)
	}
	r.retry("expand", "ControllerExpandVolume", call)
	if size := r.lvSize(id); size != grownSize {
		r.t.Errorf("volume %s is %d bytes after its expansion to %d succeeded", id, size, grownSize)
	}
	r.verifyVolume(id, r.fx.snapFiles[r.typ])
	r.deleteVolume(id)
}

func (r *run) randomDelete() {
	id := r.createVolume(r.name("delete"), r.typ, r.fx.snap[r.typ])
	call := r.deleteVolumeCall(id)
	if r.killDuring("delete-volume", id, call) {
		r.verifyVolume(id, r.fx.snapFiles[r.typ])
	}
	r.retry("delete-volume", "DeleteVolume", call)
	delete(r.known, id)
	if r.state(id) != "absent" {
		r.t.Errorf("volume %s is in the VG after DeleteVolume succeeded", id)
	}
}

func (r *run) lvSize(id string) int64 {
	r.t.Helper()
	lv, err := r.lvm.LV(context.Background(), r.vg, id)
	if err != nil {
		r.t.Fatal(err)
	}
	return lv.Size
}

// ---- kills inside a copy ---------------------------------------------------------

// killInCopy starts call and SIGKILLs the driver as soon as it holds dev
// open, which it does only while copying it; then it waits for the call.
func (r *run) killInCopy(kind, id, dev string, call func(ctx context.Context) error) {
	t := r.t
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := callCtx()
		defer cancel()
		done <- call(ctx)
	}()
	pid := r.proc.Pid()
	for !holdsOpen(pid, dev) {
		select {
		case err := <-done:
			r.kill()
			t.Fatalf("%s returned (%v) before the driver was seen copying %s", kind, err, dev)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	r.kill()
	<-done
	t.Logf("killed while copying %s: %s", dev, r.state(id))
}

// inCopy kills thick copies of a volume large enough (128 MiB) for the
// kill to land inside the copy:
//
//   - a snapshot of the mounted volume, copied with its filesystem frozen.
//     The kill leaves it frozen, its writers hanging; the restarted driver
//     must thaw it, and the retried snapshot must succeed;
//   - a restore of that snapshot, which is activated for the copy. The
//     restarted driver must leave it inactive (checkVG).
func (r *run) inCopy() {
	srcName := r.name("copied")
	srcReq := volumeRequest(srcName, r.typ, nil)
	srcReq.CapacityRange.RequiredBytes = inCopySize
	r.must("create", "CreateVolume "+srcName, r.createVolumeCall(srcReq))
	src := backend.VolumeIDFor(srcName)
	r.known[src] = true
	staging := r.path("copied-staging")
	r.stage(src, staging)
	r.staged[src] = staging
	want := files{"data": writeRandom(r.t, filepath.Join(staging, "data"), 8*MiB)}

	name := r.name("snapshot")
	snap := backend.SnapshotIDFor(name)
	call := r.createSnapshotCall(name, src)
	r.killInCopy("snapshot", snap, lvmcmd.DevicePath(r.vg, src), call)
	write := startWrite(staging)
	select {
	case err := <-write:
		r.t.Errorf("a write to the source went through (%v) while the driver lay dead in the copy: it was not frozen", err)
		write = nil
	case <-time.After(500 * time.Millisecond):
	}
	log := r.restart()
	if write != nil {
		select {
		case err := <-write:
			if err != nil {
				r.t.Errorf("write to the source after the restart: %v", err)
			}
		case <-time.After(30 * time.Second):
			_ = exec.Command("fsfreeze", "-u", staging).Run()
			r.t.Fatalf("the source is still frozen 30s after the driver restarted")
		}
		if !strings.Contains(log, "Thawed filesystem left frozen by an interrupted snapshot") {
			r.t.Errorf("the restarted driver did not report thawing the source")
		}
	}
	r.swept(log, snap)
	r.retry("snapshot", "CreateSnapshot of a mounted volume", call)
	r.known[snap] = true

	name = r.name("restore")
	restored := backend.VolumeIDFor(name)
	req := volumeRequest(name, r.typ, fromSnapshot(snap))
	req.CapacityRange.RequiredBytes = inCopySize
	call = r.createVolumeCall(req)
	r.killInCopy("restore", restored, lvmcmd.DevicePath(r.vg, snap), call)
	if s := r.state(snap); s != "complete, active" {
		r.t.Errorf("snapshot %s right after the kill: %s, want it active for the copy", snap, s)
	}
	log = r.restart()
	r.swept(log, restored)
	if !strings.Contains(log, "Deactivated snapshot left active by an interrupted copy") {
		r.t.Errorf("the restarted driver did not report deactivating the snapshot")
	}
	r.retry("restore", "CreateVolume from a snapshot", call)
	r.known[restored] = true
	r.verifyVolume(restored, want)
	r.deleteVolume(restored)
	r.deleteSnapshot(snap)
	r.unstage(src, staging)
	delete(r.staged, src)
	r.deleteVolume(src)
}
