package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// ControllerGetCapabilities implements csi.ControllerServer. Only what
// really works is advertised.
func (d *Driver) ControllerGetCapabilities(ctx context.Context, req *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume implements csi.ControllerServer.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if err := backend.ValidateName(req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	params, err := volumeParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	if err := d.topologyAllows(req.GetAccessibilityRequirements()); err != nil {
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	src, err := contentSource(req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	id := backend.VolumeIDFor(req.GetName())
	release, err := d.lock(id, src.SnapshotID, src.VolumeID)
	if err != nil {
		return nil, err
	}
	defer release()

	vol, err := d.backend.CreateVolume(ctx, backend.VolumeRequest{
		Name:          req.GetName(),
		RequiredBytes: req.GetCapacityRange().GetRequiredBytes(),
		LimitBytes:    req.GetCapacityRange().GetLimitBytes(),
		FsType:        fsTypeFor(req.GetVolumeCapabilities(), params),
		Parameters:    params,
		Source:        src,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(vol)}, nil
}

func contentSource(s *csi.VolumeContentSource) (backend.Source, error) {
	switch {
	case s == nil:
		return backend.Source{}, nil
	case s.GetSnapshot() != nil:
		id := s.GetSnapshot().GetSnapshotId()
		if id == "" {
			return backend.Source{}, errInvalid("content source snapshot ID is empty")
		}
		return backend.Source{SnapshotID: id}, nil
	case s.GetVolume() != nil:
		id := s.GetVolume().GetVolumeId()
		if id == "" {
			return backend.Source{}, errInvalid("content source volume ID is empty")
		}
		return backend.Source{VolumeID: id}, nil
	}
	return backend.Source{}, errInvalid("content source has neither a snapshot nor a volume")
}

func (d *Driver) csiVolume(v backend.Volume) *csi.Volume {
	out := &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.SizeBytes,
		AccessibleTopology: d.topology(),
	}
	if v.FsType != "" {
		out.VolumeContext = map[string]string{ParamFsType: v.FsType}
	}
	switch {
	case v.Source.SnapshotID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.Source.SnapshotID}}}
	case v.Source.VolumeID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.Source.VolumeID}}}
	}
	return out
}

// DeleteVolume implements csi.ControllerServer.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, errInvalid("volume ID is missing")
	}
	release, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	if err := d.backend.DeleteVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, errInvalid("volume capabilities are missing")
	}
	if _, err := d.backend.GetVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	if _, err := volumeParameters(req.GetParameters()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
		MutableParameters:  req.GetMutableParameters(),
	}}, nil
}

// ListVolumes implements csi.ControllerServer.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	vols, err := d.backend.ListVolumes(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	start, end, next, err := paginate(len(vols), func(i int) string { return vols[i].ID },
		req.GetStartingToken(), req.GetMaxEntries(), backend.ValidVolumeID)
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: d.csiVolume(v)})
	}
	return resp, nil
}

// ControllerGetVolume implements csi.ControllerServer.
func (d *Driver) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, errInvalid("volume ID is missing")
	}
	v, err := d.backend.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: d.csiVolume(v),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{},
	}, nil
}

// GetCapacity implements csi.ControllerServer. A request for another node's
// topology or for capabilities Tarn cannot serve has no capacity here.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if t := req.GetAccessibleTopology(); t != nil {
		if node, ok := t.GetSegments()[TopologyKey]; !ok || node != d.cfg.NodeID {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	if len(req.GetVolumeCapabilities()) > 0 && validateCapabilities(req.GetVolumeCapabilities()) != nil {
		return &csi.GetCapacityResponse{}, nil
	}
	params, err := volumeParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	c, err := d.backend.Capacity(ctx, params)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: c.AvailableBytes,
		MaximumVolumeSize: wrapInt64(c.MaximumVolumeSize),
	}, nil
}

// ControllerExpandVolume implements csi.ControllerServer. The backing store
// grows here; the node grows the device and filesystem.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if req.GetCapacityRange() == nil {
		return nil, errInvalid("capacity range is missing")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := validateCapability(c); err != nil {
			return nil, err
		}
	}
	release, err := d.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	size, err := d.backend.ExpandVolume(ctx, req.GetVolumeId(),
		req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
	if err != nil {
		return nil, toStatus(err)
	}
	// A raw block volume needs no filesystem growth: the device is
	// refreshed right here when attached, since the pool is on this node.
	nodeExpansion := true
	if req.GetVolumeCapability().GetBlock() != nil {
		if err := d.backend.RefreshDevice(ctx, req.GetVolumeId()); err != nil {
			return nil, toStatus(err)
		}
		nodeExpansion = false
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: nodeExpansion}, nil
}

// CreateSnapshot implements csi.ControllerServer.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := backend.ValidateName(req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	if req.GetSourceVolumeId() == "" {
		return nil, errInvalid("source volume ID is missing")
	}
	params, err := snapshotParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	id := backend.SnapshotIDFor(req.GetName())
	release, err := d.lock(id, req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	snap, err := d.backend.CreateSnapshot(ctx, backend.SnapshotRequest{
		Name: req.GetName(), SourceVolumeID: req.GetSourceVolumeId(), Parameters: params,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

func csiSnapshot(s backend.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolumeID,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(s.CreatedAt),
		ReadyToUse:     s.ReadyToUse,
	}
}

// DeleteSnapshot implements csi.ControllerServer.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, errInvalid("snapshot ID is missing")
	}
	release, err := d.lock(req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	defer release()
	if err := d.backend.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots implements csi.ControllerServer.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var snaps []backend.Snapshot
	if id := req.GetSnapshotId(); id != "" {
		// A filter naming an unknown snapshot matches nothing; it is not
		// an error.
		s, err := d.backend.GetSnapshot(ctx, id)
		if err == nil {
			snaps = append(snaps, s)
		} else if status.Code(toStatus(err)) != codes.NotFound {
			return nil, toStatus(err)
		}
	} else {
		all, err := d.backend.ListSnapshots(ctx)
		if err != nil {
			return nil, toStatus(err)
		}
		snaps = all
	}
	if src := req.GetSourceVolumeId(); src != "" {
		kept := snaps[:0]
		for _, s := range snaps {
			if s.SourceVolumeID == src {
				kept = append(kept, s)
			}
		}
		snaps = kept
	}
	start, end, next, err := paginate(len(snaps), func(i int) string { return snaps[i].ID },
		req.GetStartingToken(), req.GetMaxEntries(), backend.ValidSnapshotID)
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range snaps[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)})
	}
	return resp, nil
}
