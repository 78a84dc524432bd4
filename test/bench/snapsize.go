package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// snapshotSizeResult is the cost of a snapshot and of a restore from it
// against how much data the volume holds, on one pool.
type snapshotSizeResult struct {
	Pool string `json:"pool"`
	// Reflink is what the harness found the pool filesystem can do;
	// TarnReflink what tarn said at start ("true", "false" or "" when its
	// log did not say).
	Reflink     bool   `json:"reflink"`
	TarnReflink string `json:"tarn_reflink"`
	// Method is how the pool makes snapshots: "reflink", "copy" or
	// "thin" (LVM thin snapshots).
	Method string      `json:"method,omitempty"`
	Reps   int         `json:"reps"`
	Points []sizePoint `json:"points"`
	Ratios sizeRatios  `json:"ratio_largest_to_smallest"`
}

// constantCost says whether the pool's snapshots share blocks, so that
// their cost should not depend on the data.
func (r snapshotSizeResult) constantCost() bool {
	return r.Reflink || r.Method == "reflink" || r.Method == "thin"
}

// method names how the pool snapshots, for reports older than Method.
func (r snapshotSizeResult) method() string {
	switch {
	case r.Method != "":
		return r.Method
	case r.Reflink:
		return "reflink"
	}
	return "copy"
}

// sizeRatios compare medians at the largest and the smallest data size;
// about 1 means the cost does not depend on the data (O(1)).
type sizeRatios struct {
	Snapshot float64 `json:"snapshot"`
	Restore  float64 `json:"restore"`
	Total    float64 `json:"snapshot_plus_restore"`
}

type sizePoint struct {
	DataBytes    int64   `json:"data_bytes"`
	WriteSeconds float64 `json:"write_seconds"`
	Snapshot     summary `json:"snapshot"`
	Restore      summary `json:"restore"`
	Total        summary `json:"snapshot_plus_restore"`
}

// chunk is the unit data is written and checked in.
const chunk = 1 << 20

// measureSnapshotSizes fills a block volume of each size completely with
// data, unstages it, and times CreateSnapshot and CreateVolume from that
// snapshot, reps times each. The volume is not staged while it is
// snapshotted, so no freeze is measured: only the cost of the data.
func measureSnapshotSizes(ctx context.Context, s *session, p profile) (res snapshotSizeResult, err error) {
	info := s.pool.Info()
	res = snapshotSizeResult{Pool: info.Kind, Reflink: info.Reflink, Method: info.Snapshots, Reps: p.SnapRepsCopy}
	if info.constantCost() {
		res.Reps = p.SnapRepsReflink
	}
	if info.Backend == "loop" {
		res.TarnReflink = logValue(s.tarn.logLine(`"Opened loop pool"`), "reflink")
	}
	var o objects
	defer func() { err = errors.Join(err, s.cleanup(&o)) }()
	for _, size := range p.SnapSizes {
		pt, err := measureSnapshotSize(ctx, s, &o, size, res.Reps)
		if err != nil {
			return res, err
		}
		res.Points = append(res.Points, pt)
	}
	first, last := res.Points[0], res.Points[len(res.Points)-1]
	res.Ratios = sizeRatios{
		Snapshot: ratio(last.Snapshot.P50MS, first.Snapshot.P50MS),
		Restore:  ratio(last.Restore.P50MS, first.Restore.P50MS),
		Total:    ratio(last.Total.P50MS, first.Total.P50MS),
	}
	return res, nil
}

