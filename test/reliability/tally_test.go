package reliability

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// tally counts call outcomes by operation kind (what the test meant:
// "restore", "stage") and by RPC (what the driver saw, to compare with its
// metrics).
type tally struct {
	mu       sync.Mutex
	byOp     map[string]map[codes.Code]int
	byMethod map[string]map[codes.Code]int
}

func newTally() *tally {
	return &tally{byOp: map[string]map[codes.Code]int{}, byMethod: map[string]map[codes.Code]int{}}
}

func (t *tally) add(op, method string, code codes.Code) {
	t.mu.Lock()
	defer t.mu.Unlock()
	count(t.byOp, op, code)
	count(t.byMethod, method, code)
}

func count(m map[string]map[codes.Code]int, key string, code codes.Code) {
	if m[key] == nil {
		m[key] = map[codes.Code]int{}
	}
	m[key][code]++
}

// method returns the count of one RPC's outcomes with code.
func (t *tally) method(method string, code codes.Code) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byMethod[method][code]
}

// methods lists every RPC and code seen; outcomes tallied without a method
// (a write to a volume) are not RPCs and left out.
func (t *tally) methods() map[string][]codes.Code {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string][]codes.Code{}
	for m, byCode := range t.byMethod {
		if m == "" {
			continue
		}
		for c := range byCode {
			out[m] = append(out[m], c)
		}
	}
	return out
}

// table renders the counts by operation kind: one line per kind with its
// successes first, then each error code.
func (t *tally) table() (string, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ops := make([]string, 0, len(t.byOp))
	for op := range t.byOp {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	var b strings.Builder
	total := 0
	fmt.Fprintf(&b, "%-18s %6s  %s\n", "operation", "ok", "errors by code")
	for _, op := range ops {
		byCode := t.byOp[op]
		var errs []string
		for c, n := range byCode {
			if c != codes.OK {
				errs = append(errs, fmt.Sprintf("%s=%d", c, n))
			}
			total += n
		}
		sort.Strings(errs)
		fmt.Fprintf(&b, "%-18s %6d  %s\n", op, byCode[codes.OK], strings.Join(errs, " "))
	}
	return b.String(), total
}

// caller makes CSI calls for a test, bounds each with callTimeout, tallies
// it, and fails the test for a code outside what the call may answer or
// a call that does not return in time (a deadlock, since nothing a call
// does here takes a minute).
type caller struct {
	t     *testing.T
	tally *tally
	// dumped makes the first stuck call print every goroutine's stack,
	// and only the first.
	dumped atomic.Bool
}

// do runs fn, whose error is the gRPC call's, and returns its code.
func (c *caller) do(op, method string, allowed []codes.Code, fn func(ctx context.Context) error) codes.Code {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	start := time.Now()
	err := fn(ctx)
	code := status.Code(err)
	c.tally.add(op, method, code)
	switch {
	case code == codes.OK:
	case code == codes.DeadlineExceeded && time.Since(start) >= callTimeout:
		c.t.Errorf("%s (%s) did not return within %v: deadlock?", op, method, callTimeout)
		if !c.dumped.Swap(true) {
			c.t.Logf("goroutines when %s was found stuck:\n%s", method, goroutineDump())
		}
	case !slices.Contains(allowed, code):
		c.t.Errorf("%s (%s): %v; allowed here: OK %v", op, method, err, allowed)
	}
	return code
}

// until repeats a call answered Aborted, as a CO does, for up to a minute,
// and returns the last code.
func (c *caller) until(op, method string, allowed []codes.Code, fn func(ctx context.Context) error) codes.Code {
	allowed = append(slices.Clone(allowed), codes.Aborted)
	deadline := time.Now().Add(time.Minute)
	delay := 5 * time.Millisecond
	for {
		code := c.do(op, method, allowed, fn)
		if code != codes.Aborted || time.Now().After(deadline) {
			return code
		}
		time.Sleep(delay)
		delay = min(2*delay, 200*time.Millisecond)
	}
}
