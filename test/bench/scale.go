package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

const (
	// scaleWorkers fill and empty the pool in parallel: the figures are
	// taken afterwards, one call at a time, so this only saves time.
	scaleWorkers = 4
	// scalePage is the page size of the paginated listings, a typical
	// external-provisioner/snapshotter setting.
	scalePage = 100
)

// scaleResult is the driver's behaviour on a pool with many objects.
type scaleResult struct {
	Pool            string  `json:"pool"`
	Volumes         int     `json:"volumes"`
	Snapshots       int     `json:"snapshots"`
	PopulateSeconds float64 `json:"populate_seconds"`
	EmptyReadyMS    float64 `json:"empty_pool_ready_ms"`
	EmptyRSSMiB     float64 `json:"empty_pool_rss_mib"`
	// Ready is start-up to a ready Probe over several restarts.
	Ready         summary `json:"ready"`
	RSSAtReadyMiB float64 `json:"rss_at_ready_mib"`
	RSSAfterMiB   float64 `json:"rss_after_listing_mib"`
	PeakRSSMiB    float64 `json:"peak_rss_mib"`
	PageSize      int     `json:"page_size"`
	ListVolumes   summary `json:"list_volumes_full"`
	ListSnapshots summary `json:"list_snapshots_full"`
	GetCapacity   summary `json:"get_capacity"`
	CreateAtScale summary `json:"create_volume_at_scale"`
	DeleteSeconds float64 `json:"delete_all_seconds"`
	VolumePages   int     `json:"list_volumes_pages"`
	SnapshotPages int     `json:"list_snapshots_pages"`
}

// measureScale fills the pool with n 1 MiB block volumes and a snapshot of
// each, then measures start-up, memory, full paginated listings and
// GetCapacity, and CreateVolume on the full pool.
func measureScale(ctx context.Context, s *session, p profile) (res scaleResult, err error) {
	n := p.ScaleObjects
	res = scaleResult{Pool: s.pool.Info().Kind, Volumes: n, Snapshots: n, PageSize: scalePage}
	if err := s.restart(ctx); err != nil {
		return res, err
	}
	res.EmptyReadyMS = ms(s.tarn.Ready)
	rss, _, err := s.tarn.memory()
	if err != nil {
		return res, err
	}
	res.EmptyRSSMiB = mibOf(rss)

	vols, snaps := make([]string, n), make([]string, n)
	defer func() { err = errors.Join(err, deleteAll(s, vols, snaps)) }()
	start := time.Now()
	err = parallel(ctx, n, func(i int) error {
		id, _, err := s.c().createVolume(ctx, fmt.Sprintf("bench-scale-vol-%05d", i), scaleVolume, blockCap(), nil)
		if err != nil {
			return err
		}
		vols[i] = id
		snaps[i], _, err = s.c().createSnapshot(ctx, fmt.Sprintf("bench-scale-snap-%05d", i), id)
		return err
	})
	if err != nil {
		return res, err
	}
	res.PopulateSeconds = time.Since(start).Seconds()

	var ready []time.Duration
	for r := range p.ScaleRepeats {
		if err := s.restart(ctx); err != nil {
			return res, err
		}
		ready = append(ready, s.tarn.Ready)
		if r == 0 {
			if rss, _, err = s.tarn.memory(); err != nil {
				return res, err
			}
			res.RSSAtReadyMiB = mibOf(rss)
		}
	}
	res.Ready = summarize(ready)

	var lv, ls, gc []time.Duration
	for range p.ScaleRepeats {
		d, count, pages, err := listAll(ctx, listVolumesPage(s.c()))
		if err != nil {
			return res, err
		}
		if count != n {
			return res, fmt.Errorf("ListVolumes returned %d volumes, the pool holds %d", count, n)
		}
		lv, res.VolumePages = append(lv, d), pages
		d, count, pages, err = listAll(ctx, listSnapshotsPage(s.c()))
		if err != nil {
			return res, err
		}
		if count != n {
			return res, fmt.Errorf("ListSnapshots returned %d snapshots, the pool holds %d", count, n)
		}
		ls, res.SnapshotPages = append(ls, d), pages
		d, err = timed(ctx, func(ctx context.Context) error {
			_, err := s.c().ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{})
			return err
		})
		if err != nil {
			return res, fmt.Errorf("GetCapacity: %w", err)
		}
		gc = append(gc, d)
	}
	res.ListVolumes, res.ListSnapshots, res.GetCapacity = summarize(lv), summarize(ls), summarize(gc)
	rss, hwm, err := s.tarn.memory()
	if err != nil {
		return res, err
	}
	res.RSSAfterMiB, res.PeakRSSMiB = mibOf(rss), mibOf(hwm)

	// What one more volume costs once the pool is full.
	var create []time.Duration
	var o objects
	defer func() { err = errors.Join(err, s.cleanup(&o)) }()
	for i := range max(5, p.LatencyCalls/10) {
		id, d, err := s.c().createVolume(ctx, fmt.Sprintf("bench-scale-extra-%03d", i), smallVolume, mountCap("ext4"), nil)
		if err != nil {
			return res, err
		}
		create, o.volumes = append(create, d), append(o.volumes, id)
		if _, err := s.c().deleteVolume(ctx, id); err != nil {
			return res, err
		}
		o.volumes = drop(o.volumes, id)
	}
	res.CreateAtScale = summarize(create)

	start = time.Now()
	if err := deleteAll(s, vols, snaps); err != nil {
		return res, err
	}
	res.DeleteSeconds = time.Since(start).Seconds()
	return res, nil
}

