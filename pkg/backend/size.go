package backend

import (
	"fmt"
	"math"
)

const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30
	// SizeGranularity is the unit every volume size is rounded up to: loop
	// devices, LVM extents (4 MiB by default, rounded again there) and
	// filesystems all prefer whole MiB.
	SizeGranularity = MiB
	// DefaultVolumeSize is used when a request gives no capacity.
	DefaultVolumeSize = GiB
)

// MinSize is the smallest volume each filesystem can be made on; mkfs.xfs
// refuses less than 300 MiB, and ext4 needs room for its journal.
func MinSize(fsType string) int64 {
	switch fsType {
	case "xfs":
		return 300 * MiB
	case "ext4", "ext3", "ext2":
		return 16 * MiB
	default:
		return SizeGranularity
	}
}

// RoundSize picks the size for a capacity range: the required bytes (or
// the default when none), rounded up to the granularity and to the
// filesystem minimum, as long as the limit allows it.
func RoundSize(required, limit int64, fsType string) (int64, error) {
	if required < 0 || limit < 0 {
		return 0, fmt.Errorf("%w: negative capacity (required %d, limit %d)", ErrOutOfRange, required, limit)
	}
	if limit > 0 && required > limit {
		return 0, fmt.Errorf("%w: required %d bytes exceeds limit %d bytes", ErrOutOfRange, required, limit)
	}
	size := required
	if size == 0 {
		size = DefaultVolumeSize
		if limit > 0 && size > limit {
			size = limit
		}
	}
	if size > math.MaxInt64-SizeGranularity {
		return 0, fmt.Errorf("%w: %d bytes is beyond any pool", ErrOutOfRange, size)
	}
	size = roundUp(size, SizeGranularity)
	if min := MinSize(fsType); size < min {
		size = min
	}
	if limit > 0 && size > limit {
		// Rounding overshot the limit: fall back to the largest whole unit
		// under it if that still satisfies the request.
		size = limit / SizeGranularity * SizeGranularity
		if size < required || size < MinSize(fsType) || size == 0 {
			return 0, fmt.Errorf("%w: no size in [%d, %d] bytes is a multiple of %d and at least the %s minimum of %d bytes",
				ErrOutOfRange, required, limit, SizeGranularity, fsLabel(fsType), MinSize(fsType))
		}
	}
	return size, nil
}

// Fits says whether an existing size satisfies a capacity range, for
// idempotent retries.
func Fits(size, required, limit int64) bool {
	return size >= required && (limit == 0 || size <= limit)
}

func roundUp(n, unit int64) int64 {
	return (n + unit - 1) / unit * unit
}

func fsLabel(fsType string) string {
	if fsType == "" {
		return "block"
	}
	return fsType
}
