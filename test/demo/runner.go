package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// step is one line of the demo's output. run returns a detail shown under
// the line, or "" for none.
type step struct {
	label string
	run   func(ctx context.Context) (string, error)
}

// labelWidth is where the dots end, so that the results line up in a
// terminal of 80 columns.
const labelWidth = 58

// runSteps runs steps in order and stops at the first failure, returning
// it with the step's label so that the user knows what broke.
func runSteps(ctx context.Context, out io.Writer, steps []step) error {
	digits := len(strconv.Itoa(len(steps)))
	for i, s := range steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("interrupted before %q: %w", s.label, context.Cause(ctx))
		}
		// The label goes out before the step runs so that a slow step shows
		// what the demo is waiting for.
		fmt.Fprintf(out, "[%*d/%d] %s ", digits, i+1, len(steps), dots(s.label, labelWidth))
		start := time.Now()
		detail, err := s.run(ctx)
		took := time.Since(start)
		if err != nil {
			fmt.Fprintf(out, "FAILED  %s\n", fmtDuration(took))
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (interrupted: %v)", err, context.Cause(ctx))
			}
			return fmt.Errorf("%s: %w", s.label, err)
		}
		fmt.Fprintf(out, "ok  %s\n", fmtDuration(took))
		for _, line := range strings.Split(detail, "\n") {
			if line != "" {
				fmt.Fprintf(out, "%*s%s\n", digits*2+6, "", line)
			}
		}
	}
	return nil
}

func dots(label string, width int) string {
	if n := width - len([]rune(label)) - 1; n > 1 {
		return label + " " + strings.Repeat(".", n)
	}
	return label + " .."
}

// undo is one entry of the cleanup stack: the way back from something the
// demo created.
type undo struct {
	what string
	fn   func(ctx context.Context) error
	done bool
}

// undoTimeout bounds one cleanup action, so that a hung driver cannot keep
// the demo from reporting what is left behind.
const undoTimeout = 2 * time.Minute

// run undoes now, as the normal path's teardown does. It is marked done
// only on success, so that a failed teardown is retried by the unwind.
func (u *undo) run(ctx context.Context) error {
	if u.done {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, undoTimeout)
	defer cancel()
	if err := u.fn(ctx); err != nil {
		return fmt.Errorf("%s: %w", u.what, err)
	}
	u.done = true
	return nil
}

// dismiss drops an entry the normal path has shown to have nothing to do.
func (u *undo) dismiss() { u.done = true }

// cleanupStack holds what the demo created, in order. The normal path
// tears each entry down as a step; after a failure, unwind tears down what
// is left in reverse order.
type cleanupStack struct {
	entries []*undo
}

// push records the way back before (or right after) the action, and
// returns it for the normal path to run.
func (s *cleanupStack) push(what string, fn func(ctx context.Context) error) *undo {
	u := &undo{what: what, fn: fn}
	s.entries = append(s.entries, u)
	return u
}

// unwind runs every pending entry, newest first, and keeps going past
// failures: each is independent and leaving one mount should not leave
// the rest.
func (s *cleanupStack) unwind(out io.Writer) error {
	var errs []error
	for i := len(s.entries) - 1; i >= 0; i-- {
		u := s.entries[i]
		if u.done {
			continue
		}
		start := time.Now()
		fmt.Fprintf(out, "  %s ", dots(u.what, labelWidth+2))
		// A fresh context: the demo's own may be the cancelled one.
		if err := u.run(context.Background()); err != nil {
			fmt.Fprintf(out, "FAILED  %s\n      %v\n", fmtDuration(time.Since(start)), err)
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "ok  %s\n", fmtDuration(time.Since(start)))
	}
	return errors.Join(errs...)
}

func (s *cleanupStack) pending() int {
	n := 0
	for _, u := range s.entries {
		if !u.done {
			n++
		}
	}
	return n
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
	tib = int64(1) << 40
)

// fmtBytes prints a size in the largest binary unit, without a useless
// ".0".
func fmtBytes(n int64) string {
	for _, u := range []struct {
		size int64
		name string
	}{{tib, "TiB"}, {gib, "GiB"}, {mib, "MiB"}, {kib, "KiB"}} {
		if n >= u.size {
			v := strconv.FormatFloat(float64(n)/float64(u.size), 'f', 1, 64)
			return strings.TrimSuffix(v, ".0") + " " + u.name
		}
	}
	return fmt.Sprintf("%d B", n)
}

// parseSize reads sizes the way Kubernetes users write them for volumes:
// plain bytes or a binary suffix (Ki, Mi, Gi, Ti, optionally with a B).
// Decimal suffixes are refused rather than guessed at.
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "B")
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"Ki", kib}, {"Mi", mib}, {"Gi", gib}, {"Ti", tib}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.size
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes or of Ki, Mi, Gi, Ti", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}
