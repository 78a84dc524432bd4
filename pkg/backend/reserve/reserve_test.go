package reserve

import (
	"errors"
	"sync"
	"testing"
)

var errFull = errors.New("full")

// fits is the check a backend makes: need must fit in what the pool has
// left once calls in flight are counted.
func fits(avail, need int64) func(int64) error {
	return func(pending int64) error {
		if need > avail-pending {
			return errFull
		}
		return nil
	}
}

func TestLedger(t *testing.T) {
	// step reserves need (release < 0) or releases the reservation made
	// by step number release.
	type step struct {
		need    int64
		release int
		ok      bool
		pending int64
	}
	reserve := func(need int64, ok bool, pending int64) step { return step{need, -1, ok, pending} }
	release := func(i int, pending int64) step { return step{0, i, true, pending} }
	for _, tc := range []struct {
		name  string
		avail int64
		steps []step
	}{
		{"fits exactly", 100, []step{reserve(100, true, 100)}},
		{"one byte too many", 100, []step{reserve(101, false, 0)}},
		{"second does not fit beside first", 100, []step{
			reserve(60, true, 60), reserve(60, false, 60), reserve(40, true, 100)}},
		{"release makes room", 100, []step{
			reserve(60, true, 60), reserve(60, false, 60), release(0, 0), reserve(60, true, 60)}},
		{"double release counts once", 100, []step{
			reserve(30, true, 30), reserve(30, true, 60), release(0, 30), release(0, 30)}},
		{"failed reservation holds nothing", 100, []step{
			reserve(200, false, 0), release(0, 0), reserve(100, true, 100)}},
		{"zero always fits an empty pool", 0, []step{reserve(0, true, 0), reserve(0, true, 0)}},
		{"negative reserves nothing", 10, []step{reserve(-5, true, 0), reserve(10, true, 10)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l Ledger
			releases := make([]func(), len(tc.steps))
			for i, s := range tc.steps {
				if s.release >= 0 {
					releases[s.release]()
				} else {
					r, err := l.Reserve(s.need, fits(tc.avail, s.need))
					if ok := err == nil; ok != s.ok {
						t.Fatalf("step %d: Reserve(%d) = %v, want ok %v", i, s.need, err, s.ok)
					}
					if r == nil {
						t.Fatalf("step %d: nil release", i)
					}
					releases[i] = r
				}
				if got := l.Pending(); got != s.pending {
					t.Fatalf("step %d: pending %d, want %d", i, got, s.pending)
				}
			}
		})
	}
}

// Checked side by side, reservations must never add up to more than the
// pool; this is the race the ledger exists for.
func TestLedgerParallel(t *testing.T) {
	const avail, need, callers = 1000, 64, 100
	var l Ledger
	var mu sync.Mutex
	var granted int64
	var releases []func()
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := l.Reserve(need, fits(avail, need))
			if err != nil {
				return
			}
			mu.Lock()
			granted += need
			releases = append(releases, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if granted != avail/need*need {
		t.Errorf("granted %d bytes of %d in %d-byte reservations, want %d", granted, avail, need, avail/need*need)
	}
	for _, r := range releases {
		r()
	}
	if p := l.Pending(); p != 0 {
		t.Errorf("pending after every release: %d", p)
	}
}
