package reliability

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// generalCodes may answer any call, per the spec's general error table:
// a request field missing or unacceptable, or an operation already pending
// on the volume or snapshot.
var generalCodes = []codes.Code{codes.OK, codes.InvalidArgument, codes.Aborted}

// fuzzRPC is one RPC of the driver: how to make and send a random request,
// and the codes the spec gives it beyond generalCodes.
type fuzzRPC struct {
	method string
	codes  []codes.Code
	send   func(ctx context.Context, e *env, f *fuzzer) (req, resp proto.Message, err error)
}

const (
	notFound      = codes.NotFound
	alreadyExists = codes.AlreadyExists
	precondition  = codes.FailedPrecondition
	exhausted     = codes.ResourceExhausted
	outOfRange    = codes.OutOfRange
	unimplemented = codes.Unimplemented
)

// fuzzRPCs lists every RPC of the CSI services the driver registers, and
// two of the group controller service, which it does not.
var fuzzRPCs = []fuzzRPC{
	{"GetPluginInfo", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.GetPluginInfoRequest{}
		resp, err := e.ident.GetPluginInfo(ctx, req)
		return req, resp, err
	}},
	{"Probe", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ProbeRequest{}
		resp, err := e.ident.Probe(ctx, req)
		return req, resp, err
	}},
	{"GetPluginCapabilities", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.GetPluginCapabilitiesRequest{}
		resp, err := e.ident.GetPluginCapabilities(ctx, req)
		return req, resp, err
	}},
	{"CreateVolume", []codes.Code{notFound, alreadyExists, exhausted, outOfRange}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.CreateVolumeRequest{Name: f.name(), CapacityRange: f.capacityRange(), VolumeCapabilities: f.capabilities(),
			Parameters: f.strMap(), Secrets: f.strMap(), VolumeContentSource: f.contentSource(),
			AccessibilityRequirements: f.topology(), MutableParameters: f.strMap()}
		resp, err := e.ctrl.CreateVolume(ctx, req)
		return req, resp, err
	}},
	{"DeleteVolume", []codes.Code{precondition}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.DeleteVolumeRequest{VolumeId: f.volumeID(), Secrets: f.strMap()}
		resp, err := e.ctrl.DeleteVolume(ctx, req)
		return req, resp, err
	}},
	{"ControllerPublishVolume", []codes.Code{unimplemented}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ControllerPublishVolumeRequest{VolumeId: f.volumeID(), NodeId: f.pick([]string{nodeID, f.str()}),
			VolumeCapability: f.capability(), Readonly: f.chance(0.5), VolumeContext: f.strMap()}
		resp, err := e.ctrl.ControllerPublishVolume(ctx, req)
		return req, resp, err
	}},
	{"ControllerUnpublishVolume", []codes.Code{unimplemented}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ControllerUnpublishVolumeRequest{VolumeId: f.volumeID(), NodeId: f.str()}
		resp, err := e.ctrl.ControllerUnpublishVolume(ctx, req)
		return req, resp, err
	}},
	{"ValidateVolumeCapabilities", []codes.Code{notFound}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ValidateVolumeCapabilitiesRequest{VolumeId: f.volumeID(), VolumeCapabilities: f.capabilities(),
			VolumeContext: f.strMap(), Parameters: f.strMap(), MutableParameters: f.strMap()}
		resp, err := e.ctrl.ValidateVolumeCapabilities(ctx, req)
		return req, resp, err
	}},
	{"ListVolumes", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ListVolumesRequest{MaxEntries: f.maxEntries(), StartingToken: f.token(f.volumeID)}
		resp, err := e.ctrl.ListVolumes(ctx, req)
		return req, resp, err
	}},
	{"ControllerListVolumeHealth", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ControllerListVolumeHealthRequest{MaxEntries: f.maxEntries(), StartingToken: f.token(f.volumeID)}
		resp, err := e.ctrl.ControllerListVolumeHealth(ctx, req)
		return req, resp, err
	}},
	{"ControllerGetVolumeHealth", []codes.Code{notFound}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ControllerGetVolumeHealthRequest{VolumeId: f.volumeID()}
		resp, err := e.ctrl.ControllerGetVolumeHealth(ctx, req)
		return req, resp, err
	}},
	{"GetCapacity", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.GetCapacityRequest{VolumeCapabilities: f.capabilities(), Parameters: f.strMap()}
		if t := f.topology(); t != nil && len(t.Requisite) > 0 {
			req.AccessibleTopology = t.Requisite[0]
		}
		resp, err := e.ctrl.GetCapacity(ctx, req)
		return req, resp, err
	}},
	{"ControllerGetCapabilities", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ControllerGetCapabilitiesRequest{}
		resp, err := e.ctrl.ControllerGetCapabilities(ctx, req)
		return req, resp, err
	}},
	// Not in the spec's table for CreateSnapshot, but what csi-sanity and
	// the snapshotter expect for a source volume that does not exist.
	{"CreateSnapshot", []codes.Code{alreadyExists, exhausted, notFound}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.CreateSnapshotRequest{Name: f.name(), SourceVolumeId: f.volumeID(), Parameters: f.strMap(), Secrets: f.strMap()}
		resp, err := e.ctrl.CreateSnapshot(ctx, req)
		return req, resp, err
	}},
	{"DeleteSnapshot", []codes.Code{precondition}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.DeleteSnapshotRequest{SnapshotId: f.snapshotID()}
		resp, err := e.ctrl.DeleteSnapshot(ctx, req)
		return req, resp, err
	}},
	{"ListSnapshots", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ListSnapshotsRequest{MaxEntries: f.maxEntries(), StartingToken: f.token(f.snapshotID)}
		if f.chance(0.3) {
			req.SourceVolumeId = f.volumeID()
		}
		if f.chance(0.3) {
			req.SnapshotId = f.snapshotID()
		}
		resp, err := e.ctrl.ListSnapshots(ctx, req)
		return req, resp, err
	}},
	{"GetSnapshot", []codes.Code{notFound}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.GetSnapshotRequest{SnapshotId: f.snapshotID()}
		resp, err := e.ctrl.GetSnapshot(ctx, req)
		return req, resp, err
	}},
	// ResourceExhausted is not in the spec's table for expansion, which has
	// no code for a full pool; it is what CreateVolume uses for one.
	{"ControllerExpandVolume", []codes.Code{notFound, outOfRange, precondition, exhausted}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ControllerExpandVolumeRequest{VolumeId: f.volumeID(), CapacityRange: f.capacityRange()}
		if f.chance(0.5) {
			req.VolumeCapability = f.capability()
		}
		resp, err := e.ctrl.ControllerExpandVolume(ctx, req)
		return req, resp, err
	}},
	{"ControllerGetVolume", []codes.Code{notFound}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ControllerGetVolumeRequest{VolumeId: f.volumeID()}
		resp, err := e.ctrl.ControllerGetVolume(ctx, req)
		return req, resp, err
	}},
	{"ControllerModifyVolume", []codes.Code{unimplemented}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.ControllerModifyVolumeRequest{VolumeId: f.volumeID(), MutableParameters: f.strMap()}
		resp, err := e.ctrl.ControllerModifyVolume(ctx, req)
		return req, resp, err
	}},
	{"NodeStageVolume", []codes.Code{notFound, alreadyExists, precondition}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeStageVolumeRequest{VolumeId: f.volumeID(), StagingTargetPath: f.path(stagingPath),
			VolumeCapability: f.capability(), VolumeContext: f.strMap(), PublishContext: f.strMap()}
		resp, err := e.node.NodeStageVolume(ctx, req)
		return req, resp, err
	}},
	{"NodeUnstageVolume", []codes.Code{notFound, precondition}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeUnstageVolumeRequest{VolumeId: f.volumeID(), StagingTargetPath: f.path(stagingPath)}
		if f.valid() && len(f.staged) > 0 {
			pair := f.staged[f.r.IntN(len(f.staged))]
			req.VolumeId, req.StagingTargetPath = pair[0], pair[1]
		}
		resp, err := e.node.NodeUnstageVolume(ctx, req)
		return req, resp, err
	}},
	{"NodePublishVolume", []codes.Code{notFound, alreadyExists, precondition}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		c := f.capability()
		req := &csi.NodePublishVolumeRequest{VolumeId: f.volumeID(), StagingTargetPath: f.path(stagingPath),
			TargetPath: f.path(targetFor(c)), VolumeCapability: c, Readonly: f.chance(0.3), VolumeContext: f.strMap()}
		if f.valid() && len(f.staged) > 0 {
			pair := f.staged[f.r.IntN(len(f.staged))]
			req.VolumeId, req.StagingTargetPath = pair[0], pair[1]
		}
		resp, err := e.node.NodePublishVolume(ctx, req)
		return req, resp, err
	}},
	{"NodeUnpublishVolume", []codes.Code{notFound}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeUnpublishVolumeRequest{VolumeId: f.volumeID(), TargetPath: f.path(f.pick([]string{mountTarget, blockTarget}))}
		f.usePublished(&req.VolumeId, &req.TargetPath)
		resp, err := e.node.NodeUnpublishVolume(ctx, req)
		return req, resp, err
	}},
	{"NodeGetVolumeStats", []codes.Code{notFound}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeGetVolumeStatsRequest{VolumeId: f.volumeID(), VolumePath: f.path(f.pick([]string{mountTarget, blockTarget}))}
		f.usePublished(&req.VolumeId, &req.VolumePath)
		if f.chance(0.3) {
			req.StagingTargetPath = f.path(stagingPath)
		}
		resp, err := e.node.NodeGetVolumeStats(ctx, req)
		return req, resp, err
	}},
	{"NodeGetVolumeHealth", []codes.Code{notFound}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeGetVolumeHealthRequest{VolumeId: f.volumeID(), VolumePublishPath: f.path(mountTarget)}
		if f.chance(0.5) {
			req.StagingTargetPath = f.path(stagingPath)
		}
		resp, err := e.node.NodeGetVolumeHealth(ctx, req)
		return req, resp, err
	}},
	{"NodeGetStorageHealth", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeGetStorageHealthRequest{}
		resp, err := e.node.NodeGetStorageHealth(ctx, req)
		return req, resp, err
	}},
	{"NodeExpandVolume", []codes.Code{notFound, outOfRange, precondition, exhausted}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeExpandVolumeRequest{VolumeId: f.volumeID(), VolumePath: f.path(mountTarget), CapacityRange: f.capacityRange()}
		f.usePublished(&req.VolumeId, &req.VolumePath)
		if f.chance(0.5) {
			req.VolumeCapability = f.capability()
		}
		if f.chance(0.3) {
			req.StagingTargetPath = f.path(stagingPath)
		}
		resp, err := e.node.NodeExpandVolume(ctx, req)
		return req, resp, err
	}},
	{"NodeGetCapabilities", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeGetCapabilitiesRequest{}
		resp, err := e.node.NodeGetCapabilities(ctx, req)
		return req, resp, err
	}},
	{"NodeGetInfo", nil, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.NodeGetInfoRequest{}
		resp, err := e.node.NodeGetInfo(ctx, req)
		return req, resp, err
	}},
	{"GroupControllerGetCapabilities", []codes.Code{unimplemented}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.GroupControllerGetCapabilitiesRequest{}
		resp, err := csi.NewGroupControllerClient(e.conn).GroupControllerGetCapabilities(ctx, req)
		return req, resp, err
	}},
	{"CreateVolumeGroupSnapshot", []codes.Code{unimplemented}, func(ctx context.Context, e *env, f *fuzzer) (proto.Message, proto.Message, error) {
		req := &csi.CreateVolumeGroupSnapshotRequest{Name: f.name(), SourceVolumeIds: []string{f.volumeID(), f.volumeID()}}
		resp, err := csi.NewGroupControllerClient(e.conn).CreateVolumeGroupSnapshot(ctx, req)
		return req, resp, err
	}},
}
