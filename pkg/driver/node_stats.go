package driver

import (
	"context"
	"errors"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// NodeGetVolumeStats implements csi.NodeServer.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if path == "" {
		return nil, errInvalid("volume path is missing")
	}
	if _, err := d.backend.GetVolume(ctx, id); err != nil {
		return nil, toStatus(err)
	}
	if err := d.existingPath(path); err != nil {
		return nil, err
	}

	block, err := isBlockDevice(path)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "inspect %s: %v", path, err)
	}
	// After a reboot the kubelet asks about paths that still exist with
	// nothing mounted on them: statfs would report the node's root disk
	// as the volume. Only a path that holds the volume's device counts.
	device, err := d.backend.DevicePath(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	if device == "" {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	if held, err := holdsDevice(path, device, block); err != nil || !held {
		return nil, status.Errorf(codes.NotFound, "volume %s is not at %s", id, path)
	}
	if block {
		size, err := blockDeviceSize(path)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
		return &csi.NodeGetVolumeStatsResponse{
			Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}},
		}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bsize := st.Bsize
	return &csi.NodeGetVolumeStatsResponse{
		Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bsize,
				Available: int64(st.Bavail) * bsize, Used: int64(st.Blocks-st.Bfree) * bsize},
			{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files),
				Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
		},
	}, nil
}

// NodeExpandVolume implements csi.NodeServer. It also grows the backing
// store when no controller call reached this node (per-node deployments),
// then makes the device see the new size and grows a mounted filesystem
// online.
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if path == "" {
		return nil, errInvalid("volume path is missing")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := validateCapability(c); err != nil {
			return nil, err
		}
	}
	release, err := d.lock(id)
	if err != nil {
		return nil, err
	}
	defer release()

	vol, err := d.backend.GetVolume(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := d.existingPath(path); err != nil {
		return nil, err
	}
	size := vol.SizeBytes
	if r := req.GetCapacityRange(); r != nil && r.GetRequiredBytes() > 0 {
		if size, err = d.backend.ExpandVolume(ctx, id, r.GetRequiredBytes(), r.GetLimitBytes()); err != nil {
			return nil, toStatus(err)
		}
	}
	if err := d.backend.RefreshDevice(ctx, id); err != nil {
		return nil, toStatus(err)
	}
	block, err := isBlockDevice(path)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "inspect %s: %v", path, err)
	}
	if block || req.GetVolumeCapability().GetBlock() != nil {
		return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
	}
	device, err := d.backend.DevicePath(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	if device == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", id)
	}
	// The publication the CO names may be a read-only bind, and
	// xfs_growfs and resize2fs need a writable mount: grow through the
	// staging mount, or any other writable mount of the device.
	var candidates []string
	if st := req.GetStagingTargetPath(); st != "" && validatePath("staging target path", st) == nil {
		candidates = append(candidates, st)
	}
	growAt, err := writableMountOf(device, append(candidates, path)...)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "find a writable mount of %s: %v", device, err)
	}
	if growAt == "" {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s has no writable mount on this node to grow its filesystem through (%s is read-only)", id, path)
	}
	if err := d.mounter.ResizeFS(device, growAt); err != nil {
		return nil, d.writeFailed(ctx, id, err)
	}
	klog.InfoS("Expanded volume on node", "volumeID", id, "size", size, "path", path)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// existingPath accepts a volume path only when it is absolute, clean and
// present; anything else names no volume on this node. A path outside the
// kubelet directory is refused outright.
func (d *Driver) existingPath(p string) error {
	if validatePath("volume path", p) != nil {
		return notFoundPath("volume path", p)
	}
	if err := d.confinePath("volume path", p); err != nil {
		return err
	}
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		return notFoundPath("volume path", p)
	}
	return nil
}
