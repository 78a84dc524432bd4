package main

import (
	"encoding/json"
	"time"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// profile is how much of each measurement a run does. The full profile is
// sized to the figures and to finish in under 15 minutes on two
// cores; the smoke profile runs every code path once at a size that takes
// seconds, so that the harness cannot rot unnoticed.
type profile struct {
	Name string `json:"name"`
	// LatencyCalls is how many of each control-plane call are timed.
	LatencyCalls int `json:"latency_calls"`
	// RoundTrips is how many stage+publish+unpublish+unstage cycles are
	// timed per access type.
	RoundTrips int `json:"node_round_trips"`
	// ConcClients create and delete volumes at once, each for
	// ConcPairs create+delete pairs (0: unbounded) or ConcDuration (0:
	// unbounded), whichever ends first.
	ConcClients  int     `json:"concurrency_clients"`
	ConcPairs    int     `json:"concurrency_pairs_per_client"`
	ConcDuration seconds `json:"concurrency_duration_s"`
	// SnapSizes are the amounts of data written into the volume that is
	// snapshotted and restored; the first and last are compared.
	SnapSizes []int64 `json:"snapshot_data_sizes"`
	// Reflinks cost milliseconds, so their median needs more samples to
	// be steady; copies of gigabytes are slow but steady.
	SnapRepsReflink int `json:"snapshot_reps_reflink"`
	SnapRepsCopy    int `json:"snapshot_reps_copy"`
	// FioSize is the file each fio job works on; FioRuntime and FioRamp
	// bound each job. FioRounds is how often each pattern runs on the
	// plain file and on the volume, back to back, with tarn's default
	// --direct-io (other settings get one round); the medians are
	// reported.
	FioSize    int64   `json:"fio_file_bytes"`
	FioRuntime seconds `json:"fio_runtime_s"`
	FioRamp    seconds `json:"fio_ramp_s"`
	FioRounds  int     `json:"fio_rounds"`
	// ScaleObjects is how many volumes, and as many snapshots, the scale
	// pool holds; ScaleRepeats how often each scale figure is taken.
	ScaleObjects int `json:"scale_objects"`
	ScaleRepeats int `json:"scale_repeats"`
	// Deadline stops a hung run: a bench that never ends is worse than
	// one that fails.
	Deadline seconds `json:"deadline_s"`
}

func fullProfile() profile {
	return profile{
		Name:            "full",
		LatencyCalls:    200,
		RoundTrips:      200,
		ConcClients:     16,
		ConcDuration:    seconds(20 * time.Second),
		SnapSizes:       []int64{10 * mib, 1 * gib, 4 * gib},
		SnapRepsReflink: 9,
		SnapRepsCopy:    3,
		FioSize:         1 * gib,
		FioRuntime:      seconds(6 * time.Second),
		FioRamp:         seconds(1 * time.Second),
		FioRounds:       3,
		ScaleObjects:    1000,
		ScaleRepeats:    5,
		Deadline:        seconds(25 * time.Minute),
	}
}

func smokeProfile() profile {
	return profile{
		Name:            "smoke",
		LatencyCalls:    5,
		RoundTrips:      5,
		ConcClients:     16,
		ConcPairs:       5,
		SnapSizes:       []int64{1 * mib, 8 * mib},
		SnapRepsReflink: 1,
		SnapRepsCopy:    1,
		FioSize:         32 * mib,
		FioRuntime:      seconds(1 * time.Second),
		FioRounds:       1,
		ScaleObjects:    20,
		ScaleRepeats:    1,
		Deadline:        seconds(5 * time.Minute),
	}
}

// Volume sizes used by the control-plane measurements: the smallest ext4
// volume, so that hundreds of them (restores reserve their whole size)
// fit a pool, and 1 MiB block volumes for the scale pool.
const (
	smallVolume = 16 * mib
	scaleVolume = 1 * mib
)

// poolImageSize is the sparse image a pool lives on: room for the largest
// snapshotted volume three times (volume, copy-snapshot, copy-restore), the
// fio files (the plain one and the data-path volume side by side, see
// dataPathSpace), and the reserves of the many small volumes; sparse, so only
// what is written costs disk.
func (p profile) poolImageSize() int64 {
	largest := p.SnapSizes[len(p.SnapSizes)-1]
	return 3*largest + 3*p.FioSize + int64(2*p.LatencyCalls)*smallVolume +
		int64(2*p.ScaleObjects)*scaleVolume + 4*gib
}

// seconds is a duration that reads as seconds in the JSON report.
type seconds time.Duration

func (s seconds) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(s).Seconds())
}

// UnmarshalJSON reads what MarshalJSON wrote, for --merge.
func (s *seconds) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*s = seconds(f * float64(time.Second))
	return nil
}

func (s seconds) d() time.Duration { return time.Duration(s) }
