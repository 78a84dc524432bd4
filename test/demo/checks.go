package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/tarn-csi/tarn/test/harness"
)

const (
	dataFileName  = "data.bin"
	laterFileName = "after-snapshot.bin"
)

func (d *demo) writeData(ctx context.Context) (string, error) {
	start := time.Now()
	sum, err := writeRandom(filepath.Join(d.vol.target, dataFileName), dataSize, false)
	if err != nil {
		return "", err
	}
	d.dataSum = sum
	rate := float64(dataSize) / float64(mib) / time.Since(start).Seconds()
	return fmt.Sprintf("%s: %s random, sha256 %s (%.0f MiB/s)", dataFileName, fmtBytes(dataSize), shortSum(sum), rate), nil
}

// writeLater goes on writing to the source volume after its snapshot, in
// several appends as an application would; none of it may reach the
// restore.
func (d *demo) writeLater(ctx context.Context) (string, error) {
	const appends = 4
	path := filepath.Join(d.vol.target, laterFileName)
	for range appends {
		if _, err := writeRandom(path, laterSize/appends, true); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%s: %s in %d appends on %s", laterFileName, fmtBytes(laterSize), appends, d.vol.name), nil
}

// verifyRestore reads the restore freshly mounted, so from its device.
func (d *demo) verifyRestore(ctx context.Context) (string, error) {
	sum, n, err := hashFile(filepath.Join(d.restore.target, dataFileName), false)
	if err != nil {
		return "", fmt.Errorf("restored %s: %w", dataFileName, err)
	}
	if sum != d.dataSum || n != dataSize {
		return "", fmt.Errorf("restored %s has sha256 %s (%d bytes), written was %s (%d bytes)",
			dataFileName, sum, n, d.dataSum, dataSize)
	}
	if _, err := os.Stat(filepath.Join(d.restore.target, laterFileName)); err == nil {
		return "", fmt.Errorf("restored volume holds %s, written after the snapshot: the snapshot is not point-in-time", laterFileName)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(d.vol.target, laterFileName)); err != nil {
		return "", fmt.Errorf("the source volume lost %s: %w", laterFileName, err)
	}
	return fmt.Sprintf("%s sha256 matches (%s)\n%s absent, as at the snapshot", dataFileName, fmtBytes(n), laterFileName), nil
}

func (d *demo) expandedSize() int64 { return 2 * d.cfg.size }

func (d *demo) controllerExpand(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	st, err := statFS(d.vol.target)
	if err != nil {
		return "", err
	}
	d.fsBefore = st.total
	resp, err := d.csi.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId:         d.vol.id,
		CapacityRange:    &csi.CapacityRange{RequiredBytes: d.expandedSize()},
		VolumeCapability: d.capability(),
	})
	if err != nil {
		return "", fmt.Errorf("ControllerExpandVolume: %w", err)
	}
	if resp.GetCapacityBytes() < d.expandedSize() {
		return "", fmt.Errorf("ControllerExpandVolume returned %d bytes, asked for %d", resp.GetCapacityBytes(), d.expandedSize())
	}
	if !resp.GetNodeExpansionRequired() {
		return "", errors.New("ControllerExpandVolume says no node expansion is needed, but a mounted filesystem must grow")
	}
	return fmt.Sprintf("backing file now %s, node expansion required", fmtBytes(resp.GetCapacityBytes())), nil
}

// nodeExpand grows the filesystem online and re-reads the data from disk:
// a resize that damaged the filesystem must not hide behind the page
// cache.
func (d *demo) nodeExpand(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := d.csi.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
		VolumeId:          d.vol.id,
		VolumePath:        d.vol.target,
		StagingTargetPath: d.vol.staging,
		CapacityRange:     &csi.CapacityRange{RequiredBytes: d.expandedSize()},
		VolumeCapability:  d.capability(),
	})
	if err != nil {
		return "", fmt.Errorf("NodeExpandVolume: %w", err)
	}
	if resp.GetCapacityBytes() != 0 && resp.GetCapacityBytes() < d.expandedSize() {
		return "", fmt.Errorf("NodeExpandVolume returned %d bytes, asked for %d", resp.GetCapacityBytes(), d.expandedSize())
	}
	st, err := statFS(d.vol.target)
	if err != nil {
		return "", err
	}
	d.fsAfter = st.total
	// Filesystem overhead grows with the size, so demand most of the
	// added space rather than all of it.
	if grown := d.fsAfter - d.fsBefore; grown < d.cfg.size*9/10 {
		return "", fmt.Errorf("filesystem grew from %s to %s, expected about %s more",
			fmtBytes(d.fsBefore), fmtBytes(d.fsAfter), fmtBytes(d.cfg.size))
	}
	sum, n, err := hashFile(filepath.Join(d.vol.target, dataFileName), true)
	if err != nil {
		return "", err
	}
	if sum != d.dataSum || n != dataSize {
		return "", fmt.Errorf("%s changed across the expansion: sha256 %s (%d bytes), written was %s", dataFileName, sum, n, d.dataSum)
	}
	return fmt.Sprintf("filesystem %s -> %s (statfs)\n%s intact, re-read from disk", fmtBytes(d.fsBefore), fmtBytes(d.fsAfter), dataFileName), nil
}

