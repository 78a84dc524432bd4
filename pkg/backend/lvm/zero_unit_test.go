package lvm

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// zeroCall is one range a backend zeroed, with whether the volume carried
// the record of unzeroed growth at that moment.
type zeroCall struct {
	dev      string
	from, to int64
	recorded bool
}

// TestGrowthIsZeroedBeforeExpansionAnswers: a thick volume is zeroed in
// full at creation, and an expansion's new range before the expansion
// succeeds, under a record that lets a failed or interrupted zeroing be
// finished by the retry. Thin volumes are left to the pool.
func TestGrowthIsZeroedBeforeExpansionAnswers(t *testing.T) {
	ctx := context.Background()
	f := newFakeVG(4096*mib, 1024*mib)
	b := fakeBackend(f, nil)
	var calls []zeroCall
	failNext := false
	b.zero = func(_ context.Context, dev string, from, to int64) error {
		name := dev[len("/dev/vg/"):]
		recorded := slices.Contains(f.lvs[name].tags, zeroFromTag(from))
		calls = append(calls, zeroCall{dev, from, to, recorded})
		if failNext {
			failNext = false
			return errors.New("I/O error")
		}
		return nil
	}
	thick, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "thick", RequiredBytes: 100 * mib, Parameters: map[string]string{ParamType: typeThick}})
	if err != nil {
		t.Fatal(err)
	}
	dev := b.devicePath(thick.ID)
	if want := []zeroCall{{dev, 0, 100 * mib, false}}; !slices.Equal(calls, want) {
		t.Fatalf("CreateVolume zeroed %v, want %v", calls, want)
	}

	calls, failNext = nil, true
	if _, err := b.ExpandVolume(ctx, thick.ID, 200*mib, 0); err == nil {
		t.Fatal("ExpandVolume succeeded although zeroing its growth failed")
	}
	if !slices.Contains(f.lvs[thick.ID].tags, zeroFromTag(100*mib)) {
		t.Fatalf("after a failed zeroing the volume lost the record of its unzeroed growth: tags %v", f.lvs[thick.ID].tags)
	}
	if got, err := b.ExpandVolume(ctx, thick.ID, 200*mib, 0); err != nil || got != 200*mib {
		t.Fatalf("retried ExpandVolume = %d, %v", got, err)
	}
	if want := []zeroCall{{dev, 100 * mib, 200 * mib, true}, {dev, 100 * mib, 200 * mib, true}}; !slices.Equal(calls, want) {
		t.Errorf("expansion and its retry zeroed %v, want %v", calls, want)
	}
	if slices.ContainsFunc(f.lvs[thick.ID].tags, func(tag string) bool { return tag == zeroFromTag(100*mib) }) {
		t.Errorf("record of unzeroed growth left after the retry: %v", f.lvs[thick.ID].tags)
	}

	calls = nil
	thin, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "thin", RequiredBytes: 100 * mib, Parameters: map[string]string{ParamType: typeThin}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ExpandVolume(ctx, thin.ID, 200*mib, 0); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 0 {
		t.Errorf("thin volume zeroed %v; its pool zeroes", calls)
	}
}
