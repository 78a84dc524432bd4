package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// plotSnapshotSizes draws median snapshot and restore time against data
// size, one pair of lines per pool kind, with gnuplot. Both axes are
// logarithmic: sizes span three decades, and an O(1) reflink or thin
// snapshot and an O(n) copy differ by as much.
func plotSnapshotSizes(ctx context.Context, results []snapshotSizeResult, png string) error {
	if len(results) == 0 {
		return nil
	}
	if strings.ContainsAny(png, `'"\`) {
		return fmt.Errorf("plot path %q has quotes, which gnuplot strings cannot hold", png)
	}
	dir, err := os.MkdirTemp("", "tarn-bench-plot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	var data strings.Builder
	var plots []string
	for i, r := range results {
		// One gnuplot data block per pool, selected with "index".
		if i > 0 {
			data.WriteString("\n\n")
		}
		fmt.Fprintf(&data, "# %s: data_MiB snapshot_p50_ms restore_p50_ms\n", r.Pool)
		for _, pt := range r.Points {
			fmt.Fprintf(&data, "%g %g %g\n", float64(pt.DataBytes)/float64(mib), pt.Snapshot.P50MS, pt.Restore.P50MS)
		}
		label := r.Pool + " (" + r.method() + ")"
		plots = append(plots,
			fmt.Sprintf("'%s' index %d using 1:2 with linespoints lw 2 pt 7 lc %d title '%s snapshot'",
				filepath.Join(dir, "data"), i, i+1, label),
			fmt.Sprintf("'%s' index %d using 1:3 with linespoints lw 2 pt 5 dt 2 lc %d title '%s restore'",
				filepath.Join(dir, "data"), i, i+1, label))
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), []byte(data.String()), 0o600); err != nil {
		return err
	}
	script := strings.Join([]string{
		"set terminal pngcairo size 960,600 font 'sans,11'",
		fmt.Sprintf("set output '%s'", png),
		"set title 'Tarn: snapshot and restore time against data in the volume (median)'",
		"set xlabel 'data written in the volume (MiB)'",
		"set ylabel 'time (ms)'",
		"set logscale xy",
		"set grid",
		"set key center right",
		"plot " + strings.Join(plots, ", \\\n  "),
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(dir, "plot.gp"), []byte(script), 0o600); err != nil {
		return err
	}
	_, err = run(ctx, "gnuplot", filepath.Join(dir, "plot.gp"))
	return err
}
