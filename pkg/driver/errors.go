package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	case errors.Is(err, backend.ErrNoSpace):
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
