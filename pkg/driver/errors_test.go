package driver

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/backend"
)

func TestToStatus(t *testing.T) {
	tests := []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("%w: vol-x", backend.ErrNotFound), codes.NotFound},
		{fmt.Errorf("wrapped twice: %w", fmt.Errorf("%w: x", backend.ErrAlreadyExists)), codes.AlreadyExists},
		{backend.ErrOutOfRange, codes.OutOfRange},
		{backend.ErrNoSpace, codes.ResourceExhausted},
		{backend.NoSpace("pool /p", fmt.Errorf("create staging directory: %w", syscall.ENOSPC)), codes.ResourceExhausted},
		{fmt.Errorf("write record: %w", syscall.EDQUOT), codes.ResourceExhausted},
		{fmt.Errorf("lost on the way: %v", syscall.ENOSPC), codes.Internal},
		{backend.ErrInUse, codes.FailedPrecondition},
		{backend.ErrInvalid, codes.InvalidArgument},
		{backend.ErrNotReady, codes.Unavailable},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{errors.New("disk on fire"), codes.Internal},
		{status.Error(codes.Aborted, "kept"), codes.Aborted},
	}
	for _, tt := range tests {
		got := status.Code(toStatus(tt.err))
		if got != tt.want {
			t.Errorf("toStatus(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) must be nil")
	}
}

func TestPaginate(t *testing.T) {
	keys := []string{"a", "c", "e", "g"}
	valid := func(s string) bool { return len(s) == 1 }
	tests := []struct {
		name       string
		token      string
		max        int32
		start, end int
		next       string
		code       codes.Code
	}{
		{"all", "", 0, 0, 4, "", codes.OK},
		{"first page", "", 2, 0, 2, "e", codes.OK},
		{"second page", "e", 2, 2, 4, "", codes.OK},
		{"token of a deleted entry", "d", 1, 2, 3, "g", codes.OK},
		{"token past the end", "z", 2, 4, 4, "", codes.OK},
		{"max larger than rest", "c", 10, 1, 4, "", codes.OK},
		{"invalid token", "not-a-key", 1, 0, 0, "", codes.Aborted},
		{"negative max", "", -1, 0, 0, "", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start, end, next, err := paginate(len(keys), func(i int) string { return keys[i] }, tt.token, tt.max, valid)
			if status.Code(err) != tt.code {
				t.Fatalf("code = %v, want %v (%v)", status.Code(err), tt.code, err)
			}
			if err != nil {
				return
			}
			if start != tt.start || end != tt.end || next != tt.next {
				t.Errorf("got [%d,%d) next %q, want [%d,%d) next %q", start, end, next, tt.start, tt.end, tt.next)
			}
		})
	}
}

func TestSocketPath(t *testing.T) {
	tests := []struct {
		endpoint, want string
		ok             bool
	}{
		{"unix:///run/tarn/csi.sock", "/run/tarn/csi.sock", true},
		{"unix:/run/tarn/csi.sock", "/run/tarn/csi.sock", true},
		{"/run/tarn/csi.sock", "/run/tarn/csi.sock", true},
		{"tcp://127.0.0.1:10000", "", false},
		{"", "", false},
		{"unix://", "", false},
	}
	for _, tt := range tests {
		got, err := socketPath(tt.endpoint)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("socketPath(%q) = %q, %v; want %q, ok=%v", tt.endpoint, got, err, tt.want, tt.ok)
		}
	}
}
