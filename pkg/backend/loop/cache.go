package loop

import (
	"slices"
	"sync"
)

// recordCache keeps a pool's records in memory so that listing and
// capacity accounting do not re-read every metadata file on each call (with
// 1,000 volumes that scan dominated CreateVolume). The backend is the
// pool's only writer and updates the cache with every change it makes; the
// first use loads it from disk, under the lock, so a concurrent change
// cannot be overtaken by a stale load.
type recordCache[T record] struct {
	mu      sync.Mutex
	load    func() ([]T, error)
	records map[string]T
}

func newRecordCache[T record](load func() ([]T, error)) *recordCache[T] {
	return &recordCache[T]{load: load}
}

func (c *recordCache[T]) ensureLoaded() error {
	if c.records != nil {
		return nil
	}
	all, err := c.load()
	if err != nil {
		return err
	}
	c.records = make(map[string]T, len(all))
	for _, m := range all {
		c.records[recordID(m)] = m
	}
	return nil
}

// all returns every record, sorted by ID.
func (c *recordCache[T]) all() ([]T, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ensureLoaded(); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(c.records))
	for id := range c.records {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]T, 0, len(ids))
	for _, id := range ids {
		out = append(out, c.records[id])
	}
	return out, nil
}

// sum adds up f over every record, in no order: what capacity checks need,
// without all's copy and sort.
func (c *recordCache[T]) sum(f func(T) int64) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ensureLoaded(); err != nil {
		return 0, err
	}
	var total int64
	for _, m := range c.records {
		total += f(m)
	}
	return total, nil
}

// put records a created or changed object. Before the first load there is
// nothing to update: the load will read it from disk.
func (c *recordCache[T]) put(m T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.records != nil {
		c.records[recordID(m)] = m
	}
}

func (c *recordCache[T]) remove(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.records, id)
}
