package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// NodeGetCapabilities implements csi.NodeServer.
func (d *Driver) NodeGetCapabilities(ctx context.Context, req *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo implements csi.NodeServer.
func (d *Driver) NodeGetInfo(ctx context.Context, req *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		MaxVolumesPerNode:  d.cfg.MaxVolumesPerNode,
		AccessibleTopology: d.topology()[0],
	}, nil
}

// NodeStageVolume implements csi.NodeServer: the volume is attached as a
// block device and, for mount access, formatted on first use and mounted at
// the staging path.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if err := d.nodePath("staging target path", staging); err != nil {
		return nil, err
	}
	if err := validateCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
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
	want := stageWant(req.GetVolumeCapability())
	if !want.block && vol.FsType == "" {
		// Its bytes are the tenant's: probing or mounting them hands a
		// crafted image to the host's filesystem code as root.
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is a raw block volume; its content is never mounted as a filesystem: use it with volumeMode Block", id)
	}
	previous, err := d.backend.DevicePath(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	device, err := d.backend.AttachVolume(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	d.faults.Point("stage-volume.after-attach")
	// A failed stage undoes what this call did, and only that: a device
	// attached before (staged elsewhere, or a retry) is left alone.
	staged, mountedHere := false, false
	defer func() {
		if staged {
			return
		}
		if mountedHere {
			if err := d.mounter.Unmount(staging); err != nil {
				klog.ErrorS(err, "Cannot unmount after failed stage", "volumeID", id, "stagingPath", staging)
				return
			}
		}
		if previous != "" {
			return
		}
		if err := d.backend.DetachVolume(ctx, id); err != nil {
			klog.ErrorS(err, "Cannot detach after failed stage", "volumeID", id)
		}
	}()
	// A read-only flag left by a block publication cut short (or by
	// another volume on a reused loop device) must not reach this stage.
	if err := writableWhenUnpublished(device); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if want.block {
		// A block volume is published straight from its device. Its
		// filesystem mounted at this very staging path is a stage for
		// mount access: AlreadyExists, where a mount elsewhere is
		// FailedPrecondition.
		if _, err := d.alreadyMounted(staging, device, want, id); err != nil {
			return nil, err
		}
		if err := refuseRawUnderFilesystem(device, id); err != nil {
			return nil, err
		}
		staged = true
		return &csi.NodeStageVolumeResponse{}, nil
	}

	if done, err := d.alreadyMounted(staging, device, want, id); err != nil {
		return nil, err
	} else if done {
		// The stage that mounted it may have been cut short before it
		// grew the filesystem; the retry must not leave it smaller than
		// the volume.
		if err := d.growFilesystem(ctx, id, device, staging, want); err != nil {
			return nil, err
		}
		staged = true
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if others, err := publications(device); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	} else if len(others) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is already staged at %s", id, others[0])
	}

	fsType := strings.ToLower(req.GetVolumeCapability().GetMount().GetFsType())
	if fsType == "" {
		fsType = vol.FsType
	}
	if fsType == "" {
		fsType = defaultFsType
	}
	if err := d.checkFormat(device, fsType, id, want.readonly); err != nil {
		return nil, err
	}
	options := slices.Clone(want.flags)
	if fsType == "xfs" && !slices.Contains(options, "nouuid") {
		// A clone or restore has its origin's UUID; nouuid lets both
		// mount side by side.
		options = append(options, "nouuid")
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create staging path: %v", err)
	}
	if err := d.mounter.FormatAndMountWith(device, staging, fsType, options, formatOptions(fsType)); err != nil {
		return nil, d.writeFailed(ctx, id, fmt.Errorf("format and mount %s (%s) at %s: %w", device, fsType, staging, err))
	}
	mountedHere = true
	d.faults.Point("stage-volume.after-mount")
	// A volume restored or cloned into a larger size, or expanded while
	// unstaged, has a filesystem smaller than its device.
	if err := d.growFilesystem(ctx, id, device, staging, want); err != nil {
		return nil, err
	}
	staged = true
	klog.InfoS("Staged volume", "volumeID", id, "device", device, "stagingPath", staging, "fsType", fsType)
	return &csi.NodeStageVolumeResponse{}, nil
}

// growFilesystem makes the staged filesystem fill its device, except on a
// read-only stage, which must not write.
func (d *Driver) growFilesystem(ctx context.Context, id, device, staging string, want mountWant) error {
	if want.readonly {
		return nil
	}
	if err := d.mounter.ResizeFS(device, staging); err != nil {
		return d.writeFailed(ctx, id, err)
	}
	return nil
}