func mibOf(b int64) float64 { return float64(b*10/mib) / 10 }

// pageFunc fetches one page from token, returning its size and the next
// token.
type pageFunc func(ctx context.Context, token string) (int, string, error)

func listVolumesPage(c *client) pageFunc {
	return func(ctx context.Context, token string) (int, string, error) {
		resp, err := c.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: scalePage, StartingToken: token})
		if err != nil {
			return 0, "", fmt.Errorf("ListVolumes: %w", err)
		}
		return len(resp.GetEntries()), resp.GetNextToken(), nil
	}
}

func listSnapshotsPage(c *client) pageFunc {
	return func(ctx context.Context, token string) (int, string, error) {
		resp, err := c.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: scalePage, StartingToken: token})
		if err != nil {
			return 0, "", fmt.Errorf("ListSnapshots: %w", err)
		}
		return len(resp.GetEntries()), resp.GetNextToken(), nil
	}
}

// listAll walks every page, as a CO resyncing its cache does, and times
// the whole walk.
func listAll(ctx context.Context, page pageFunc) (d time.Duration, count, pages int, err error) {
	d, err = timed(ctx, func(ctx context.Context) error {
		token := ""
		for {
			n, next, err := page(ctx, token)
			if err != nil {
				return err
			}
			count, pages, token = count+n, pages+1, next
			if token == "" {
				return nil
			}
		}
	})
	return d, count, pages, err
}

// parallel calls fn for 0..n-1 on scaleWorkers goroutines and returns the
// first error; after one, no new index is started.
func parallel(ctx context.Context, n int, fn func(i int) error) error {
	var next atomic.Int64
	var failed atomic.Bool
	errs := make([]error, scaleWorkers)
	var wg sync.WaitGroup
	for w := range scaleWorkers {
		wg.Go(func() {
			for !failed.Load() && ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					errs[w] = err
					failed.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(append(errs, ctx.Err())...)
}

// deleteAll removes the snapshots and volumes whose IDs are set, and
// clears them so that a second call does nothing. It ignores the
// measurement's context: cleaning up matters most when that was cancelled.
func deleteAll(s *session, vols, snaps []string) error {
	if !slices.ContainsFunc(slices.Concat(vols, snaps), func(id string) bool { return id != "" }) {
		return nil
	}
	ctx := context.Background()
	aliveErr := s.alive(ctx)
	if s.tarn == nil {
		return aliveErr
	}
	del := func(ids []string, fn func(context.Context, string) (time.Duration, error)) error {
		return parallel(ctx, len(ids), func(i int) error {
			if ids[i] == "" {
				return nil
			}
			if _, err := fn(ctx, ids[i]); err != nil {
				return err
			}
			ids[i] = ""
			return nil
		})
	}
	return errors.Join(aliveErr, del(snaps, s.c().deleteSnapshot), del(vols, s.c().deleteVolume))
}
