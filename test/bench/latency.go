package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Names of the timed calls, as they appear in the report.
const (
	callCreateVolume     = "CreateVolume"
	callCreateEmpty      = "CreateVolume, empty pool"
	callDeleteVolume     = "DeleteVolume"
	callCreateSnapshot   = "CreateSnapshot"
	callDeleteSnapshot   = "DeleteSnapshot"
	callRestore          = "CreateVolume from snapshot"
	callStage            = "NodeStageVolume"
	callPublish          = "NodePublishVolume"
	callUnpublish        = "NodeUnpublishVolume"
	callUnstage          = "NodeUnstageVolume"
	accessMountExt4      = "ext4 mount"
	accessBlock          = "block"
	latencyWarmupObjects = 3
)

// latencyResult is the control-plane latency of each call, one at a time.
type latencyResult struct {
	Pool string `json:"pool"`
	// Calls: CreateVolume is timed as the pool grows from 0 to n volumes,
	// so its p50 is at about n/2 volumes; "empty pool" is create+delete
	// pairs, so the pool never holds more than one. DeleteVolume covers
	// the restores and the originals (2n samples).
	Calls      map[string]summary `json:"calls"`
	RoundTrips []roundTrip        `json:"node_round_trips"`
}

// roundTrip is stage+publish+unpublish+unstage of one volume, repeated.
type roundTrip struct {
	Access string `json:"access"`
	// FirstStageMS includes formatting the filesystem, which later stages
	// skip, so it is kept out of the samples.
	FirstStageMS float64            `json:"first_stage_ms"`
	Total        summary            `json:"round_trip"`
	Steps        map[string]summary `json:"steps"`
}

// measureLatency times each control-plane call n times in sequence, on
// 16 MiB ext4 volumes: create n, format each (stage and unstage, not
// timed) so that snapshots and restores carry a filesystem as a user's
// do, snapshot each, restore each snapshot, then delete restores,
// snapshots and originals.
func measureLatency(ctx context.Context, s *session, p profile) (res latencyResult, err error) {
	res = latencyResult{Pool: s.pool.Info().Kind, Calls: map[string]summary{}}
	var o objects
	defer func() { err = errors.Join(err, s.cleanup(&o)) }()
	c := s.c()
	// The first calls pay for connection set-up and cold caches, which a
	// long-running driver has long paid.
	for i := range latencyWarmupObjects {
		id, _, err := c.createVolume(ctx, fmt.Sprintf("bench-warm-%d", i), smallVolume, mountCap("ext4"), nil)
		if err != nil {
			return res, err
		}
		if _, err := c.deleteVolume(ctx, id); err != nil {
			return res, err
		}
	}

	n := p.LatencyCalls
	var empty, create, snap, restore, del, delSnap []time.Duration
	for i := range n {
		id, d, err := c.createVolume(ctx, fmt.Sprintf("bench-lat-empty-%04d", i), smallVolume, mountCap("ext4"), nil)
		if err != nil {
			return res, err
		}
		empty = append(empty, d)
		if _, err := c.deleteVolume(ctx, id); err != nil {
			return res, err
		}
	}
	vols, snaps, restores := make([]string, n), make([]string, n), make([]string, n)
	for i := range n {
		id, d, err := c.createVolume(ctx, fmt.Sprintf("bench-lat-vol-%04d", i), smallVolume, mountCap("ext4"), nil)
		if err != nil {
			return res, err
		}
		vols[i], create = id, append(create, d)
		o.volumes = append(o.volumes, id)
	}
	for _, id := range vols {
		o.staged = append(o.staged, id)
		if _, _, _, err := s.stageAndPublish(ctx, id, mountCap("ext4")); err != nil {
			return res, err
		}
		if _, _, err := s.unpublishAndUnstage(ctx, id); err != nil {
			return res, err
		}
		o.staged = drop(o.staged, id)
	}
	for i := range n {
		id, d, err := c.createSnapshot(ctx, fmt.Sprintf("bench-lat-snap-%04d", i), vols[i])
		if err != nil {
			return res, err
		}
		snaps[i], snap = id, append(snap, d)
		o.snapshots = append(o.snapshots, id)
	}
	for i := range n {
		id, d, err := c.createVolume(ctx, fmt.Sprintf("bench-lat-restore-%04d", i), smallVolume, mountCap("ext4"), fromSnapshot(snaps[i]))
		if err != nil {
			return res, err
		}
		restores[i], restore = id, append(restore, d)
		o.volumes = append(o.volumes, id)
	}
	for _, id := range restores {
		d, err := c.deleteVolume(ctx, id)
		if err != nil {
			return res, err
		}
		del, o.volumes = append(del, d), drop(o.volumes, id)
	}
	for _, id := range snaps {
		d, err := c.deleteSnapshot(ctx, id)
		if err != nil {
			return res, err
		}
		delSnap, o.snapshots = append(delSnap, d), drop(o.snapshots, id)
	}
	for _, id := range vols {
		d, err := c.deleteVolume(ctx, id)
		if err != nil {
			return res, err
		}
		del, o.volumes = append(del, d), drop(o.volumes, id)
	}
	res.Calls[callCreateEmpty] = summarize(empty)
	res.Calls[callCreateVolume] = summarize(create)
	res.Calls[callCreateSnapshot] = summarize(snap)
	res.Calls[callRestore] = summarize(restore)
	res.Calls[callDeleteVolume] = summarize(del)
	res.Calls[callDeleteSnapshot] = summarize(delSnap)

	for _, a := range []struct {
		name string
		vc   *csi.VolumeCapability
	}{{accessMountExt4, mountCap("ext4")}, {accessBlock, blockCap()}} {
		rt, err := measureRoundTrips(ctx, s, &o, a.name, a.vc, p.RoundTrips)
		if err != nil {
			return res, err
		}
		res.RoundTrips = append(res.RoundTrips, rt)
	}
	return res, nil
}

func measureRoundTrips(ctx context.Context, s *session, o *objects, access string, vc *csi.VolumeCapability, n int) (roundTrip, error) {
	rt := roundTrip{Access: access, Steps: map[string]summary{}}
	id, _, err := s.c().createVolume(ctx, "bench-roundtrip-"+access, smallVolume, vc, nil)
	if err != nil {
		return rt, err
	}
	o.volumes = append(o.volumes, id)
	var total, stage, publish, unpublish, unstage []time.Duration
	for i := -1; i < n; i++ {
		o.staged = append(o.staged, id)
		_, st, pub, err := s.stageAndPublish(ctx, id, vc)
		if err != nil {
			return rt, err
		}
		up, us, err := s.unpublishAndUnstage(ctx, id)
		if err != nil {
			return rt, err
		}
		o.staged = drop(o.staged, id)
		if i < 0 {
			rt.FirstStageMS = ms(st)
			continue
		}
		total = append(total, st+pub+up+us)
		stage, publish = append(stage, st), append(publish, pub)
		unpublish, unstage = append(unpublish, up), append(unstage, us)
	}
	if _, err := s.c().deleteVolume(ctx, id); err != nil {
		return rt, err
	}
	o.volumes = drop(o.volumes, id)
	rt.Total = summarize(total)
	rt.Steps[callStage] = summarize(stage)
	rt.Steps[callPublish] = summarize(publish)
	rt.Steps[callUnpublish] = summarize(unpublish)
	rt.Steps[callUnstage] = summarize(unstage)
	return rt, nil
}
