// Package inflight tracks which volumes and snapshots have a call in
// progress, so that a second call for the same object is refused at once
// (CSI's Aborted) instead of queueing behind a global mutex.
package inflight

import (
	"slices"
	"sync"
)

// Set is a set of keys with work in progress. The zero value is ready.
type Set struct {
	mu   sync.Mutex
	busy map[string]struct{}
}

// TryAcquire claims every key or none. It returns a release function and
// true, or nil and false when any key is already claimed. Empty keys are
// ignored so callers can pass optional ones.
func (s *Set) TryAcquire(keys ...string) (release func(), ok bool) {
	keys = slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return k == "" })
	slices.Sort(keys)
	keys = slices.Compact(keys)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy == nil {
		s.busy = make(map[string]struct{})
	}
	for _, k := range keys {
		if _, taken := s.busy[k]; taken {
			return nil, false
		}
	}
	for _, k := range keys {
		s.busy[k] = struct{}{}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, k := range keys {
				delete(s.busy, k)
			}
		})
	}, true
}

// Len returns how many keys are claimed, for tests and metrics.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.busy)
}
