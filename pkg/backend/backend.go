// Package backend defines what a storage backend must do for Tarn. It knows
// nothing of gRPC or CSI messages: the driver translates requests into these
// calls and maps the errors below to gRPC codes in one place.
package backend

import (
	"context"
	"time"
)

// Backend is one kind of node-local storage (a pool of loop files, an LVM
// volume group). Methods must be idempotent: a call repeated after a crash or
// a timeout must converge on the same result.
type Backend interface {
	// Kind names the backend ("loop", "lvm") for logs and metrics.
	Kind() string
	// Ready returns nil when the backend can serve requests now.
	Ready(ctx context.Context) error

	CreateVolume(ctx context.Context, req VolumeRequest) (Volume, error)
	// DeleteVolume succeeds when the volume does not exist; it fails with
	// ErrInUse while the volume is attached on this node.
	DeleteVolume(ctx context.Context, id string) error
	GetVolume(ctx context.Context, id string) (Volume, error)
	// ListVolumes returns every complete volume, sorted by ID.
	ListVolumes(ctx context.Context) ([]Volume, error)
	// ExpandVolume grows the volume to at least sizeBytes (rounded up) and
	// returns the new size. It never shrinks.
	ExpandVolume(ctx context.Context, id string, sizeBytes, limitBytes int64) (int64, error)

	CreateSnapshot(ctx context.Context, req SnapshotRequest) (Snapshot, error)
	// DeleteSnapshot succeeds when the snapshot does not exist.
	DeleteSnapshot(ctx context.Context, id string) error
	GetSnapshot(ctx context.Context, id string) (Snapshot, error)
	// ListSnapshots returns every complete snapshot, sorted by ID.
	ListSnapshots(ctx context.Context) ([]Snapshot, error)

	// Capacity is what a volume of the class described by params could
	// still get; unknown parameters are ErrInvalid.
	Capacity(ctx context.Context, params map[string]string) (Capacity, error)

	// AttachVolume makes the volume available as a block device on this
	// node and returns its path; it returns the existing device when the
	// volume is already attached.
	AttachVolume(ctx context.Context, id string) (string, error)
	// DetachVolume undoes AttachVolume; a volume that is not attached is
	// success.
	DetachVolume(ctx context.Context, id string) error
	// DevicePath returns the device of an attached volume, "" when the
	// volume is not attached. It asks the kernel, not remembered state.
	DevicePath(ctx context.Context, id string) (string, error)
	// RefreshDevice makes an attached device see the volume's current size.
	RefreshDevice(ctx context.Context, id string) error
	// Health reports the problems the backend can see with a volume; none
	// means healthy.
	Health(ctx context.Context, id string) []Problem
}

// VolumeRequest asks for a new volume.
type VolumeRequest struct {
	Name string
	// RequiredBytes and LimitBytes are the CSI capacity range; zero means
	// unset.
	RequiredBytes int64
	LimitBytes    int64
	// FsType is the filesystem the volume will be formatted with, "" for a
	// raw block volume. It sets the minimum size, and a volume with one is
	// never made from a raw block volume's content (see
	// FilesystemFromBlockError).
	FsType string
	// Parameters are the StorageClass's, less Kubernetes' own; a backend
	// refuses keys it does not know with ErrInvalid.
	Parameters map[string]string
	Source     Source
}

// Source is where a new volume's content comes from; both empty means a
// blank volume.
type Source struct {
	SnapshotID string
	VolumeID   string
}

// Volume is a complete, usable volume.
type Volume struct {
	ID         string
	Name       string
	SizeBytes  int64
	FsType     string
	Parameters map[string]string
	Source     Source
	CreatedAt  time.Time
}

// SnapshotRequest asks for a snapshot of a volume.
type SnapshotRequest struct {
	Name           string
	SourceVolumeID string
	Parameters     map[string]string
}

// Snapshot is a complete, read-only point-in-time copy of a volume.
type Snapshot struct {
	ID             string
	Name           string
	SourceVolumeID string
	SizeBytes      int64
	CreatedAt      time.Time
	ReadyToUse     bool
	// Method says how the data was captured ("reflink", "sparse-copy",
	// "thin") so that logs and tests can tell the O(1) path was taken.
	Method string
}

// Capacity is what the backend can still provision.
type Capacity struct {
	AvailableBytes    int64
	MaximumVolumeSize int64
	TotalBytes        int64
}

// Problem is one adverse health condition of a volume.
type Problem struct {
	Kind ProblemKind
	// Reason is a short CamelCase word for machines and CLIs.
	Reason  string
	Message string
}

// ProblemKind says how bad a problem is, following CSI's volume health.
type ProblemKind int

const (
	// Degraded: the volume works but not as it should.
	Degraded ProblemKind = iota + 1
	// Inaccessible: the volume cannot be used.
	Inaccessible
	// DataLoss: data is known or suspected lost.
	DataLoss
)
