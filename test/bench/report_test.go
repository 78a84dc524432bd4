package main

import (
	"encoding/json"
	"slices"
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
	b, err := lookupBackend("loop", options{})
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
	b, _ := lookupBackend("loop", options{})
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
	if _, err := lookupBackend("zfs", options{}); err == nil {
		t.Error("lookupBackend(zfs) succeeded")
	}
}

// The lvm backend measures the snapshot cost only, on a thin pool, which
// is judged against the O(1) goal like a reflink pool.
func TestLVMTargets(t *testing.T) {
	b, err := lookupBackend("lvm", options{volumeGroup: "vg"})
	if err != nil {
		t.Fatal(err)
	}
	r := &report{Profile: fullProfile(), SnapshotSizes: []snapshotSizeResult{
		{Pool: "lvm-thin", Method: "thin", Ratios: sizeRatios{Total: 1.1}},
	}}
	ts := evaluateTargets(r, b)
	if len(ts) != 1 || ts[0].ID != "snapshot-restore-ratio-lvm-thin" || !ts[0].Measured || !ts[0].Met {
		t.Errorf("lvm targets = %+v, want only the met thin-pool ratio", ts)
	}
	if got := thinPoolSize(fullProfile()); got != 13*gib {
		t.Errorf("thin pool for the full profile: %d bytes, want 13 GiB (3 × 4 GiB + 1 GiB)", got)
	}
}

// A report survives the trip through JSON (--merge reads one back), and
// merging another run's snapshot figures adds its pool, figures, target
// and origin, and replaces them on a second merge.
func TestMergeRun(t *testing.T) {
	b, _ := lookupBackend("loop", options{})
	dst := &report{Schema: reportSchema, Mode: "full", Backend: "loop", Profile: fullProfile(),
		Pools:         []poolInfo{{Kind: "xfs-reflink", Backend: "loop", Reflink: true}},
		SnapshotSizes: []snapshotSizeResult{{Pool: "xfs-reflink", Reflink: true, Ratios: sizeRatios{Total: 1}}}}
	dst.Targets = evaluateTargets(dst, b)
	data, err := json.Marshal(dst)
	if err != nil {
		t.Fatal(err)
	}
	var back report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if back.Profile.ConcDuration != dst.Profile.ConcDuration || back.Profile.Deadline != dst.Profile.Deadline {
		t.Errorf("profile durations after JSON: %v, %v; want %v, %v", back.Profile.ConcDuration.d(), back.Profile.Deadline.d(),
			dst.Profile.ConcDuration.d(), dst.Profile.Deadline.d())
	}

	lb, _ := lookupBackend("lvm", options{volumeGroup: "vg"})
	src := &report{Schema: reportSchema, Mode: "full", Backend: "lvm", Profile: fullProfile(),
		Pools:         []poolInfo{{Kind: "lvm-thin", Backend: "lvm", Snapshots: "thin"}},
		SnapshotSizes: []snapshotSizeResult{{Pool: "lvm-thin", Method: "thin", Ratios: sizeRatios{Total: 1.3}}}}
	src.Targets = evaluateTargets(src, lb)
	for range 2 {
		if err := mergeRun(&back, src); err != nil {
			t.Fatal(err)
		}
	}
	if len(back.Pools) != 2 || len(back.SnapshotSizes) != 2 || len(back.Merged) != 1 || back.Merged[0].Pools[0] != "lvm-thin" {
		t.Errorf("after merging twice: pools %+v, figures %d, merged %+v", back.Pools, len(back.SnapshotSizes), back.Merged)
	}
	var ids []string
	for _, tg := range back.Targets {
		ids = append(ids, tg.ID)
	}
	if i := slices.Index(ids, "snapshot-restore-ratio-lvm-thin"); i < 1 || !strings.HasPrefix(ids[i-1], "snapshot-restore-ratio-") || strings.HasPrefix(ids[i+1], "snapshot-") {
		t.Errorf("targets after merging: %v, want the thin pool's after the other snapshot targets", ids)
	}
	md := markdown(&back)
	for _, want := range []string{"lvm-thin", "LVM thin pool", "separate full run of the lvm backend"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	src.Errors = []string{"snapshot: boom"}
	if err := mergeRun(&back, src); err == nil {
		t.Error("a failed run was merged")
	}
}