// checkFormat refuses, before anything is written, a filesystem the
// volume cannot take: another one is already on it, it is too small, or
// the stage is read-only and there is none yet, which it must not make.
func (d *Driver) checkFormat(device, fsType, id string, readonly bool) error {
	existing, err := d.mounter.GetDiskFormat(device)
	if err != nil {
		return status.Errorf(codes.Internal, "inspect %s: %v", device, err)
	}
	if existing != "" {
		if existing != fsType {
			return status.Errorf(codes.FailedPrecondition, "volume %s holds %s, not %s", id, existing, fsType)
		}
		return nil
	}
	if readonly {
		return status.Errorf(codes.FailedPrecondition, "volume %s holds no filesystem yet, and a read-only stage cannot make one", id)
	}
	size, err := blockDeviceSize(device)
	if err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	if min := backend.MinSize(fsType); size < min {
		return status.Errorf(codes.FailedPrecondition, "volume %s is %d bytes, too small for %s (at least %d)", id, size, fsType, min)
	}
	return nil
}

// NodeUnstageVolume implements csi.NodeServer.
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if err := d.nodePath("staging target path", staging); err != nil {
		return nil, err
	}
	release, err := d.lock(id)
	if err != nil {
		return nil, err
	}
	defer release()

	device, err := d.backend.DevicePath(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	mounted, ours, err := mountHolds(staging, device)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "inspect staging path %s: %v", staging, err)
	}
	if mounted && !ours {
		// The spec's answer for a volume not staged at this path;
		// whatever is mounted there is someone else's.
		klog.InfoS("Staging path holds another device; nothing to unstage", "volumeID", id, "stagingPath", staging)
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if device != "" {
		// Detaching a device that is still bound somewhere would only
		// arm the kernel's auto-clear; say what holds it instead.
		others, err := publications(device, staging)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
		if len(others) > 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s; unpublish it first", id, others[0])
		}
	}
	if mounted {
		if err := d.mounter.Unmount(staging); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount %s: %v", staging, err)
		}
		d.faults.Point("unstage-volume.after-unmount")
	}
	if err := d.backend.DetachVolume(ctx, id); err != nil {
		return nil, toStatus(err)
	}
	klog.InfoS("Unstaged volume", "volumeID", id, "stagingPath", staging)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume implements csi.NodeServer: a bind mount of the staged
// filesystem, or of the block device onto a file.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	if id == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if err := d.nodePath("target path", target); err != nil {
		return nil, err
	}
	if err := d.nodePath("staging target path", staging); err != nil {
		return nil, err
	}
	if err := validateCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	release, err := d.lock(id)
	if err != nil {
		return nil, err
	}
	defer release()

	if _, err := d.backend.GetVolume(ctx, id); err != nil {
		return nil, toStatus(err)
	}
	device, err := d.backend.DevicePath(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	if device == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", id)
	}
	want := publishWant(req)
	// Before what a new publication needs: a target already holding this
	// volume under the other access type is AlreadyExists, not the
	// FailedPrecondition of a volume in use elsewhere.
	if done, err := d.alreadyMounted(target, device, want, id); err != nil {
		return nil, err
	} else if done {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	block := want.block
	singleWriter := req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	// The volume's other publications, read once for the checks below
	// that need them.
	var others []string
	if block || singleWriter {
		if others, err = publications(device, staging, target); err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
	}
	source := device
	if block {
		if err := refuseRawUnderFilesystem(device, id); err != nil {
			return nil, err
		}
		if err := matchDeviceReadOnly(device, id, want.readonly, others); err != nil {
			return nil, err
		}
	} else {
		// Only this volume's own staging mount is bound: any other mount
		// named as the staging path would hand its content to the pod.
		mounted, ours, err := mountHolds(staging, device)
		switch {
		case err != nil:
			return nil, status.Errorf(codes.Internal, "inspect staging path %s: %v", staging, err)
		case !mounted:
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not mounted at staging path %s", id, staging)
		case !ours:
			return nil, status.Errorf(codes.FailedPrecondition, "staging path %s holds something other than volume %s", staging, id)
		}
		source = staging
	}

	if singleWriter && len(others) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has single-writer access and is already published at %s", id, others[0])
	}

	if err := makeTarget(target, block); err != nil {
		return nil, status.Errorf(codes.Internal, "create target path: %v", err)
	}
	err = bindMount(source, target, want.readonly, want.flags)
	if errors.Is(err, errNoMountAPI) {
		options := append([]string{"bind"}, want.flags...)
		if want.readonly && !slices.Contains(options, "ro") {
			options = append(options, "ro")
		}
		err = d.mounter.Mount(source, target, "", options)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "bind %s at %s: %v", source, target, err)
	}
	klog.InfoS("Published volume", "volumeID", id, "targetPath", target, "block", block, "readonly", want.readonly)
	return &csi.NodePublishVolumeResponse{}, nil
}

// matchDeviceReadOnly makes a block publication's device read-only or
// writable as the publication asks. The flag belongs to the device, so a
// publication that wants it otherwise than the others already there is
// refused: it would change theirs.
func matchDeviceReadOnly(device, id string, readonly bool, others []string) error {
	ro, err := deviceReadOnly(device)
	if err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	if len(others) > 0 && ro != readonly {
		have, asked := "writable", "read-only"
		if ro {
			have, asked = "read-only", "writable"
		}
		return status.Errorf(codes.FailedPrecondition, "volume %s is published %s at %s; a raw block device is read-only or writable for all its publications, so it cannot also be published %s", id, have, others[0], asked)
	}
	if ro != readonly {
		if err := setDeviceReadOnly(device, readonly); err != nil {
			return status.Errorf(codes.Internal, "%v", err)
		}
	}
	return nil
}

