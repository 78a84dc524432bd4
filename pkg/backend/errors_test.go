package backend

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

func TestNoSpace(t *testing.T) {
	already := fmt.Errorf("%w: 5 bytes asked", ErrNoSpace)
	for _, tc := range []struct {
		name    string
		err     error
		noSpace bool
		// contains is what the message must say; "" for err as it is.
		contains []string
	}{
		{"nil", nil, false, nil},
		{"ENOSPC", fmt.Errorf("mkdir /p/.staging/x: %w", syscall.ENOSPC), true, []string{"pool /p is full", "mkdir /p/.staging/x"}},
		{"EDQUOT", fmt.Errorf("write /p/v: %w", syscall.EDQUOT), true, []string{"pool /p is full", "quota"}},
		{"already ErrNoSpace", already, true, nil},
		{"other errno", fmt.Errorf("mkdir: %w", syscall.EIO), false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NoSpace("pool /p", tc.err)
			if errors.Is(got, ErrNoSpace) != tc.noSpace {
				t.Fatalf("NoSpace(%v) = %v; ErrNoSpace: %v, want %v", tc.err, got, errors.Is(got, ErrNoSpace), tc.noSpace)
			}
			if tc.contains == nil {
				if got != tc.err {
					t.Errorf("NoSpace(%v) = %v, want it unchanged", tc.err, got)
				}
				return
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("NoSpace(%v) = %v no longer wraps the write's error", tc.err, got)
			}
			for _, c := range tc.contains {
				if !strings.Contains(got.Error(), c) {
					t.Errorf("NoSpace(%v) = %q, want it to say %q", tc.err, got, c)
				}
			}
		})
	}
}
