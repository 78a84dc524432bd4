package lvm

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// The VG is the only state: a new Backend sees what the old one made, and
// removes what interrupted calls left, and nothing else.
func TestRestart(t *testing.T) {
	e := newEnv(t, poolSize)
	v := e.createVolume("v", typeThin, volSize, backend.Source{})
	thick := e.createVolume("thick", typeThick, volSize, backend.Source{})
	s, err := e.b.CreateSnapshot(e.ctx, backend.SnapshotRequest{Name: e.name("snap"), SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	r := e.createVolume("r", typeThin, volSize, backend.Source{SnapshotID: s.ID})
	// A copy snapshot of a detached origin activates it only for the copy.
	ts, err := e.b.CreateSnapshot(e.ctx, backend.SnapshotRequest{Name: e.name("thick-snap"), SourceVolumeID: thick.ID})
	if err != nil || ts.Method != methodCopy {
		t.Fatalf("snapshot of a detached thick volume = %+v, %v", ts, err)
	}
	if e.lv(thick.ID).Active || e.lv(ts.ID).Active {
		t.Errorf("copy left the origin or the snapshot active")
	}

	// What interrupted calls leave: LVs with every tag but the last.
	leftVol := e.incomplete("left-volume", backend.VolumeIDFor, e.pool)
	leftSnap := e.incomplete("left-snapshot", backend.SnapshotIDFor, "")
	// What is not Tarn's, or not a Tarn object, must survive.
	foreign := backend.VolumeIDFor(e.name("foreign"))
	if err := e.client.Create(e.ctx, lvmcmd.CreateOptions{VG: e.vg, Name: foreign, Size: 4 * mib}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.client.Remove(e.ctx, e.vg, foreign) })
	stray := "stray_" + strings.TrimPrefix(foreign, "vol-")
	if err := e.client.Create(e.ctx, lvmcmd.CreateOptions{VG: e.vg, Name: stray, Size: 4 * mib, Tags: []string{tagOwner}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.client.Remove(e.ctx, e.vg, stray) })

	vols, err := e.b.ListVolumes(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range vols {
		if x.ID == leftVol || x.ID == foreign {
			t.Errorf("ListVolumes shows %s", x.ID)
		}
	}
	if _, err := e.b.GetVolume(e.ctx, leftVol); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("GetVolume of an incomplete volume: %v, want ErrNotFound", err)
	}
	if _, err := e.b.GetSnapshot(e.ctx, leftSnap); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("GetSnapshot of an incomplete snapshot: %v, want ErrNotFound", err)
	}
	if _, err := e.b.CreateVolume(e.ctx, backend.VolumeRequest{Name: e.name("foreign")}); !errors.Is(err, backend.ErrAlreadyExists) {
		t.Errorf("CreateVolume over a foreign LV: %v, want ErrAlreadyExists", err)
	}

	b2 := e.open()
	e.assertNoLV(leftVol)
	e.assertNoLV(leftSnap)
	e.lv(foreign)
	e.lv(stray)
	for _, id := range []string{v.ID, thick.ID, r.ID} {
		before, err1 := e.b.GetVolume(e.ctx, id)
		after, err2 := b2.GetVolume(e.ctx, id)
		if err1 != nil || err2 != nil || !reflect.DeepEqual(before, after) {
			t.Errorf("volume %s before restart %+v (%v), after %+v (%v)", id, before, err1, after, err2)
		}
	}
	for _, snap := range []backend.Snapshot{s, ts} {
		if after, err := b2.GetSnapshot(e.ctx, snap.ID); err != nil || !reflect.DeepEqual(after, snap) {
			t.Errorf("snapshot before restart %+v, after %+v (%v)", snap, after, err)
		}
	}
	if got, err := b2.GetVolume(e.ctx, r.ID); err != nil || got.Source.SnapshotID != s.ID || got.Parameters[ParamType] != typeThin {
		t.Errorf("restored volume after restart = %+v, %v", got, err)
	}

	// A retry finds the leftover of its own interrupted attempt and
	// builds anew.
	retryID := e.incomplete("retry", backend.VolumeIDFor, e.pool)
	retried := e.createVolume("retry", typeThin, volSize, backend.Source{})
	if retried.ID != retryID || !e.lv(retryID).HasTag(tagComplete) {
		t.Errorf("CreateVolume over an incomplete LV = %+v", retried)
	}
}

