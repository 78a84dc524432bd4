package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// mergeInto adds the snapshot-vs-size figures of another run (--merge) to
// the report in --out, and writes its outputs again: the LVM thin pool can
// only be measured inside the test VM, whose run is merged into the host's.
func mergeInto(o options) error {
	dstPath := filepath.Join(o.out, "latest.json")
	dst, err := readReport(dstPath)
	if err != nil {
		return err
	}
	src, err := readReport(o.merge)
	if err != nil {
		return err
	}
	if err := mergeRun(dst, src); err != nil {
		return fmt.Errorf("merge %s into %s: %w", o.merge, dstPath, err)
	}
	if err := writeOutputs(context.Background(), dst, o.out, o.plot); err != nil {
		return err
	}
	fmt.Print(markdown(dst))
	fmt.Printf("Merged %s into %s\n", o.merge, o.out)
	return nil
}

func readReport(path string) (*report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if r.Schema != reportSchema {
		return nil, fmt.Errorf("%s has report schema %d, this bench writes %d", path, r.Schema, reportSchema)
	}
	return &r, nil
}

// mergeRun copies src's snapshot-vs-size results into dst with their pools
// and O(1) targets, replacing those of the same pool kind (a rerun), and
// records where they came from. A failed or incomplete run is refused.
func mergeRun(dst, src *report) error {
	switch {
	case len(src.Errors) > 0:
		return fmt.Errorf("the run failed: %s", strings.Join(src.Errors, "; "))
	case !src.Leftovers.empty():
		return fmt.Errorf("the run left %s behind", src.Leftovers)
	case len(src.SnapshotSizes) == 0:
		return errors.New("the run has no snapshot-vs-size figures")
	}
	run := mergedRun{Backend: src.Backend, Mode: src.Mode, StartedAt: src.StartedAt, Seconds: src.Seconds, Machine: src.Machine}
	for _, s := range src.SnapshotSizes {
		kind := s.Pool
		if slices.ContainsFunc(dst.Pools, func(p poolInfo) bool { return p.Kind == kind && p.Backend != backendOf(src, kind) }) {
			return fmt.Errorf("pool kind %s is already in the report, from another backend", kind)
		}
		run.Pools = append(run.Pools, kind)
		dst.SnapshotSizes = replaceOrAppend(dst.SnapshotSizes, s, func(x snapshotSizeResult) bool { return x.Pool == kind })
		for _, p := range src.Pools {
			if p.Kind == kind {
				dst.Pools = replaceOrAppend(dst.Pools, p, func(x poolInfo) bool { return x.Kind == kind })
			}
		}
		id := "snapshot-restore-ratio-" + kind
		for _, t := range src.Targets {
			if t.ID != id {
				continue
			}
			if i := slices.IndexFunc(dst.Targets, func(x target) bool { return x.ID == id }); i >= 0 {
				dst.Targets[i] = t
				continue
			}
			// Beside the other snapshot targets.
			at := len(dst.Targets)
			for i, x := range dst.Targets {
				if strings.HasPrefix(x.ID, "snapshot-restore-ratio-") {
					at = i + 1
				}
			}
			dst.Targets = slices.Insert(dst.Targets, at, t)
		}
		// An earlier merge of the same pool is superseded.
		for i := range dst.Merged {
			dst.Merged[i].Pools = slices.DeleteFunc(dst.Merged[i].Pools, func(p string) bool { return p == kind })
		}
	}
	dst.Merged = slices.DeleteFunc(dst.Merged, func(m mergedRun) bool { return len(m.Pools) == 0 })
	dst.Merged = append(dst.Merged, run)
	return nil
}

func backendOf(r *report, kind string) string {
	for _, p := range r.Pools {
		if p.Kind == kind {
			return p.Backend
		}
	}
	return r.Backend
}

func replaceOrAppend[T any](list []T, v T, same func(T) bool) []T {
	if i := slices.IndexFunc(list, same); i >= 0 {
		list[i] = v
		return list
	}
	return append(list, v)
}
