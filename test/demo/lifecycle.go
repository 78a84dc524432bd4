package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// topologyKey is the segment tarn puts on its volumes; the demo asks for
// its node the way the external-provisioner would.
const topologyKey = "topology.tarn.csi.dev/node"

// callTimeout bounds one CSI call. The slowest is a snapshot or restore
// copied rather than reflinked, which moves only the data written.
const callTimeout = 2 * time.Minute

// demo is one run: the paths it made, the driver it started and what it
// created through it, each with its way back on the cleanup stack.
type demo struct {
	cfg     config
	tmp     string
	pool    string
	socket  string
	logPath string

	tarn     *tarnProcess
	csi      *csiClients
	stopTarn *undo
	// sweep runs just before tarn stops in an unwind: a create the demo
	// gave up on (interrupt, timeout) may still have completed in tarn,
	// leaving an object the demo never learned the ID of.
	sweep *undo
	undo  cleanupStack

	vol, restore *volume
	snapID       string
	deleteSnap   *undo

	dataSum  string
	poolFS   string
	fsBefore int64
	fsAfter  int64
	log      tarnLog
}

// volume is one CSI volume and where the demo stages and publishes it,
// laid out as the kubelet would under its own directory.
type volume struct {
	name            string
	id              string
	context         map[string]string
	staging, target string

	del, unstage, unpublish *undo
}

func (d *demo) newVolume(name string) *volume {
	return &volume{
		name:    name,
		staging: filepath.Join(d.tmp, "staging", name),
		target:  filepath.Join(d.tmp, "pods", name, "mount"),
	}
}

func (d *demo) capability() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: d.cfg.fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// rpc wraps a cleanup call to tarn. Once tarn has died the unwind says so
// at once instead of waiting out a timeout per call. Aborted is retried as
// a CO would: after an interrupt, the call the demo gave up on may still
// hold the volume in tarn until it finishes.
func (d *demo) rpc(fn func(ctx context.Context) error) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		backoff := 50 * time.Millisecond
		for {
			if !d.tarn.running() {
				return errors.New("skipped: tarn is not running")
			}
			err := fn(ctx)
			if status.Code(err) != codes.Aborted {
				return err
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w (still busy when the cleanup gave up: %v)", err, ctx.Err())
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

func (d *demo) startTarn(ctx context.Context) (string, error) {
	p, err := startTarn(d.cfg.tarn, "unix://"+d.socket, d.pool, d.tmp, d.logPath)
	if err != nil {
		return "", err
	}
	d.tarn = p
	d.stopTarn = d.undo.push("Stop tarn (SIGTERM)", func(ctx context.Context) error {
		if d.csi != nil {
			d.csi.conn.Close()
		}
		return p.stop(ctx)
	})
	if d.csi, err = dial(d.socket); err != nil {
		return "", err
	}
	if err := waitReady(ctx, p, d.socket, d.csi); err != nil {
		return "", err
	}
	// Only once tarn answers: a sweep of a tarn that never came up would
	// just wait out its timeout.
	d.sweep = d.undo.push("Delete anything else left in the pool", d.rpc(d.deleteAllListed))
	return fmt.Sprintf("pid %d, pool %s\nlog %s", p.cmd.Process.Pid, d.pool, d.logPath), nil
}

func (d *demo) pluginInfo(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	info, err := d.csi.id.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		return "", fmt.Errorf("GetPluginInfo: %w", err)
	}
	probe, err := d.csi.id.Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return "", fmt.Errorf("Probe: %w", err)
	}
	if r := probe.GetReady(); r != nil && !r.GetValue() {
		return "", errors.New("Probe answered ready=false")
	}
	return fmt.Sprintf("%s %s, backend %s, ready", info.GetName(), info.GetVendorVersion(),
		info.GetManifest()["backend"]), nil
}

// capacity also checks up front that the pool can hold the demo, so that a
// small /tmp fails here with advice rather than halfway with a cleanup.
func (d *demo) capacity(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := d.csi.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{
		VolumeCapabilities: []*csi.VolumeCapability{d.capability()},
		AccessibleTopology: &csi.Topology{Segments: map[string]string{topologyKey: nodeID}},
	})
	if err != nil {
		return "", fmt.Errorf("GetCapacity: %w", err)
	}
	st, err := statFS(d.pool)
	if err != nil {
		return "", err
	}
	d.poolFS = fsName(st.magic)
	// The volume, its restore and the expansion are each reserved whole
	// (volumes are sparse but may fill up); the snapshot copies the data.
	need := 3*d.cfg.size + 2*dataSize
	if resp.GetAvailableCapacity() < need {
		return "", fmt.Errorf("the pool on %s (%s) has %s available, the demo needs about %s: "+
			"use a smaller --size or set TMPDIR to a directory on a larger filesystem",
			d.pool, d.poolFS, fmtBytes(resp.GetAvailableCapacity()), fmtBytes(need))
	}
	return fmt.Sprintf("%s available, pool filesystem %s", fmtBytes(resp.GetAvailableCapacity()), d.poolFS), nil
}

