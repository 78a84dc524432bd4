// Package reservetest checks the property package reserve exists for,
// against a real backend: calls made at the same instant under different
// names are never promised more space, together, than the pool had.
package reservetest

import (
	"errors"
	"sync"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// ParallelPromises starts n calls at once, each asking for need bytes of a
// pool that had available bytes, and checks the answers: each call
// succeeds or fails with backend.ErrNoSpace, some of each (n calls must
// ask for more than is available), and the successes add up to no more
// than available. It returns how many succeeded.
func ParallelPromises(t testing.TB, n int, need, available int64, call func(i int) error) int {
	t.Helper()
	if need <= 0 || need*int64(n) <= available {
		t.Fatalf("%d calls of %d bytes do not exceed the %d available", n, need, available)
	}
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = call(i)
		}()
	}
	close(start)
	wg.Wait()

	succeeded := 0
	for i, err := range errs {
		switch {
		case err == nil:
			succeeded++
		case !errors.Is(err, backend.ErrNoSpace):
			t.Errorf("call %d: %v, want success or ErrNoSpace", i, err)
		}
	}
	if succeeded == 0 || succeeded == n {
		t.Errorf("%d of %d calls succeeded; the test wants some to be refused", succeeded, n)
	}
	if promised := int64(succeeded) * need; promised > available {
		t.Errorf("%d calls of %d bytes succeeded: %d bytes promised, %d were available",
			succeeded, need, promised, available)
	}
	return succeeded
}
