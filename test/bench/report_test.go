package main

import (
	"strings"
	"testing"
)

func targetByID(ts []target, id string) (target, bool) {
	for _, t := range ts {
		if t.ID == id {
			return t, true
		}
	}
	return target{}, false
}

func TestEvaluateTargets(t *testing.T) {
	b, err := lookupBackend("loop")
	if err != nil {
		t.Fatal(err)
	}
	r := &report{
		Profile:     fullProfile(),
		Latency:     &latencyResult{Calls: map[string]summary{callCreateVolume: {P50MS: 0.8}}},
		Concurrency: &concurrencyResult{CallsPerSecond: 900, NonSpecErrors: 0},
		SnapshotSizes: []snapshotSizeResult{
			{Pool: "xfs-reflink", Reflink: true, Ratios: sizeRatios{Total: 1.2}},
			{Pool: "ext4", Reflink: false, Ratios: sizeRatios{Total: 400}},
		},
	}
	ts := evaluateTargets(r, b)
	for id, want := range map[string]bool{
		"create-volume-p50":                  true,
		"concurrent-calls-per-second":        false,
		"concurrent-non-spec-errors":         true,
		"snapshot-restore-ratio-xfs-reflink": true,
	} {
		got, ok := targetByID(ts, id)
		if !ok || !got.Measured || got.Met != want {
			t.Errorf("%s: %+v, want measured and met=%v", id, got, want)
		}
	}
	// The O(1) goal is for reflink pools only; a copy pool is not judged.
	if _, ok := targetByID(ts, "snapshot-restore-ratio-ext4"); ok {
		t.Error("copy pool judged against the reflink goal")
	}
	// Measurements that did not run are neither met nor missed.
	for _, id := range []string{"fio-seq-read-1M-direct-io-true", "fio-rand-write-4K-direct-io-false", "scale-rss"} {
		got, ok := targetByID(ts, id)
		if !ok || got.Measured || got.Met {
			t.Errorf("%s: %+v, want present and not measured", id, got)
		}
	}
}

func TestExitStatus(t *testing.T) {
	missed := &report{Targets: []target{{Goal: "x", Measured: true, Met: false}, {Goal: "y"}}}
	if got := exitStatus(missed, true); got != 0 {
		t.Errorf("smoke run with a missed target: status %d, want 0", got)
	}
	if got := exitStatus(missed, false); got != 3 {
		t.Errorf("full run with a missed target: status %d, want 3", got)
	}
	failed := &report{Errors: []string{"latency: boom"}}
	if got := exitStatus(failed, true); got != 1 {
		t.Errorf("smoke run with an error: status %d, want 1", got)
	}
}

func TestMarkdownNamesEveryTarget(t *testing.T) {
	b, _ := lookupBackend("loop")
	r := &report{Mode: "smoke", Backend: "loop", Profile: smokeProfile()}
	r.Targets = evaluateTargets(r, b)
	md := markdown(r)
	for _, tg := range r.Targets {
		if !strings.Contains(md, tg.Goal) {
			t.Errorf("markdown lacks target %q", tg.Goal)
		}
	}
}

func TestUnknownBackend(t *testing.T) {
	if _, err := lookupBackend("lvm"); err == nil {
		t.Error("lookupBackend(lvm) succeeded before the LVM backend exists")
	}
}