// createVolume creates v, blank or restored from snapshotID.
func (d *demo) createVolume(ctx context.Context, v *volume, snapshotID string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req := &csi.CreateVolumeRequest{
		Name:               v.name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: d.cfg.size},
		VolumeCapabilities: []*csi.VolumeCapability{d.capability()},
		AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{{Segments: map[string]string{topologyKey: nodeID}}},
		},
	}
	if snapshotID != "" {
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapshotID}}}
	}
	resp, err := d.csi.ctrl.CreateVolume(ctx, req)
	if err != nil {
		return "", fmt.Errorf("CreateVolume: %w", err)
	}
	vol := resp.GetVolume()
	if vol.GetVolumeId() == "" {
		return "", errors.New("CreateVolume returned no volume ID")
	}
	v.id, v.context = vol.GetVolumeId(), vol.GetVolumeContext()
	v.del = d.undo.push("DeleteVolume "+v.name, d.rpc(func(ctx context.Context) error {
		_, err := d.csi.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
		return err
	}))
	if vol.GetCapacityBytes() < d.cfg.size {
		return "", fmt.Errorf("CreateVolume returned %d bytes, asked for %d", vol.GetCapacityBytes(), d.cfg.size)
	}
	detail := fmt.Sprintf("%s, %s", v.id, fmtBytes(vol.GetCapacityBytes()))
	if snapshotID != "" {
		if got := vol.GetContentSource().GetSnapshot().GetSnapshotId(); got != snapshotID {
			return "", fmt.Errorf("CreateVolume returned content source %q, want snapshot %s", got, snapshotID)
		}
		detail += ", content from " + snapshotID
	}
	return detail, nil
}

func (d *demo) stage(ctx context.Context, v *volume) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	// Pushed before the call: a stage that fails halfway may still have
	// attached or mounted, and unstaging what is not staged is harmless.
	v.unstage = d.undo.push("NodeUnstageVolume "+v.name, d.rpc(func(ctx context.Context) error {
		_, err := d.csi.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{
			VolumeId: v.id, StagingTargetPath: v.staging})
		return err
	}))
	_, err := d.csi.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId:          v.id,
		StagingTargetPath: v.staging,
		VolumeCapability:  d.capability(),
		VolumeContext:     v.context,
	})
	if err != nil {
		return "", fmt.Errorf("NodeStageVolume: %w", err)
	}
	m, ok, err := mountAt(v.staging)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("NodeStageVolume succeeded but nothing is mounted at %s", v.staging)
	}
	return fmt.Sprintf("%s (%s) mounted at %s", m.source, m.fsType, v.staging), nil
}

func (d *demo) publish(ctx context.Context, v *volume) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	v.unpublish = d.undo.push("NodeUnpublishVolume "+v.name, d.rpc(func(ctx context.Context) error {
		_, err := d.csi.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{
			VolumeId: v.id, TargetPath: v.target})
		return err
	}))
	_, err := d.csi.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId:          v.id,
		StagingTargetPath: v.staging,
		TargetPath:        v.target,
		VolumeCapability:  d.capability(),
		VolumeContext:     v.context,
	})
	if err != nil {
		return "", fmt.Errorf("NodePublishVolume: %w", err)
	}
	if _, ok, err := mountAt(v.target); err != nil {
		return "", err
	} else if !ok {
		return "", fmt.Errorf("NodePublishVolume succeeded but nothing is mounted at %s", v.target)
	}
	return "bind mount at " + v.target, nil
}

func (d *demo) stageAndPublish(ctx context.Context, v *volume) (string, error) {
	staged, err := d.stage(ctx, v)
	if err != nil {
		return "", err
	}
	published, err := d.publish(ctx, v)
	if err != nil {
		return "", err
	}
	return staged + "\n" + published, nil
}

// snapshot is taken with the volume mounted and its data not yet synced:
// only the driver's freeze can make it consistent.
func (d *demo) snapshot(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := d.csi.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
		Name: snapshotName, SourceVolumeId: d.vol.id})
	if err != nil {
		return "", fmt.Errorf("CreateSnapshot: %w", err)
	}
	s := resp.GetSnapshot()
	if s.GetSnapshotId() == "" {
		return "", errors.New("CreateSnapshot returned no snapshot ID")
	}
	d.snapID = s.GetSnapshotId()
	d.deleteSnap = d.undo.push("DeleteSnapshot "+snapshotName, d.rpc(func(ctx context.Context) error {
		_, err := d.csi.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: d.snapID})
		return err
	}))
	if !s.GetReadyToUse() {
		return "", fmt.Errorf("snapshot %s is not ready to use", d.snapID)
	}
	if s.GetSourceVolumeId() != d.vol.id {
		return "", fmt.Errorf("snapshot %s names source %q, want %s", d.snapID, s.GetSourceVolumeId(), d.vol.id)
	}
	// tarn logs how it captured the data before it answers.
	l := readTarnLog(d.logPath, d.snapID)
	how := "method " + orUnknown(l.snapshotMethod)
	if l.frozenFor != "" {
		how += ", filesystem frozen for " + l.frozenFor
	} else {
		how += ", no filesystem freeze logged"
	}
	return fmt.Sprintf("%s, %s, ready\n%s", d.snapID, fmtBytes(s.GetSizeBytes()), how), nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// deleteAllListed deletes every snapshot and volume tarn lists; the pool is
// the demo's own, so all of it is the demo's to remove.
func (d *demo) deleteAllListed(ctx context.Context) error {
	snaps, err := d.csi.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		return fmt.Errorf("ListSnapshots: %w", err)
	}
	for _, e := range snaps.GetEntries() {
		id := e.GetSnapshot().GetSnapshotId()
		if _, err := d.csi.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			return fmt.Errorf("DeleteSnapshot %s: %w", id, err)
		}
	}
	vols, err := d.csi.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		return fmt.Errorf("ListVolumes: %w", err)
	}
	for _, e := range vols.GetEntries() {
		id := e.GetVolume().GetVolumeId()
		if _, err := d.csi.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			return fmt.Errorf("DeleteVolume %s: %w", id, err)
		}
	}
	return nil
}
