package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// callTimeout bounds one CSI call; copying a 4 GiB snapshot on a busy
// machine is the slowest legitimate one.
const callTimeout = 10 * time.Minute

// session is a pool with a tarn serving it, and the node directories that
// kubelet would own (staging and publish paths).
type session struct {
	pool    pool
	bin     string
	dir     string
	verbose int
	tarn    *tarnProc
	starts  int
}

// start runs a fresh tarn on the pool with extra flags (e.g. --direct-io).
func (s *session) start(ctx context.Context, extra ...string) error {
	s.starts++
	args := append(append([]string{fmt.Sprintf("-v=%d", s.verbose), "--kubelet-dir=" + filepath.Join(s.dir, "node")}, s.pool.ServeArgs()...), extra...)
	logPath := filepath.Join(s.dir, fmt.Sprintf("tarn-%s-%d.log", s.pool.Info().Kind, s.starts))
	t, err := startTarn(ctx, s.bin, filepath.Join(s.dir, "csi.sock"), logPath, args)
	if err != nil {
		return err
	}
	s.tarn = t
	return nil
}

func (s *session) stop() error {
	if s.tarn == nil {
		return nil
	}
	err := s.tarn.stop()
	s.tarn = nil
	return err
}

// restart starts a new tarn even when stopping the old one failed (it may
// have died, which is the error), so that the run can carry on.
func (s *session) restart(ctx context.Context, extra ...string) error {
	stopErr := s.stop()
	return errors.Join(stopErr, s.start(ctx, extra...))
}

// alive restarts tarn if it does not answer Probe, so that cleanup through
// the driver is still possible after it died; the death is reported.
func (s *session) alive(ctx context.Context) error {
	if s.tarn == nil {
		return s.start(ctx)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.c().id.Probe(pctx, &csi.ProbeRequest{}); err == nil {
		return nil
	}
	died := fmt.Errorf("tarn stopped answering: %w", errors.Join(s.tarn.tailError(), s.stop()))
	return errors.Join(died, s.start(ctx))
}

func (s *session) c() *client { return s.tarn.client }

func mountCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

// timed runs one call under callTimeout and says how long it took as seen
// by the client, which is what a CO waits.
func timed(ctx context.Context, call func(context.Context) error) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	start := time.Now()
	err := call(ctx)
	return time.Since(start), err
}

func (c *client) createVolume(ctx context.Context, name string, size int64, vc *csi.VolumeCapability, src *csi.VolumeContentSource) (string, time.Duration, error) {
	var id string
	d, err := timed(ctx, func(ctx context.Context) error {
		resp, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name:                name,
			CapacityRange:       &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities:  []*csi.VolumeCapability{vc},
			VolumeContentSource: src,
		})
		id = resp.GetVolume().GetVolumeId()
		return err
	})
	if err != nil {
		return "", d, fmt.Errorf("CreateVolume %s: %w", name, err)
	}
	return id, d, nil
}

func (c *client) deleteVolume(ctx context.Context, id string) (time.Duration, error) {
	d, err := timed(ctx, func(ctx context.Context) error {
		_, err := c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	})
	if err != nil {
		return d, fmt.Errorf("DeleteVolume %s: %w", id, err)
	}
	return d, nil
}

func (c *client) createSnapshot(ctx context.Context, name, volID string) (string, time.Duration, error) {
	var id string
	d, err := timed(ctx, func(ctx context.Context) error {
		resp, err := c.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volID})
		id = resp.GetSnapshot().GetSnapshotId()
		if err == nil && !resp.GetSnapshot().GetReadyToUse() {
			err = fmt.Errorf("snapshot %s is not ready to use", id)
		}
		return err
	})
	if err != nil {
		return "", d, fmt.Errorf("CreateSnapshot %s: %w", name, err)
	}
	return id, d, nil
}