func (d *demo) volumeStats(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := d.csi.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{
		VolumeId: d.vol.id, VolumePath: d.vol.target, StagingTargetPath: d.vol.staging})
	if err != nil {
		return "", fmt.Errorf("NodeGetVolumeStats: %w", err)
	}
	bytes, inodes := harness.Usage(resp)
	if bytes == nil {
		return "", errors.New("NodeGetVolumeStats reported no byte usage")
	}
	if bytes.GetTotal() != d.fsAfter {
		return "", fmt.Errorf("NodeGetVolumeStats says %d bytes in total, statfs says %d", bytes.GetTotal(), d.fsAfter)
	}
	if bytes.GetUsed() < dataSize+laterSize {
		return "", fmt.Errorf("NodeGetVolumeStats says %d bytes used, the demo wrote %d", bytes.GetUsed(), dataSize+laterSize)
	}
	detail := fmt.Sprintf("bytes: %s used, %s available, %s total",
		fmtBytes(bytes.GetUsed()), fmtBytes(bytes.GetAvailable()), fmtBytes(bytes.GetTotal()))
	if inodes != nil {
		detail += fmt.Sprintf("\ninodes: %d used of %d", inodes.GetUsed(), inodes.GetTotal())
	}
	return detail, nil
}

// runUndos tears down in the given order, stopping at the first failure;
// whatever is left then goes to the unwind.
func runUndos(ctx context.Context, undos ...*undo) error {
	for _, u := range undos {
		if err := u.run(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) unpublishAndUnstage(ctx context.Context) (string, error) {
	err := runUndos(ctx, d.restore.unpublish, d.restore.unstage, d.vol.unpublish, d.vol.unstage)
	if err != nil {
		return "", err
	}
	// The driver answering success is not enough: the kernel must agree.
	l, err := findLeftovers(d.tmp)
	if err != nil {
		return "", err
	}
	if !l.empty() {
		return "", fmt.Errorf("unpublish and unstage succeeded but:\n%s", l)
	}
	return "both volumes unmounted and detached", nil
}

func (d *demo) deleteAll(ctx context.Context) (string, error) {
	if err := runUndos(ctx, d.restore.del, d.deleteSnap, d.vol.del); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s, %s, %s", d.restore.name, snapshotName, d.vol.name), nil
}

func (d *demo) listEmpty(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	vols, err := d.csi.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		return "", fmt.Errorf("ListVolumes: %w", err)
	}
	snaps, err := d.csi.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		return "", fmt.Errorf("ListSnapshots: %w", err)
	}
	var left []string
	for _, e := range vols.GetEntries() {
		left = append(left, "volume "+e.GetVolume().GetVolumeId())
	}
	for _, e := range snaps.GetEntries() {
		left = append(left, "snapshot "+e.GetSnapshot().GetSnapshotId())
	}
	if len(left) > 0 {
		return "", fmt.Errorf("still listed after deletion: %s", strings.Join(left, ", "))
	}
	d.sweep.dismiss()
	return "no volumes, no snapshots", nil
}

func (d *demo) stop(ctx context.Context) (string, error) {
	if err := d.stopTarn.run(ctx); err != nil {
		return "", err
	}
	d.log = readTarnLog(d.logPath, d.snapID)
	return "exited with status 0", nil
}

// nothingLeft checks with the kernel, then removes the temporary
// directory, which is safe only once nothing is mounted under it.
func (d *demo) nothingLeft(ctx context.Context) (string, error) {
	l, err := findLeftovers(d.tmp)
	if err != nil {
		return "", err
	}
	if !l.empty() {
		return "", fmt.Errorf("left behind:\n%s", l)
	}
	detail := "no loop device backed by the pool, no mount under " + d.tmp
	if d.cfg.keep {
		return detail + "\nkept " + d.tmp + " (--keep)", nil
	}
	if err := os.RemoveAll(d.tmp); err != nil {
		return "", fmt.Errorf("remove %s: %w", d.tmp, err)
	}
	if _, err := os.Stat(d.tmp); !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s still exists after removal (%v)", d.tmp, err)
	}
	return detail + "\nremoved " + d.tmp, nil
}