// incomplete creates the LV an interrupted CreateVolume or CreateSnapshot
// leaves: created with its tags, never marked complete.
func (e *env) incomplete(short string, idFor func(string) string, pool string) string {
	e.t.Helper()
	o := object{ID: idFor(e.name(short)), Name: e.name(short), Type: typeThick}
	if pool != "" {
		o.Type, o.Params = typeThin, e.params(typeThin)
	}
	tags, err := creationTags(o)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.client.Create(e.ctx, lvmcmd.CreateOptions{VG: e.vg, Name: o.ID, Size: volSize, ThinPool: pool, Tags: tags}); err != nil {
		e.t.Fatal(err)
	}
	return o.ID
}

func TestHealth(t *testing.T) {
	e := newEnv(t, 64*mib)
	v := e.createVolume("v", typeThin, 16*mib, backend.Source{})
	thick := e.createVolume("thick", typeThick, volSize, backend.Source{})
	if p := e.b.Health(e.ctx, thick.ID); len(p) != 0 {
		t.Errorf("Health of a thick volume = %+v", p)
	}
	if p := e.b.Health(e.ctx, v.ID); len(p) != 0 {
		t.Errorf("Health of a thin volume in an empty pool = %+v", p)
	}
	// Someone else's thin LV fills 60 MiB of the 64 MiB pool (93.75%):
	// every volume in the pool is at risk.
	e.lvm("lvcreate", "--yes", "--virtualsize", "60m", "--thinpool", e.vg+"/"+e.pool, "--name", "filler_"+e.pool)
	f, err := os.OpenFile(lvmcmd.DevicePath(e.vg, "filler_"+e.pool), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(strings.Repeat("x", 60*1024*1024))); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		t.Fatal(err)
	}
	problems := e.b.Health(e.ctx, v.ID)
	if len(problems) != 1 || problems[0].Reason != "ThinPoolDataNearlyFull" || problems[0].Kind != backend.Degraded {
		t.Errorf("Health of a volume in a 94%% full pool = %+v", problems)
	} else {
		t.Logf("Health: %s", problems[0].Message)
	}
	e.lvm("lvchange", "--activate", "n", e.vg+"/filler_"+e.pool)

	// An inactive pool is reported, its capacity unknown, and the next
	// start activates it again.
	e.lvm("lvchange", "--activate", "n", e.vg+"/"+e.pool)
	if p := e.b.Health(e.ctx, v.ID); len(p) != 1 || p[0].Reason != "ThinPoolInactive" {
		t.Errorf("Health with the pool inactive = %+v", p)
	}
	if _, err := e.b.Capacity(e.ctx, nil); !errors.Is(err, backend.ErrNotReady) {
		t.Errorf("Capacity with the pool inactive: %v, want ErrNotReady", err)
	}
	e.open()
	if !e.lv(e.pool).Active {
		t.Errorf("New did not activate the thin pool")
	}

	if p := e.b.Health(e.ctx, backend.VolumeIDFor("missing")); len(p) != 1 || p[0].Kind != backend.Inaccessible {
		t.Errorf("Health of a missing volume = %+v", p)
	}
}

// TestSuspendedLVsAreResumedAtStart: LVM suspends an LV's device while it
// changes its table (lvextend, a thin snapshot of it, which suspends the
// pool too) and resumes it after; a command killed in between leaves every
// I/O to the device hanging. Nothing but Tarn runs LVM commands on its
// volumes, and none runs yet at start, so the start resumes them.
func TestSuspendedLVsAreResumedAtStart(t *testing.T) {
	e := newEnv(t, poolSize)
	thick := e.createVolume("thick", typeThick, volSize, backend.Source{})
	thin := e.createVolume("thin", typeThin, volSize, backend.Source{})
	suspended := []string{thick.ID, thin.ID, e.pool}
	for _, id := range []string{thick.ID, thin.ID} {
		e.attach(id)
		defer e.detach(id)
	}
	for _, name := range suspended {
		dm := strings.ReplaceAll(e.vg, "-", "--") + "-" + strings.ReplaceAll(name, "-", "--")
		if name == e.pool {
			// The pool's own device; the LV of its name is a layer
			// above it.
			dm += "-tpool"
		}
		run(t, "dmsetup", "suspend", dm)
	}
	for _, name := range suspended {
		if state := e.lv(name).AttrState(); state != 's' {
			t.Fatalf("%s: state %q after dmsetup suspend, want 's'", name, state)
		}
	}
	e.b = e.open()
	for _, name := range suspended {
		if state := e.lv(name).AttrState(); state != 'a' {
			t.Errorf("%s: state %q after start, want active ('a'), not suspended", name, state)
		}
	}
}
