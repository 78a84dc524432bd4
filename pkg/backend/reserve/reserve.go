// Package reserve keeps the space promised to calls still in flight.
//
// A backend checks capacity and then creates or grows an object; until the
// object exists, its own accounting cannot see it, so two calls checked
// side by side could both be promised the same bytes. A Ledger closes that
// gap without a lock around the whole creation: only the check runs under
// the ledger's lock, and what it granted stays counted until the caller
// says the object is visible to the accounting (or was never made).
package reserve

import (
	"sync"
	"sync/atomic"
)

// Ledger is the sum of outstanding reservations of one pool of space. The
// zero value is ready to use; a Ledger must not be copied after first use.
type Ledger struct {
	// mu makes check-then-add one step; pending is atomic besides so
	// that Pending and release never wait behind a slow check (an LVM
	// report), and a check may itself ask for Pending.
	mu      sync.Mutex
	pending atomic.Int64
}

// Reserve runs check with the bytes already promised to calls in flight;
// when it passes, need is promised too until release is called. check
// should look at the pool and answer, nothing more: no other Reserve of
// this ledger runs meanwhile. release may be called more than once (a
// deferred call after an early one); only the first counts. A negative
// need reserves nothing.
func (l *Ledger) Reserve(need int64, check func(pending int64) error) (release func(), err error) {
	need = max(need, 0)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := check(l.pending.Load()); err != nil {
		return func() {}, err
	}
	l.pending.Add(need)
	var once sync.Once
	return func() { once.Do(func() { l.pending.Add(-need) }) }, nil
}

// Pending returns the bytes promised to calls in flight, which capacity
// reports must not offer again.
func (l *Ledger) Pending() int64 {
	return l.pending.Load()
}