func measureSnapshotSize(ctx context.Context, s *session, o *objects, size int64, reps int) (sizePoint, error) {
	pt := sizePoint{DataBytes: size}
	if size%chunk != 0 {
		return pt, fmt.Errorf("data size %d is not a whole number of MiB", size)
	}
	c := s.c()
	name := fmt.Sprintf("bench-size-%dm", size/mib)
	vol, _, err := c.createVolume(ctx, name, size, blockCap(), nil)
	if err != nil {
		return pt, err
	}
	o.volumes = append(o.volumes, vol)
	o.staged = append(o.staged, vol)
	target, _, _, err := s.stageAndPublish(ctx, vol, blockCap())
	if err != nil {
		return pt, err
	}
	start := time.Now()
	if err := writeData(target, size); err != nil {
		return pt, err
	}
	pt.WriteSeconds = time.Since(start).Seconds()
	if _, _, err := s.unpublishAndUnstage(ctx, vol); err != nil {
		return pt, err
	}
	o.staged = drop(o.staged, vol)

	var snap, restore, total []time.Duration
	for r := range reps {
		sid, ds, err := c.createSnapshot(ctx, fmt.Sprintf("%s-snap-%d", name, r), vol)
		if err != nil {
			return pt, err
		}
		o.snapshots = append(o.snapshots, sid)
		if check, ok := s.pool.(snapshotChecker); ok && r == 0 {
			if err := check.checkSnapshot(ctx, sid); err != nil {
				return pt, err
			}
		}
		rid, dr, err := c.createVolume(ctx, fmt.Sprintf("%s-restore-%d", name, r), size, blockCap(), fromSnapshot(sid))
		if err != nil {
			return pt, err
		}
		o.volumes = append(o.volumes, rid)
		snap, restore, total = append(snap, ds), append(restore, dr), append(total, ds+dr)
		if r == 0 {
			// A figure for a restore that lost the data would be
			// worthless; the last chunk shows the copy reached the end.
			if err := s.checkLastChunk(ctx, o, rid, size); err != nil {
				return pt, err
			}
		}
		if _, err := c.deleteVolume(ctx, rid); err != nil {
			return pt, err
		}
		o.volumes = drop(o.volumes, rid)
		if _, err := c.deleteSnapshot(ctx, sid); err != nil {
			return pt, err
		}
		o.snapshots = drop(o.snapshots, sid)
	}
	if _, err := c.deleteVolume(ctx, vol); err != nil {
		return pt, err
	}
	o.volumes = drop(o.volumes, vol)
	pt.Snapshot, pt.Restore, pt.Total = summarize(snap), summarize(restore), summarize(total)
	return pt, nil
}

func (s *session) checkLastChunk(ctx context.Context, o *objects, vol string, size int64) error {
	o.staged = append(o.staged, vol)
	target, _, _, err := s.stageAndPublish(ctx, vol, blockCap())
	if err != nil {
		return err
	}
	got, err := readChunk(target, size-chunk)
	if err != nil {
		return err
	}
	if _, _, err := s.unpublishAndUnstage(ctx, vol); err != nil {
		return err
	}
	o.staged = drop(o.staged, vol)
	if !bytes.Equal(got, patternChunk(size/chunk-1)) {
		return fmt.Errorf("restored volume %s does not hold the data written to its origin", vol)
	}
	return nil
}

// patternChunk is the content of chunk i: random bytes (so no layer can
// compress or skip them) that differ from chunk to chunk, and are the same
// on every run so that a restore can be checked.
func patternChunk(i int64) []byte {
	b := make([]byte, chunk)
	r := rand.NewChaCha8([32]byte{'t', 'a', 'r', 'n'})
	_, _ = r.Read(b)
	binary.LittleEndian.PutUint64(b, uint64(i))
	return b
}

// alignedBuffer is memory that O_DIRECT accepts: mmap returns whole pages.
func alignedBuffer() ([]byte, func(), error) {
	b, err := unix.Mmap(-1, 0, chunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap: %w", err)
	}
	return b, func() { _ = unix.Munmap(b) }, nil
}

// writeData fills a device with size bytes of pattern, bypassing the page
// cache so that the data is on the pool, not in memory, when it returns.
func writeData(device string, size int64) error {
	buf, free, err := alignedBuffer()
	if err != nil {
		return err
	}
	defer free()
	f, err := os.OpenFile(device, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	copy(buf, patternChunk(0))
	for i := range size / chunk {
		binary.LittleEndian.PutUint64(buf, uint64(i))
		if _, err := f.WriteAt(buf, i*chunk); err != nil {
			return fmt.Errorf("write %s at %d: %w", device, i*chunk, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", device, err)
	}
	return f.Close()
}

func readChunk(device string, off int64) ([]byte, error) {
	buf, free, err := alignedBuffer()
	if err != nil {
		return nil, err
	}
	defer free()
	f, err := os.OpenFile(device, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", device, off, err)
	}
	return bytes.Clone(buf), nil
}
