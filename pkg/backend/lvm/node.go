package lvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// nearlyFull is the thin pool usage, in percent of data or metadata, from
// which its volumes are reported degraded: a full pool fails or stalls the
// writes of every volume in it.
const nearlyFull = 90

// AttachVolume implements backend.Backend: attaching is activating the LV.
func (b *Backend) AttachVolume(ctx context.Context, id string) (string, error) {
	o, err := b.getVolume(ctx, id)
	if err != nil {
		return "", err
	}
	path := b.devicePath(id)
	if !o.lv.Active {
		// A volume LV should never have the activation-skip flag, but
		// plain activation would silently do nothing if it had.
		if err := b.client.Activate(ctx, b.cfg.VolumeGroup, id, o.lv.SkipActivation); err != nil {
			return "", fmt.Errorf("activate %s: %w", id, err)
		}
		lv, err := b.client.LV(ctx, b.cfg.VolumeGroup, id)
		if err != nil {
			return "", err
		}
		if !lv.Active {
			return "", fmt.Errorf("LVM reported success activating %s, but it is not active", id)
		}
		klog.V(2).InfoS("Activated LV", "volumeID", id, "device", path)
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s is active but its device node is missing: %w", id, err)
	}
	if o.ZeroFrom > 0 {
		// Before anything can grow its filesystem into what an
		// interrupted expansion added: zeroing it later would wipe that.
		if err := b.zeroGrowth(ctx, id, o.ZeroFrom); err != nil {
			return "", err
		}
	}
	return path, nil
}

// DetachVolume implements backend.Backend: the LV is deactivated, which
// fails with ErrInUse while anything holds it open.
func (b *Backend) DetachVolume(ctx context.Context, id string) error {
	if !backend.ValidVolumeID(id) {
		return fmt.Errorf("%w: volume %q", backend.ErrNotFound, id)
	}
	lv, err := b.client.LV(ctx, b.cfg.VolumeGroup, id)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !lv.Active {
		return nil
	}
	if err := b.client.Deactivate(ctx, b.cfg.VolumeGroup, id); err != nil {
		return fmt.Errorf("deactivate %s: %w", id, err)
	}
	klog.V(2).InfoS("Deactivated LV", "volumeID", id)
	return nil
}

// DevicePath implements backend.Backend.
func (b *Backend) DevicePath(ctx context.Context, id string) (string, error) {
	if !backend.ValidVolumeID(id) {
		return "", fmt.Errorf("%w: volume %q", backend.ErrNotFound, id)
	}
	lv, err := b.client.LV(ctx, b.cfg.VolumeGroup, id)
	if errors.Is(err, backend.ErrNotFound) {
		return "", nil
	}
	if err != nil || !lv.Active {
		return "", err
	}
	return b.devicePath(id), nil
}

// RefreshDevice implements backend.Backend. lvextend reloads the active
// device-mapper table itself, so there is normally nothing to do; the
// device's size is checked anyway, and the table reloaded if it lags.
func (b *Backend) RefreshDevice(ctx context.Context, id string) error {
	o, err := b.getVolume(ctx, id)
	if err != nil || !o.lv.Active {
		return err
	}
	path := b.devicePath(id)
	size, err := deviceSize(path)
	if err != nil || size >= o.lv.Size {
		return err
	}
	klog.InfoS("Device is smaller than its LV; reloading it", "volumeID", id, "device", size, "lv", o.lv.Size)
	if err := b.client.Refresh(ctx, b.cfg.VolumeGroup, id); err != nil {
		return fmt.Errorf("refresh %s: %w", id, err)
	}
	if size, err = deviceSize(path); err != nil {
		return err
	}
	if size < o.lv.Size {
		return fmt.Errorf("device %s is %d bytes after a refresh, its LV %d", path, size, o.lv.Size)
	}
	return nil
}

// deviceSize is the size of a block device, which seeking to its end
// reports.
func deviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", path, err)
	}
	return n, nil
}

