package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// toStatus maps a backend error to its gRPC status. It is the only place
// where backend failures become codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, backend.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, backend.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, backend.ErrOutOfRange):
		code = codes.OutOfRange
	case errors.Is(err, backend.ErrNoSpace), backend.IsNoSpace(err):
		// A bare ENOSPC is a backend that did not name what was full;
		// the code must still tell the CO that space is what is missing.
		code = codes.ResourceExhausted
	case errors.Is(err, backend.ErrInUse):
		code = codes.FailedPrecondition
	case errors.Is(err, backend.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, backend.ErrNotReady):
		code = codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

// writeFailed is the status of a write through volume id's device (mkfs,
// filesystem growth) that failed with err. Those tools see a full backing
// store as an I/O error, so the backend is asked whether its store is full:
// ResourceExhausted naming it when so, Internal otherwise.
func (d *Driver) writeFailed(ctx context.Context, id string, err error) error {
	if sc, ok := d.backend.(backend.SpaceChecker); ok {
		if full := sc.CheckSpace(ctx, id); full != nil {
			klog.InfoS("Write through a volume's device failed on a full store", "volumeID", id, "err", err, "store", full)
			return toStatus(fmt.Errorf("%w; %v", full, err))
		}
	}
	return status.Error(codes.Internal, err.Error())
}

func errInvalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func errAborted(keys []string) error {
	var named []string
	for _, k := range keys {
		if k != "" {
			named = append(named, k)
		}
	}
	return status.Error(codes.Aborted, fmt.Sprintf("an operation on %s is already in progress", strings.Join(named, ", ")))
}

// errIncompatible answers a stage or publish that finds the volume already
// at its path, but not as asked: the CSI spec's AlreadyExists, not a
// success that would hide the difference from the CO.
func errIncompatible(id, verb, path string, differences []string) error {
	return status.Errorf(codes.AlreadyExists, "volume %s is already %s at %s, incompatibly: %s",
		id, verb, path, strings.Join(differences, "; "))
}
