package main

import (
	"cmp"
	"math"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
)

// summary describes a set of latency samples in milliseconds. Percentiles
// use the nearest-rank definition on the sorted samples (no interpolation),
// so every figure reported is one that was really measured, and p99 of 200
// calls is the 198th fastest rather than a blend of two.
type summary struct {
	N      int     `json:"n"`
	MinMS  float64 `json:"min_ms"`
	P50MS  float64 `json:"p50_ms"`
	P90MS  float64 `json:"p90_ms"`
	P99MS  float64 `json:"p99_ms"`
	MaxMS  float64 `json:"max_ms"`
	MeanMS float64 `json:"mean_ms"`
}

func summarize(samples []time.Duration) summary {
	if len(samples) == 0 {
		return summary{}
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	var total time.Duration
	for _, d := range sorted {
		total += d
	}
	return summary{
		N:      len(sorted),
		MinMS:  ms(sorted[0]),
		P50MS:  ms(percentile(sorted, 50)),
		P90MS:  ms(percentile(sorted, 90)),
		P99MS:  ms(percentile(sorted, 99)),
		MaxMS:  ms(sorted[len(sorted)-1]),
		MeanMS: ms(total / time.Duration(len(sorted))),
	}
}

// percentile returns the nearest-rank p-th percentile of sorted, which must
// not be empty.
func percentile[T any](sorted []T, p float64) T {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

// median is the nearest-rank median of samples (the lower middle one of
// an even count, so always a measured value), or zero for none; samples
// are not reordered.
func median[T cmp.Ordered](samples []T) T {
	if len(samples) == 0 {
		var zero T
		return zero
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	return percentile(sorted, 50)
}

// ms keeps microsecond precision: the control-plane target is 1 ms, so
// rounding to whole milliseconds would hide the figure that matters.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}

// ratio is a/b, or 0 when b is 0 so that JSON never carries Inf or NaN.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return math.Round(a/b*1000) / 1000
}

// specCode says whether the CSI spec defines code as an answer of
// CreateVolume or DeleteVolume (their error tables plus the general ones).
// Anything else under concurrency — Internal, Unknown, Unavailable,
// DeadlineExceeded — is a driver bug, not a refusal.
func specCode(c codes.Code) bool {
	switch c {
	case codes.OK, codes.InvalidArgument, codes.NotFound, codes.AlreadyExists,
		codes.ResourceExhausted, codes.OutOfRange, codes.Aborted,
		codes.FailedPrecondition, codes.Unimplemented, codes.Unauthenticated,
		codes.PermissionDenied:
		return true
	}
	return false
}