// Health implements backend.Backend.
func (b *Backend) Health(ctx context.Context, id string) []backend.Problem {
	o, err := b.getVolume(ctx, id)
	if errors.Is(err, backend.ErrNotFound) {
		return []backend.Problem{{Kind: backend.Inaccessible, Reason: "VolumeNotFound",
			Message: fmt.Sprintf("no complete LV %s in volume group %s: %v", id, b.cfg.VolumeGroup, err)}}
	}
	if err != nil {
		return []backend.Problem{{Kind: backend.Inaccessible, Reason: "LVMUnavailable", Message: err.Error()}}
	}
	problems := lvProblems(o.lv)
	if !o.lv.IsThin() {
		return problems
	}
	pool, err := b.client.LV(ctx, b.cfg.VolumeGroup, o.lv.Pool)
	if err != nil {
		return append(problems, backend.Problem{Kind: backend.Inaccessible, Reason: "ThinPoolMissing",
			Message: fmt.Sprintf("thin pool %s/%s of the volume: %v", b.cfg.VolumeGroup, o.lv.Pool, err)})
	}
	return append(problems, poolProblems(pool)...)
}

// lvProblems reads the health and state characters of an LV's lv_attr.
func lvProblems(lv lvmcmd.LV) []backend.Problem {
	var out []backend.Problem
	switch lv.AttrHealth() {
	case 'p':
		out = append(out, backend.Problem{Kind: backend.Inaccessible, Reason: "PhysicalVolumeMissing",
			Message: "the LV is partial: a physical volume it lives on is missing"})
	case 'r':
		out = append(out, backend.Problem{Kind: backend.Degraded, Reason: "RefreshNeeded",
			Message: "LVM reports the LV needs a refresh (a device failed and came back)"})
	case 'm':
		out = append(out, backend.Problem{Kind: backend.Degraded, Reason: "Mismatches",
			Message: "LVM reports mismatches in the LV's RAID images"})
	}
	if lv.AttrState() == 's' {
		out = append(out, backend.Problem{Kind: backend.Degraded, Reason: "Suspended",
			Message: "the LV's device is suspended: I/O to it blocks"})
	}
	return out
}

// poolProblems describes what is wrong with a thin pool, for every volume
// in it.
func poolProblems(pool lvmcmd.LV) []backend.Problem {
	name := pool.VG + "/" + pool.Name
	var out []backend.Problem
	switch pool.AttrHealth() {
	case 'F':
		out = append(out, backend.Problem{Kind: backend.Inaccessible, Reason: "ThinPoolFailed",
			Message: fmt.Sprintf("thin pool %s has failed", name)})
	case 'D':
		out = append(out, backend.Problem{Kind: backend.Inaccessible, Reason: "ThinPoolOutOfDataSpace",
			Message: fmt.Sprintf("thin pool %s is out of data space: writes to unallocated blocks fail", name)})
	case 'M':
		out = append(out, backend.Problem{Kind: backend.Inaccessible, Reason: "ThinPoolMetadataReadOnly",
			Message: fmt.Sprintf("thin pool %s has read-only metadata (out of metadata space or damaged)", name)})
	}
	if s := pool.AttrState(); s == 'c' || s == 'C' {
		out = append(out, backend.Problem{Kind: backend.Degraded, Reason: "ThinPoolCheckNeeded",
			Message: fmt.Sprintf("thin pool %s needs a metadata check (thin_check)", name)})
	}
	if !pool.Active {
		return append(out, backend.Problem{Kind: backend.Degraded, Reason: "ThinPoolInactive",
			Message: fmt.Sprintf("thin pool %s is not active; its volumes cannot be used until it is", name)})
	}
	if pool.UsageKnown && pool.DataPercent >= nearlyFull {
		out = append(out, backend.Problem{Kind: backend.Degraded, Reason: "ThinPoolDataNearlyFull",
			Message: fmt.Sprintf("thin pool %s data is %.2f%% full; writes fail when it is full", name, pool.DataPercent)})
	}
	if pool.UsageKnown && pool.MetadataPercent >= nearlyFull {
		out = append(out, backend.Problem{Kind: backend.Degraded, Reason: "ThinPoolMetadataNearlyFull",
			Message: fmt.Sprintf("thin pool %s metadata is %.2f%% full; the pool turns read-only when it is full", name, pool.MetadataPercent)})
	}
	return out
}