func (c *client) deleteSnapshot(ctx context.Context, id string) (time.Duration, error) {
	d, err := timed(ctx, func(ctx context.Context) error {
		_, err := c.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		return err
	})
	if err != nil {
		return d, fmt.Errorf("DeleteSnapshot %s: %w", id, err)
	}
	return d, nil
}

// nodePaths are where kubelet would stage and publish a volume; the
// publish path's parent exists beforehand, as kubelet makes it.
func (s *session) nodePaths(volID string) (staging, target string, err error) {
	staging = filepath.Join(s.dir, "node", "staging", volID)
	pub := filepath.Join(s.dir, "node", "publish", volID)
	if err := os.MkdirAll(pub, 0o750); err != nil {
		return "", "", err
	}
	return staging, filepath.Join(pub, "target"), nil
}

// stageAndPublish makes a volume usable at its target, returning the time
// of each call.
func (s *session) stageAndPublish(ctx context.Context, volID string, vc *csi.VolumeCapability) (target string, stage, publish time.Duration, err error) {
	staging, target, err := s.nodePaths(volID)
	if err != nil {
		return "", 0, 0, err
	}
	stage, err = timed(ctx, func(ctx context.Context) error {
		_, err := s.c().node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
			VolumeId: volID, StagingTargetPath: staging, VolumeCapability: vc})
		return err
	})
	if err != nil {
		return "", stage, 0, fmt.Errorf("NodeStageVolume %s: %w", volID, err)
	}
	publish, err = timed(ctx, func(ctx context.Context) error {
		_, err := s.c().node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
			VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc})
		return err
	})
	if err != nil {
		return "", stage, publish, fmt.Errorf("NodePublishVolume %s: %w", volID, err)
	}
	return target, stage, publish, nil
}

// unpublishAndUnstage undoes stageAndPublish; both calls are idempotent,
// so it also serves as cleanup after a half-done stage.
func (s *session) unpublishAndUnstage(ctx context.Context, volID string) (unpublish, unstage time.Duration, err error) {
	staging, target, err := s.nodePaths(volID)
	if err != nil {
		return 0, 0, err
	}
	unpublish, err = timed(ctx, func(ctx context.Context) error {
		_, err := s.c().node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
		return err
	})
	if err != nil {
		return unpublish, 0, fmt.Errorf("NodeUnpublishVolume %s: %w", volID, err)
	}
	unstage, err = timed(ctx, func(ctx context.Context) error {
		_, err := s.c().node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging})
		return err
	})
	if err != nil {
		return unpublish, unstage, fmt.Errorf("NodeUnstageVolume %s: %w", volID, err)
	}
	return unpublish, unstage, os.Remove(filepath.Dir(target))
}

// objects tracks what a measurement made, so that it is removed whatever
// happens to the measurement.
type objects struct {
	staged    []string
	volumes   []string
	snapshots []string
}

// cleanup removes everything tracked, through the driver, newest volumes
// first (restores before their origins), and reports what it could not.
// It runs on a fresh context: the measurement's may have been cancelled.
func (s *session) cleanup(o *objects) error {
	if len(o.staged)+len(o.volumes)+len(o.snapshots) == 0 {
		return nil
	}
	ctx := context.Background()
	// A tarn that died is reported and replaced, and the cleanup goes on
	// with the new one.
	errs := []error{s.alive(ctx)}
	if s.tarn == nil {
		return errs[0]
	}
	for _, id := range o.staged {
		if _, _, err := s.unpublishAndUnstage(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(o.volumes) - 1; i >= 0; i-- {
		if _, err := s.c().deleteVolume(ctx, o.volumes[i]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range o.snapshots {
		if _, err := s.c().deleteSnapshot(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	*o = objects{}
	errs = slices.DeleteFunc(errs, func(err error) bool { return err == nil })
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more cleanup errors", len(errs)-3))
	}
	return errors.Join(errs...)
}

// drop removes id from a tracked list once the object is gone.
func drop(list []string, id string) []string {
	return slices.DeleteFunc(list, func(s string) bool { return s == id })
}
