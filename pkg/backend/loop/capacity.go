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
// already occupy.
func (b *Backend) Capacity(ctx context.Context, params map[string]string) (backend.Capacity, error) {
	if err := checkParameters(params); err != nil {
		return backend.Capacity{}, err
	}
	free, total, err := b.poolStat()
	if err != nil {
		return backend.Capacity{}, err
	}
	reserved, err := b.reserved()
	if err != nil {
		return backend.Capacity{}, err
	}
	avail := free - reserved
	if avail < 0 {
		avail = 0
	}
	avail = avail / backend.SizeGranularity * backend.SizeGranularity
	return backend.Capacity{AvailableBytes: avail, MaximumVolumeSize: avail, TotalBytes: total}, nil
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

// ensureSpace fails with ErrNoSpace before anything is written when a new
// volume of size (or a copy of src when size is 0) cannot be promised.
func (b *Backend) ensureSpace(size int64, src *source) error {
	need := size
	if size == 0 && src != nil {
		need = allocatedBytes(src.dataPath)
	}
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
	if floor := (free - promised) / backend.SizeGranularity * backend.SizeGranularity; need <= floor {
		return nil
	}
	capacity, err := b.Capacity(context.Background(), nil)
	if err != nil {
		return err
	}
	if need > capacity.AvailableBytes {
		return fmt.Errorf("%w: %d bytes asked, %d available in pool %s", backend.ErrNoSpace, need, capacity.AvailableBytes, b.cfg.PoolDir)
	}
	return nil
}

// ensureGrowth is ensureSpace for an expansion: only the growth is new.
func (b *Backend) ensureGrowth(m volumeMeta, newSize int64) error {
	return b.ensureSpace(newSize-m.SizeBytes, nil)
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
