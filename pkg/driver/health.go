package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// CSI v1.13 replaced VolumeCondition with the VolumeHealth calls; Tarn
// reports through them what the backend and the node can see.

// ControllerGetVolumeHealth implements csi.ControllerServer.
func (d *Driver) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, errInvalid("volume ID is missing")
	}
	if _, err := d.backend.GetVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeHealthResponse{
		VolumeHealth: volumeHealth(req.GetVolumeId(), d.backend.Health(ctx, req.GetVolumeId())),
	}, nil
}

// ControllerListVolumeHealth implements csi.ControllerServer: only volumes
// with problems are listed.
func (d *Driver) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	vols, err := d.backend.ListVolumes(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	var sick []*csi.VolumeHealth
	for _, v := range vols {
		if problems := d.backend.Health(ctx, v.ID); len(problems) > 0 {
			sick = append(sick, volumeHealth(v.ID, problems))
		}
	}
	start, end, next, err := paginate(len(sick), func(i int) string { return sick[i].GetVolumeId() },
		req.GetStartingToken(), req.GetMaxEntries(), backend.ValidVolumeID)
	if err != nil {
		return nil, err
	}
	return &csi.ControllerListVolumeHealthResponse{Entries: sick[start:end], NextToken: next}, nil
}

// NodeGetVolumeHealth implements csi.NodeServer: the backend's view plus
// whether the device is attached and the paths are mounted.
func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, errInvalid("volume ID is missing")
	}
	for what, p := range map[string]string{"volume publish path": req.GetVolumePublishPath(), "staging target path": req.GetStagingTargetPath()} {
		if p != "" {
			if err := d.nodePath(what, p); err != nil {
				return nil, err
			}
		}
	}
	if _, err := d.backend.GetVolume(ctx, id); err != nil {
		return nil, toStatus(err)
	}
	problems := d.nodeProblems(ctx, id, req.GetVolumePublishPath())
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: volumeHealth(id, problems)}, nil
}

// NodeGetStorageHealth implements csi.NodeServer.
func (d *Driver) NodeGetStorageHealth(ctx context.Context, req *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	if err := d.backend.Ready(ctx); err != nil {
		return &csi.NodeGetStorageHealthResponse{BackendHealth: []*csi.NodeGetStorageHealthResponse_StorageBackendHealth{{
			Status:  csi.StorageHealthErrorType_STORAGE_UNREACHABLE,
			Reason:  "PoolUnusable",
			Message: err.Error(),
		}}}, nil
	}
	return &csi.NodeGetStorageHealthResponse{}, nil
}

// nodeProblems adds what the node sees (device attached, path mounted) to
// what the backend sees. An empty path skips the mount check.
func (d *Driver) nodeProblems(ctx context.Context, id, path string) []backend.Problem {
	problems := d.backend.Health(ctx, id)
	device, err := d.backend.DevicePath(ctx, id)
	switch {
	case err != nil:
		problems = append(problems, backend.Problem{Kind: backend.Inaccessible, Reason: "DeviceLookupFailed",
			Message: "cannot look up the volume's device: " + err.Error()})
	case device == "":
		problems = append(problems, backend.Problem{Kind: backend.Inaccessible, Reason: "DeviceNotAttached",
			Message: "the volume's device is not attached on this node"})
	}
	if path != "" {
		if mounted, err := isMountPoint(d.mounter, path); err != nil || !mounted {
			problems = append(problems, backend.Problem{Kind: backend.Inaccessible, Reason: "NotMounted",
				Message: "the volume path " + path + " is not mounted"})
		}
	}
	return problems
}

func volumeHealth(id string, problems []backend.Problem) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: id}
	for _, p := range problems {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: healthType(p.Kind), Reason: p.Reason, Message: p.Message,
		})
	}
	return h
}

func healthType(k backend.ProblemKind) csi.VolumeHealthErrorType {
	switch k {
	case backend.Degraded:
		return csi.VolumeHealthErrorType_DEGRADED
	case backend.Inaccessible:
		return csi.VolumeHealthErrorType_INACCESSIBLE
	case backend.DataLoss:
		return csi.VolumeHealthErrorType_DATA_LOSS
	}
	return csi.VolumeHealthErrorType_UNKNOWN_VOLUME_HEALTH_TYPE
}

// GetSnapshot implements csi.ControllerServer.
func (d *Driver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, errInvalid("snapshot ID is missing")
	}
	s, err := d.backend.GetSnapshot(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}
