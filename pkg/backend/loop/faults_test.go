package loop

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/faults"
)

// pointRecorder records the fault points reached, in order.
type pointRecorder struct {
	mu     sync.Mutex
	points []string
}

func (r *pointRecorder) Point(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.points = append(r.points, name)
}

// Every point the backend reaches must be listed in package faults, or no
// test could arm it; test/reliability's TestFaultPoints checks the other
// way round, that each listed point is reached.
func TestFaultPointsAreKnown(t *testing.T) {
	ctx := context.Background()
	rec := &pointRecorder{}
	b, err := New(ctx, Config{PoolDir: t.TempDir(), Loop: &fakeLoop{}, Faults: rec})
	if err != nil {
		t.Fatal(err)
	}
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "src", RequiredBytes: 4 * backend.MiB})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: "snap", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "restored", Source: backend.Source{SnapshotID: s.ID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ExpandVolume(ctx, r.ID, r.SizeBytes+64*backend.MiB, 0); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{b.DeleteSnapshot(ctx, s.ID), b.DeleteVolume(ctx, r.ID), b.DeleteVolume(ctx, v.ID)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	loopPoints := map[string]bool{}
	for _, p := range faults.Known() {
		if p.Backends&faults.Loop != 0 {
			loopPoints[p.Name] = true
		}
	}
	for _, name := range rec.points {
		if !loopPoints[name] {
			t.Errorf("the loop backend reached fault point %q, which package faults does not list for it", name)
		}
	}
	// A few that every run must reach, in order.
	for _, want := range [][2]string{
		{"create-volume.after-staging-dir", "create-volume.after-publish"},
		{"create-snapshot.before-clone", "create-snapshot.after-clone"},
		{"expand-volume.after-truncate", "expand-volume.after-meta"},
		{"delete-snapshot.before-trash", "delete-snapshot.before-empty"},
	} {
		i, j := slices.Index(rec.points, want[0]), slices.Index(rec.points, want[1])
		if i < 0 || j < i {
			t.Errorf("points %v not reached in order: %v", want, rec.points)
		}
	}
}
