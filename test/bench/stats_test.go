package main

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

func TestSummarizeNearestRank(t *testing.T) {
	var samples []time.Duration
	// 1..100 ms, shuffled so that sorting is exercised.
	for i := range 100 {
		samples = append(samples, time.Duration((i*37)%100+1)*time.Millisecond)
	}
	s := summarize(samples)
	want := summary{N: 100, MinMS: 1, P50MS: 50, P90MS: 90, P99MS: 99, MaxMS: 100, MeanMS: 50.5}
	if s != want {
		t.Errorf("summarize(1..100 ms) = %+v, want %+v", s, want)
	}
	if samples[0] != 1*time.Millisecond {
		t.Errorf("summarize reordered its input")
	}
}

func TestSummarizeSmallSets(t *testing.T) {
	if s := summarize(nil); s != (summary{}) {
		t.Errorf("summarize(nil) = %+v, want zero", s)
	}
	one := summarize([]time.Duration{1500 * time.Microsecond})
	if one.P50MS != 1.5 || one.P99MS != 1.5 || one.N != 1 {
		t.Errorf("summarize(one sample) = %+v", one)
	}
	// With 5 samples p90 and p99 are the largest: nearest rank never
	// invents a value between two samples.
	five := summarize([]time.Duration{5 * time.Millisecond, 1 * time.Millisecond,
		4 * time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond})
	if five.P50MS != 3 || five.P90MS != 5 || five.P99MS != 5 {
		t.Errorf("summarize(5 samples) = %+v", five)
	}
}

func TestRatioNeverInfinite(t *testing.T) {
	if r := ratio(3, 0); r != 0 {
		t.Errorf("ratio(3, 0) = %v, want 0", r)
	}
	if r := ratio(1, 3); r != 0.333 {
		t.Errorf("ratio(1, 3) = %v, want 0.333", r)
	}
}

func TestSpecCode(t *testing.T) {
	for _, c := range []codes.Code{codes.OK, codes.Aborted, codes.ResourceExhausted, codes.FailedPrecondition} {
		if !specCode(c) {
			t.Errorf("specCode(%v) = false, want true", c)
		}
	}
	for _, c := range []codes.Code{codes.Internal, codes.Unknown, codes.Unavailable, codes.DeadlineExceeded} {
		if specCode(c) {
			t.Errorf("specCode(%v) = true, want false", c)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{0.9}, 0.9},
		{[]float64{1.2, 0.5, 0.9}, 0.9},
		{[]float64{1, 0.8}, 0.8}, // lower middle: a measured value
		{[]float64{3, 1, 4, 1, 5}, 3},
	} {
		in := slices.Clone(tc.in)
		if got := median(in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("median(%v) reordered its input", tc.in)
		}
	}
}