// refuseRawUnderFilesystem keeps a volume staged for mount access from
// being handed out as a raw device too: writes beside a mounted filesystem
// corrupt it, and the block stage would make an unstage that cannot undo
// the mount.
func refuseRawUnderFilesystem(device, id string) error {
	mounts, err := filesystemMounts(device)
	if err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	if len(mounts) > 0 {
		return status.Errorf(codes.FailedPrecondition, "volume %s is staged with a filesystem mounted at %s; it cannot be used for block access too", id, mounts[0])
	}
	return nil
}

// alreadyMounted makes stage and publish idempotent: true when path already
// holds this volume's device mounted as want asks, AlreadyExists when it
// holds something else or this volume mounted otherwise.
func (d *Driver) alreadyMounted(path, device string, want mountWant, id string) (bool, error) {
	mounted, err := isMountPoint(d.mounter, path)
	if err != nil {
		return false, status.Errorf(codes.Internal, "inspect %s: %v", path, err)
	}
	if !mounted {
		return false, nil
	}
	have, same, err := mountedDevice(path, device)
	if err != nil {
		return false, status.Errorf(codes.Internal, "inspect %s: %v", path, err)
	}
	if !same {
		return false, status.Errorf(codes.AlreadyExists, "%s already holds something other than volume %s", path, id)
	}
	if want, err = want.withStagingReadonly(); err != nil {
		return false, status.Errorf(codes.Internal, "%v", err)
	}
	if diffs := have.incompatibilities(want); len(diffs) > 0 {
		verb := "staged"
		if want.publish {
			verb = "published"
		}
		return false, errIncompatible(id, verb, path, diffs)
	}
	return true, nil
}

// formatOptions are given to mkfs on first use. ext4 gets
// metadata_csum_seed so that a user who gives a clone a new UUID
// (tune2fs -U, on an unmounted copy; Tarn never does) only rewrites
// the superblock instead of every checksum.
func formatOptions(fsType string) []string {
	if fsType == "ext4" {
		return []string{"-O", "metadata_csum_seed"}
	}
	return nil
}

// makeTarget creates the mount point: a directory for a filesystem, an
// empty file for a block device to be bound onto.
func makeTarget(target string, block bool) error {
	if !block {
		return os.MkdirAll(target, 0o750)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// NodeUnpublishVolume implements csi.NodeServer. The target is unmounted
// and removed when it holds this volume; a target that is gone, or that
// holds something else, is the spec's "not published there": success, and
// nothing is touched.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if err := d.nodePath("target path", target); err != nil {
		return nil, err
	}
	release, err := d.lock(id)
	if err != nil {
		return nil, err
	}
	defer release()

	m, err := mountAt(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "inspect target path %s: %v", target, err)
	}
	if m != nil {
		device, err := d.backend.DevicePath(ctx, id)
		if err != nil {
			return nil, toStatus(err)
		}
		ours, err := entryHolds(m, device)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "inspect target path %s: %v", target, err)
		}
		if !ours {
			klog.InfoS("Target path holds another device; nothing to unpublish", "volumeID", id, "targetPath", target)
			return &csi.NodeUnpublishVolumeResponse{}, nil
		}
		if err := d.mounter.Unmount(target); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
		}
		if isDeviceNodeBind(m) {
			if err := writableWhenUnpublished(device); err != nil {
				return nil, status.Errorf(codes.Internal, "%v", err)
			}
		}
	}
	if err := removeTarget(target); err != nil {
		return nil, status.Errorf(codes.Internal, "remove target path %s: %v", target, err)
	}
	klog.InfoS("Unpublished volume", "volumeID", id, "targetPath", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// writableWhenUnpublished clears a read-only flag that block
// publications set once none is left: the next user of the device, this
// volume staged again or another volume on a reused loop device, must
// find it writable.
func writableWhenUnpublished(device string) error {
	others, err := publications(device)
	if err != nil || len(others) > 0 {
		return err
	}
	if ro, err := deviceReadOnly(device); err != nil || !ro {
		return err
	}
	return setDeviceReadOnly(device, false)
}

// removeTarget removes what makeTarget creates, an empty directory or an
// empty file, and leaves anything else alone: a path with content was not
// made by a publish.
func removeTarget(target string) error {
	fi, err := os.Lstat(target)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if !fi.IsDir() && !(fi.Mode().IsRegular() && fi.Size() == 0) {
		klog.InfoS("Target path is not what a publish makes; left in place", "targetPath", target, "mode", fi.Mode().String())
		return nil
	}
	err = os.Remove(target)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

func notFoundPath(what, p string) error {
	return status.Error(codes.NotFound, fmt.Sprintf("%s %s does not exist", what, p))
}
