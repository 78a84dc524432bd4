package loop

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// Capacity implements backend.Backend.
//
// Volumes are sparse, so the pool filesystem's free space overstates what
// can be promised: every volume may still grow into its unallocated part.
// Available = free space - Σ reserve(volume), where reserve is the volume's
// size minus its allocated blocks, or its whole size when its file shares
// extents with a snapshot or clone (overwriting shared data needs new
// blocks). Snapshots are immutable and reserve nothing beyond what they
// already occupy. What calls in progress were granted is not offered again.
func (b *Backend) Capacity(ctx context.Context, params map[string]string) (backend.Capacity, error) {
	if err := checkParameters(params); err != nil {
		return backend.Capacity{}, err
	}
	avail, total, err := b.available()
	if err != nil {
		return backend.Capacity{}, err
	}
	avail = roundDown(avail - b.ledger.Pending())
	return backend.Capacity{AvailableBytes: avail, MaximumVolumeSize: avail, TotalBytes: total}, nil
}

// available is free space minus every volume's reserve, not rounded and
// not counting calls in flight; total is the pool filesystem's size.
func (b *Backend) available() (avail, total int64, err error) {
	free, total, err := b.poolStat()
	if err != nil {
		return 0, 0, err
	}
	reserved, err := b.reserved()
	if err != nil {
		return 0, 0, err
	}
	return free - reserved, total, nil
}

func roundDown(n int64) int64 {
	return max(n, 0) / backend.SizeGranularity * backend.SizeGranularity
}

func (b *Backend) reserved() (int64, error) {
	metas, err := b.allVolumes()
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, m := range metas {
		sum += b.reserveOf(m)
	}
	return sum, nil
}

func (b *Backend) reserveOf(m volumeMeta) int64 {
	if m.Shared {
		return m.SizeBytes
	}
	fi, err := os.Stat(filepath.Join(b.volumeDir(m.ID), dataFile))
	if err != nil {
		return m.SizeBytes
	}
	allocated := int64(0)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		allocated = st.Blocks * 512
	}
	if r := m.SizeBytes - allocated; r > 0 {
		return r
	}
	return 0
}

// reserveSpace fails with ErrNoSpace before anything is written when a new
// volume of size (or a copy of src when size is 0) cannot be promised.
// Otherwise the space stays promised until release is called, which the
// caller does once the object is in the record cache (and so in the
// accounting) or has failed: parallel calls under different names must
// not be promised the same bytes.
func (b *Backend) reserveSpace(size int64, src *source) (release func(), err error) {
	need := size
	if size == 0 && src != nil {
		need = allocatedBytes(src.dataPath)
	}
	return b.ledger.Reserve(need, func(pending int64) error { return b.fits(need, pending) })
}

// fits is the capacity check of reserveSpace, with pending bytes already
// promised to calls in flight.
func (b *Backend) fits(need, pending int64) error {
	// No volume reserves more than its size, so free space minus every
	// volume's whole size is a floor of what is available; when even the
	// floor covers the request, the exact sum (a stat of every data file,
	// which made CreateVolume slower as the pool filled) is not needed.
	free, _, err := b.poolStat()
	if err != nil {
		return err
	}
	promised, err := b.volumes.sum(func(m volumeMeta) int64 { return m.SizeBytes })
	if err != nil {
		return err
	}
	if need <= roundDown(free-promised-pending) {
		return nil
	}
	avail, _, err := b.available()
	if err != nil {
		return err
	}
	if avail = roundDown(avail - pending); need > avail {
		return fmt.Errorf("%w: %d bytes asked, %d available in pool %s (%d more promised to calls in progress)",
			backend.ErrNoSpace, need, avail, b.cfg.PoolDir, pending)
	}
	return nil
}

// reserveGrowth is reserveSpace for an expansion: only the growth is new.
func (b *Backend) reserveGrowth(m volumeMeta, newSize int64) (release func(), err error) {
	return b.reserveSpace(newSize-m.SizeBytes, nil)
}

func allocatedBytes(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// CheckSpace implements backend.SpaceChecker. The pool counts as full when
// less than the smallest volume is free: a write through a loop device
// takes blocks a few at a time, and only a pool that has next to none left
// refuses them. statfs's free space is what a process other than root may
// still take, so the pool looks full slightly before root's writes fail.
func (b *Backend) CheckSpace(ctx context.Context, id string) error {
	free, _, err := b.poolStat()
	if err != nil || free >= backend.SizeGranularity {
		return nil
	}
	return fmt.Errorf("%w: pool %s is full (%d bytes free), so the file of volume %s cannot take the blocks written to it",
		backend.ErrNoSpace, b.cfg.PoolDir, free, id)
}
