package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// markdown renders the report as the tables the README includes. Headings
// start at level 3 so that they nest under a README section.
func markdown(r *report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("### Benchmark results (%s run, %s backend)\n\n", r.Mode, r.Backend)
	m := r.Machine
	w("%s, %d cores (%s), %d MiB RAM, kernel %s; %s. Run took %s.\n\n",
		r.StartedAt.Format("2006-01-02 15:04 MST"), m.Cores, m.CPU, m.MemoryMiB, m.Kernel,
		versions(m), (time.Duration(r.Seconds) * time.Second).String())
	w("Pools: ")
	for i, p := range r.Pools {
		if i > 0 {
			w("; ")
		}
		if p.Backend == "lvm" {
			w("**%s** (LVM thin pool of %d GiB in a volume group on %s, `%s`", p.Kind, p.ImageBytes/gib, p.Device, p.Mkfs)
		} else {
			w("**%s** (%s, reflink %v, `%s` on a %d GiB sparse image on a loop device", p.Kind, p.Filesystem, p.Reflink, p.Mkfs, p.ImageBytes/gib)
		}
		for _, n := range p.Notes {
			w("; %s", n)
		}
		w(")")
	}
	w(". Every figure goes through the CSI API of a real `tarn serve` on its unix socket.\n\n")
	for _, mr := range r.Merged {
		mm := mr.Machine
		w("The %s figures come from a separate %s run of the %s backend: %s, %d cores (%s), %d MiB RAM, kernel %s; %s. Run took %s.\n\n",
			strings.Join(mr.Pools, ", "), mr.Mode, mr.Backend, mr.StartedAt.Format("2006-01-02 15:04 MST"), mm.Cores, mm.CPU,
			mm.MemoryMiB, mm.Kernel, versions(mm), (time.Duration(mr.Seconds) * time.Second).String())
	}
	if r.Mode == "smoke" {
		w("_Smoke run: every measurement once at toy sizes, to keep the harness working. The figures mean nothing._\n\n")
	}

	w("#### Targets\n\n| goal | measured | result |\n| --- | ---: | --- |\n")
	for _, t := range r.Targets {
		res := "not measured"
		if t.Measured {
			res = "**missed**"
			if t.Met {
				res = "met"
			}
		}
		w("| %s | %s %s | %s |\n", t.Goal, num(t.Value), t.Unit, res)
	}
	w("\n")

	if l := r.Latency; l != nil {
		w("#### Control-plane latency\n\nOne call at a time on the %s pool; 16 MiB ext4 volumes, formatted before they are snapshotted. CreateVolume is timed while the pool grows from 0 to n volumes; \"empty pool\" creates and deletes in pairs; DeleteVolume covers restores and originals.\n\n", l.Pool)
		w("| call | n | p50 ms | p90 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
		for _, name := range []string{callCreateVolume, callCreateEmpty, callDeleteVolume, callCreateSnapshot, callDeleteSnapshot, callRestore} {
			s := l.Calls[name]
			w("| %s | %d | %s | %s | %s | %s |\n", name, s.N, num(s.P50MS), num(s.P90MS), num(s.P99MS), num(s.MaxMS))
		}
		w("\nNode round trip (stage + publish + unpublish + unstage), after a first stage that formats:\n\n")
		w("| access | n | p50 ms | p90 ms | p99 ms | stage p50 | publish p50 | unpublish p50 | unstage p50 | first stage ms |\n")
		w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, rt := range l.RoundTrips {
			w("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", rt.Access, rt.Total.N,
				num(rt.Total.P50MS), num(rt.Total.P90MS), num(rt.Total.P99MS),
				num(rt.Steps[callStage].P50MS), num(rt.Steps[callPublish].P50MS),
				num(rt.Steps[callUnpublish].P50MS), num(rt.Steps[callUnstage].P50MS), num(rt.FirstStageMS))
		}
		w("\n")
	}

	if c := r.Concurrency; c != nil {
		w("#### Concurrency\n\n%d clients, each on its own connection, creating and deleting 16 MiB volumes for %.1f s.\n\n", c.Clients, c.Seconds)
		w("| calls | calls/s | successful calls/s | answers by code | outside the spec | CreateVolume p50 / p99 ms | DeleteVolume p50 / p99 ms |\n")
		w("| ---: | ---: | ---: | --- | ---: | ---: | ---: |\n")
		var codes []string
		for _, k := range slices.Sorted(maps.Keys(c.Codes)) {
			codes = append(codes, fmt.Sprintf("%s %d", k, c.Codes[k]))
		}
		cv, dv := c.Latency[callCreateVolume], c.Latency[callDeleteVolume]
		w("| %d | %s | %s | %s | %d | %s / %s | %s / %s |\n\n", c.Calls, num(c.CallsPerSecond), num(c.OKPerSecond),
			strings.Join(codes, ", "), c.NonSpecErrors, num(cv.P50MS), num(cv.P99MS), num(dv.P50MS), num(dv.P99MS))
	}

	if len(r.SnapshotSizes) > 0 {
		w("#### Snapshot and restore against data size\n\nA block volume filled completely with data, unstaged, then CreateSnapshot and CreateVolume from that snapshot (medians; plot: `snapshot-vs-size.png`).\n\n")
		w("| pool | data | reps | fill MiB/s | snapshot p50 ms | restore p50 ms | snapshot + restore p50 ms |\n")
		w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, s := range r.SnapshotSizes {
			for _, pt := range s.Points {
				w("| %s | %s | %d | %s | %s | %s | %s |\n", s.Pool, size(pt.DataBytes), s.Reps,
					num(ratio(float64(pt.DataBytes)/float64(mib), pt.WriteSeconds)),
					num(pt.Snapshot.P50MS), num(pt.Restore.P50MS), num(pt.Total.P50MS))
			}
			w("| %s | **largest / smallest** | | | **%s×** | **%s×** | **%s×** |\n", s.Pool,
				num(s.Ratios.Snapshot), num(s.Ratios.Restore), num(s.Ratios.Total))
		}
		w("\n")
	}

	if d := r.DataPath; d != nil {
		w("#### Data path\n\nfio on a %s file: in an ext4 volume mounted through tarn, against a plain file on the %s pool's own filesystem (%s).%s\n\n",
			size(d.FileBytes), d.Pool, d.Job, roundsNote(d.Volumes))
		w("| pattern |")
		sep := "| --- |"
		for _, v := range d.Volumes {
			w(" plain file MiB/s | volume %s MiB/s | ratio |", dioLabel(v))
			sep += " ---: | ---: | ---: |"
		}
		w("\n%s\n", sep)
		for _, pat := range fioPatterns() {
			w("| %s |", pat.Name)
			for _, v := range d.Volumes {
				// Reports from before the rounds compared every
				// setting with one plain measurement.
				plain := v.Plain
				if plain == nil {
					plain = d.Plain
				}
				w(" %s | %s | %s× |", num(plain[pat.Name].MiBps), num(v.Figures[pat.Name].MiBps), num(v.Ratios[pat.Name]))
			}
			w("\n")
		}
		w("\n")
	}

	if s := r.Scale; s != nil {
		w("#### Scale\n\n%s pool holding %d 1 MiB block volumes and %d snapshots (filled in %.1f s); lists paginated by %d.\n\n",
			s.Pool, s.Volumes, s.Snapshots, s.PopulateSeconds, s.PageSize)
		w("| figure | value |\n| --- | ---: |\n")
		w("| start-up to ready Probe, empty pool | %s ms |\n", num(s.EmptyReadyMS))
		w("| start-up to ready Probe, full pool (p50 of %d) | %s ms |\n", s.Ready.N, num(s.Ready.P50MS))
		w("| VmRSS: empty pool / full pool at ready / after listings | %s / %s / %s MiB |\n", num(s.EmptyRSSMiB), num(s.RSSAtReadyMiB), num(s.RSSAfterMiB))
		w("| VmHWM (peak RSS) | %s MiB |\n", num(s.PeakRSSMiB))
		w("| full ListVolumes, %d pages (p50 of %d) | %s ms |\n", s.VolumePages, s.ListVolumes.N, num(s.ListVolumes.P50MS))
		w("| full ListSnapshots, %d pages (p50 of %d) | %s ms |\n", s.SnapshotPages, s.ListSnapshots.N, num(s.ListSnapshots.P50MS))
		w("| GetCapacity (p50 of %d) | %s ms |\n", s.GetCapacity.N, num(s.GetCapacity.P50MS))
		w("| CreateVolume on the full pool (p50 of %d) | %s ms |\n", s.CreateAtScale.N, num(s.CreateAtScale.P50MS))
		w("| delete all %d objects, %d clients | %.1f s |\n\n", s.Volumes+s.Snapshots, scaleWorkers, s.DeleteSeconds)
	}

	if len(r.Errors) > 0 {
		w("#### Errors\n\n")
		for _, e := range r.Errors {
			w("- %s\n", strings.ReplaceAll(e, "\n", " "))
		}
		w("\n")
	}
	if !r.Leftovers.empty() {
		w("**Left behind after the run:** %s\n\n", r.Leftovers)
	}
	return b.String()
}

// versions lists tarn's, fio's and Go's versions, leaving out what is
// unknown (no fio where only the snapshot cost is measured).
func versions(m machine) string {
	parts := []string{"tarn " + m.TarnVersion}
	if m.FioVersion != "" {
		parts = append(parts, m.FioVersion)
	}
	return strings.Join(append(parts, m.GoVersion), ", ")
}

// roundsNote says how the data-path figures were taken: both files at
// once, each pattern on the plain file and then on the volume in each
// round, medians over the rounds. Empty for reports without rounds.
func roundsNote(vs []volumeDataPath) string {
	var per []string
	for _, v := range vs {
		if v.Rounds == 0 {
			return ""
		}
		n := fmt.Sprintf("%d round", v.Rounds)
		if v.Rounds > 1 {
			n += "s"
		}
		if v.DirectIO != "" {
			n += " with --direct-io=" + v.DirectIO
		}
		per = append(per, n)
	}
	if len(per) == 0 {
		return ""
	}
	return fmt.Sprintf(" Both files exist throughout; in each round every pattern runs on the plain file and then on the volume, back to back, so that drift of the disk hits both alike (%s). MiB/s are medians over the rounds; the ratio is the median of the per-round ratios.",
		strings.Join(per, ", "))
}

func dioLabel(v volumeDataPath) string {
	if v.DirectIO == "" {
		return ""
	}
	on := "off"
	if v.LoopDIO {
		on = "on"
	}
	return fmt.Sprintf("(--direct-io=%s, loop dio %s)", v.DirectIO, on)
}

// num prints a figure with as many digits as it deserves: three
// significant ones below 100, none after the point above.
func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1 || v <= -1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func size(b int64) string {
	if b >= gib && b%gib == 0 {
		return fmt.Sprintf("%d GiB", b/gib)
	}
	return fmt.Sprintf("%d MiB", b/mib)
}
