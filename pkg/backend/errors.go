package backend

import "errors"

// Backends wrap these sentinels (fmt.Errorf("%w: ...", ErrX)) so the driver
// can map every failure to its gRPC code in one place.
var (
	// ErrNotFound: the volume or snapshot named by the call does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the name is taken by an object that is incompatible
	// with the request.
	ErrAlreadyExists = errors.New("already exists with different parameters")
	// ErrOutOfRange: the capacity range cannot be honoured.
	ErrOutOfRange = errors.New("capacity out of range")
	// ErrNoSpace: the pool cannot hold what was asked.
	ErrNoSpace = errors.New("not enough space")
	// ErrInUse: the volume is attached, staged or published on this node.
	ErrInUse = errors.New("in use")
	// ErrInvalid: a parameter of the request is not acceptable.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotReady: the backend cannot serve now (pool missing, read-only).
	ErrNotReady = errors.New("backend not ready")
)
