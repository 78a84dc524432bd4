package backend

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

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

// IsNoSpace says whether the kernel refused a write for want of space
// (ENOSPC) or of quota (EDQUOT), anywhere in err's chain.
func IsNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// NoSpace makes a write refused for want of space an ErrNoSpace that names
// what was full ("pool /var/lib/tarn/pool"): a full store is the caller's
// to free, not a driver failure, and the error of the write alone names a
// file, not the store. Any other error is returned as it is.
func NoSpace(what string, err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) || !IsNoSpace(err) {
		return err
	}
	return fmt.Errorf("%w: %s is full: %w", ErrNoSpace, what, err)
}

// SpaceChecker is implemented by backends whose volumes take blocks from a
// shared store only as they are written (the loop backend's sparse files).
// A write through such a volume's device that the store cannot hold fails
// with whatever the page cache makes of it, usually EIO; the driver asks
// CheckSpace after a failed mkfs or filesystem growth to tell a full store
// from a broken device.
type SpaceChecker interface {
	// CheckSpace returns an error wrapping ErrNoSpace, naming the store,
	// when the store of volume id has no room left; nil otherwise.
	CheckSpace(ctx context.Context, id string) error
}
