package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// reportSchema is bumped when a field of the JSON report changes meaning.
const reportSchema = 1

// report is every figure of a run; it is written as latest.json.
type report struct {
	Schema        int                  `json:"schema"`
	Mode          string               `json:"mode"`
	StartedAt     time.Time            `json:"started_at"`
	Seconds       float64              `json:"duration_seconds"`
	Machine       machine              `json:"machine"`
	Backend       string               `json:"backend"`
	Profile       profile              `json:"profile"`
	Pools         []poolInfo           `json:"pools"`
	Latency       *latencyResult       `json:"control_plane_latency"`
	Concurrency   *concurrencyResult   `json:"concurrency"`
	SnapshotSizes []snapshotSizeResult `json:"snapshot_vs_size"`
	DataPath      *dataPathResult      `json:"data_path"`
	Scale         *scaleResult         `json:"scale"`
	Targets       []target             `json:"targets"`
	// Errors are measurements that could not be taken; any makes the run
	// fail, in every mode.
	Errors    []string  `json:"errors"`
	Leftovers leftovers `json:"leftovers_after_run"`
	// Merged are other runs whose snapshot-vs-size figures were added to
	// this report (bench --merge), e.g. the LVM thin pool measured in the
	// test VM.
	Merged []mergedRun `json:"merged_runs,omitempty"`
}

// mergedRun says where merged figures come from.
type mergedRun struct {
	Pools     []string  `json:"pools"`
	Backend   string    `json:"backend"`
	Mode      string    `json:"mode"`
	StartedAt time.Time `json:"started_at"`
	Seconds   float64   `json:"duration_seconds"`
	Machine   machine   `json:"machine"`
}

type machine struct {
	Cores       int    `json:"cores"`
	CPU         string `json:"cpu"`
	MemoryMiB   int64  `json:"memory_mib"`
	Kernel      string `json:"kernel"`
	GoVersion   string `json:"go_version"`
	TarnVersion string `json:"tarn_version"`
	FioVersion  string `json:"fio_version"`
}

func describeMachine(ctx context.Context, tarnBin string) machine {
	m := machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	m.CPU = procField("/proc/cpuinfo", "model name")
	var kb int64
	if _, err := fmt.Sscanf(procField("/proc/meminfo", "MemTotal"), "%d kB", &kb); err == nil {
		m.MemoryMiB = kb >> 10
	}
	if out, err := run(ctx, tarnBin, "version"); err == nil {
		m.TarnVersion = strings.TrimSpace(string(out))
	}
	if out, err := run(ctx, "fio", "--version"); err == nil {
		m.FioVersion = strings.TrimSpace(string(out))
	}
	return m
}

// procField returns the value of the first "key: value" line of a /proc
// file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// target is one goal of the issue, stated against what was measured.
type target struct {
	ID        string  `json:"id"`
	Goal      string  `json:"goal"`
	Value     float64 `json:"value"`
	Unit      string  `json:"unit"`
	Op        string  `json:"op"`
	Threshold float64 `json:"threshold"`
	// Measured is false when the measurement failed; such a target is
	// neither met nor missed.
	Measured bool `json:"measured"`
	Met      bool `json:"met"`
}

func newTarget(id, goal, unit, op string, threshold float64, measured bool, value float64) target {
	t := target{ID: id, Goal: goal, Unit: unit, Op: op, Threshold: threshold, Measured: measured, Value: value}
	if !measured {
		return t
	}
	switch op {
	case "<":
		t.Met = value < threshold
	case "<=":
		t.Met = value <= threshold
	case ">=":
		t.Met = value >= threshold
	case "==":
		t.Met = value == threshold
	}
	return t
}

// evaluateTargets states each of the targets against the run.
func evaluateTargets(r *report, b benchBackend) []target {
	var ts []target
	lat := r.Latency != nil
	var p50 float64
	if lat {
		p50 = r.Latency.Calls[callCreateVolume].P50MS
	}
	if b.supports("latency") {
		ts = append(ts, newTarget("create-volume-p50", "CreateVolume p50 < 1 ms", "ms", "<", 1, lat, p50))
	}

	conc := r.Concurrency != nil
	var cps, nonSpec float64
	if conc {
		cps, nonSpec = r.Concurrency.CallsPerSecond, float64(r.Concurrency.NonSpecErrors)
	}
	if b.supports("concurrency") {
		ts = append(ts,
			newTarget("concurrent-calls-per-second", "16-way create+delete ≥ 1,000 calls/s", "calls/s", ">=", 1000, conc, cps),
			newTarget("concurrent-non-spec-errors", "16-way create+delete: no errors outside the CSI spec", "answers", "==", 0, conc, nonSpec))
	}

	for _, kind := range b.Kinds {
		var sr *snapshotSizeResult
		for i := range r.SnapshotSizes {
			if r.SnapshotSizes[i].Pool == kind {
				sr = &r.SnapshotSizes[i]
			}
		}
		if sr != nil && !sr.constantCost() {
			continue // the O(1) goal is for reflink and thin pools only
		}
		ts = append(ts, snapshotTarget(kind, sr))
	}
	modes := []string{""}
	if !b.supports("datapath") {
		modes = nil
	} else if len(b.DirectIOModes) > 0 {
		modes = nil
		for _, m := range b.DirectIOModes {
			modes = append(modes, fmt.Sprint(m))
		}
	}
	for _, mode := range modes {
		var v *volumeDataPath
		if r.DataPath != nil {
			for i := range r.DataPath.Volumes {
				if r.DataPath.Volumes[i].DirectIO == mode {
					v = &r.DataPath.Volumes[i]
				}
			}
		}
		for _, pat := range fioPatterns() {
			id, goal := "fio-"+pat.Name, pat.Name+": volume ≥ 90% of plain file"
			if mode != "" {
				id += "-direct-io-" + mode
				goal = fmt.Sprintf("%s (--direct-io=%s)", goal, mode)
			}
			ts = append(ts, newTarget(id, goal, "×", ">=", 0.9, v != nil,
				valueOr(v, func(v *volumeDataPath) float64 { return v.Ratios[pat.Name] })))
		}
	}

	sc := r.Scale != nil
	var ready, rss, list float64
	if sc {
		ready, rss, list = r.Scale.Ready.P50MS, r.Scale.RSSAfterMiB, r.Scale.ListVolumes.P50MS
	}
	n := r.Profile.ScaleObjects
	if !b.supports("scale") {
		return ts
	}
	ts = append(ts,
		newTarget("scale-ready", fmt.Sprintf("%d volumes: ready < 1 s", n), "ms", "<", 1000, sc, ready),
		newTarget("scale-rss", fmt.Sprintf("%d volumes: RSS < 64 MiB", n), "MiB", "<", 64, sc, rss),
		newTarget("scale-list-volumes", fmt.Sprintf("%d volumes: full ListVolumes < 100 ms", n), "ms", "<", 100, sc, list))
	return ts
}

// snapshotTarget is the O(1) goal for a pool whose snapshots share blocks;
// sr is nil when it was not measured.
func snapshotTarget(kind string, sr *snapshotSizeResult) target {
	return newTarget("snapshot-restore-ratio-"+kind,
		fmt.Sprintf("%s: snapshot+restore of the largest volume ≤ 1.5× the smallest", kind),
		"×", "<=", 1.5, sr != nil, valueOr(sr, func(s *snapshotSizeResult) float64 { return s.Ratios.Total }))
}

func valueOr[T any](p *T, f func(*T) float64) float64 {
	if p == nil {
		return 0
	}
	return f(p)
}

// writeOutputs writes latest.json, latest.md and, when plot is set, the
// plot into dir.
func writeOutputs(ctx context.Context, r *report, dir string, plot bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.md"), []byte(markdown(r)), 0o644); err != nil {
		return err
	}
	if !plot {
		return nil
	}
	return plotSnapshotSizes(ctx, r.SnapshotSizes, filepath.Join(dir, "snapshot-vs-size.png"))
}
