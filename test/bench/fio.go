package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// fioPattern is one of the four I/O patterns compared.
type fioPattern struct {
	Name    string
	RW      string
	BS      string
	IODepth int
}

func fioPatterns() []fioPattern {
	return []fioPattern{
		{"seq-read-1M", "read", "1M", 8},
		{"seq-write-1M", "write", "1M", 8},
		{"rand-read-4K", "randread", "4k", 32},
		{"rand-write-4K", "randwrite", "4k", 32},
	}
}

// fioFigures are one job's results; MiBps and IOPS are the same figure in
// different units at a fixed block size, so ratios use MiBps for all.
type fioFigures struct {
	MiBps     float64 `json:"mib_per_s"`
	IOPS      float64 `json:"iops"`
	MeanLatUS float64 `json:"mean_latency_us"`
	P99LatUS  float64 `json:"p99_completion_latency_us"`
}

// dataPathResult compares fio on a file in a mounted volume with the same
// job on a plain file on the pool's own filesystem.
type dataPathResult struct {
	Pool      string `json:"pool"`
	FileBytes int64  `json:"file_bytes"`
	Job       string `json:"job"`
	// Plain is what the first (default) direct-I/O setting's volume was
	// compared with; each volumeDataPath has its own.
	Plain   map[string]fioFigures `json:"plain_file"`
	Volumes []volumeDataPath      `json:"volume"`
}

// volumeDataPath is one direct-I/O setting: each round ran every pattern
// on the plain file and then on the volume, back to back. Plain and
// Figures are the median rounds by MiB/s, Ratios the medians of
// RoundRatios, the per-round volume/plain MiB/s.
type volumeDataPath struct {
	// DirectIO is tarn's --direct-io flag ("" when the backend has none);
	// LoopDIO is what the kernel says of the attached loop device.
	DirectIO    string                `json:"tarn_direct_io"`
	LoopDIO     bool                  `json:"loop_device_dio"`
	FsType      string                `json:"volume_filesystem"`
	Rounds      int                   `json:"rounds"`
	Plain       map[string]fioFigures `json:"plain_file"`
	Figures     map[string]fioFigures `json:"figures"`
	Ratios      map[string]float64    `json:"ratio_volume_to_plain"`
	RoundRatios map[string][]float64  `json:"round_ratios"`
}

// fioCommon is shared by every job: O_DIRECT so that the page cache of
// whichever filesystem holds the file does not turn a disk measurement
// into a memory one, and libaio so that iodepth means something.
func fioCommon(file string, size int64, out string) []string {
	return []string{"fio", "--name=bench", "--filename=" + file, "--size=" + strconv.FormatInt(size, 10),
		"--ioengine=libaio", "--direct=1", "--output-format=json", "--output=" + out}
}

// dataPathVolumeSize is the data-path volume: the fio file plus room for
// ext4's metadata.
func dataPathVolumeSize(p profile) int64 {
	return (p.FioSize + p.FioSize/4 + 64*mib + mib - 1) / mib * mib
}

// dataPathSpace is what the data path holds on the pool at once: the
// plain file and the volume beside it.
func dataPathSpace(p profile) int64 { return p.FioSize + dataPathVolumeSize(p) }

// measureDataPath compares the volume with the plain file for each
// direct-I/O setting of the backend (restarting tarn for each; the volume
// and both files stay throughout). The disk under the pool is shared, so
// its throughput drifts over minutes: each pattern runs on the plain file
// and then on the volume back to back, so that drift hits both alike, and
// the rounds are reduced to medians (compareRounds).
func measureDataPath(ctx context.Context, s *session, b benchBackend, p profile) (res dataPathResult, err error) {
	res = dataPathResult{Pool: s.pool.Info().Kind, FileBytes: p.FioSize,
		Job: fmt.Sprintf("libaio, O_DIRECT, %s time-based after %s ramp; seq 1M iodepth 8, random 4k iodepth 32",
			p.FioRuntime.d(), p.FioRamp.d())}
	plain := filepath.Join(s.pool.BaselineDir(), "bench.fio")
	// Registered first, so that it runs after the volume's cleanup.
	defer func() {
		if rmErr := os.Remove(plain); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			err = errors.Join(err, rmErr)
		}
	}()
	if err := layOut(ctx, s.dir, plain, p); err != nil {
		return res, err
	}
	size := dataPathVolumeSize(p)
	if free, err := freeBytes(s.pool.BaselineDir()); err != nil {
		return res, err
	} else if free < size {
		return res, fmt.Errorf("pool has %d MiB free next to the %d MiB plain file, the data-path volume needs %d MiB (profile's poolImageSize too small?)",
			free/mib, p.FioSize/mib, size/mib)
	}

	var o objects
	defer func() { err = errors.Join(err, s.cleanup(&o)) }()
	vol, _, err := s.c().createVolume(ctx, "bench-datapath", size, mountCap("ext4"), nil)
	if err != nil {
		return res, err
	}
	o.volumes = append(o.volumes, vol)
	modes := []string{""}
	if len(b.DirectIOModes) > 0 {
		modes = nil
		for _, m := range b.DirectIOModes {
			modes = append(modes, strconv.FormatBool(m))
		}
	}
	for i, mode := range modes {
		var extra []string
		if mode != "" {
			extra = []string{"--direct-io=" + mode}
		}
		if err := s.restart(ctx, extra...); err != nil {
			return res, err
		}
		// The deployed setting (the first) is the one judged most
		// closely: it gets the profile's rounds, the others one.
		rounds := 1
		if i == 0 {
			rounds = max(1, p.FioRounds)
		}
		v := volumeDataPath{DirectIO: mode, FsType: "ext4", Rounds: rounds, Plain: map[string]fioFigures{},
			Figures: map[string]fioFigures{}, Ratios: map[string]float64{}, RoundRatios: map[string][]float64{}}
		o.staged = append(o.staged, vol)
		target, _, _, err := s.stageAndPublish(ctx, vol, mountCap("ext4"))
		if err != nil {
			return res, err
		}
		if v.LoopDIO, err = deviceDIO(target); err != nil {
			return res, err
		}
		file := filepath.Join(target, "bench.fio")
		if err := layOut(ctx, s.dir, file, p); err != nil {
			return res, err
		}
		plainRuns, volRuns := map[string][]fioFigures{}, map[string][]fioFigures{}
		for r := range rounds {
			logf("datapath: %s round %d/%d", strings.Join(append([]string{"volume"}, extra...), " "), r+1, rounds)
			for _, pat := range fioPatterns() {
				pf, err := runPattern(ctx, s.dir, plain, pat, p)
				if err != nil {
					return res, err
				}
				vf, err := runPattern(ctx, s.dir, file, pat, p)
				if err != nil {
					return res, err
				}
				plainRuns[pat.Name] = append(plainRuns[pat.Name], pf)
				volRuns[pat.Name] = append(volRuns[pat.Name], vf)
			}
		}
		for _, pat := range fioPatterns() {
			c := compareRounds(plainRuns[pat.Name], volRuns[pat.Name])
			v.Plain[pat.Name], v.Figures[pat.Name] = c.Plain, c.Volume
			v.Ratios[pat.Name], v.RoundRatios[pat.Name] = c.Ratio, c.RoundRatios
		}
		if i == 0 {
			res.Plain = v.Plain
		}
		if _, _, err := s.unpublishAndUnstage(ctx, vol); err != nil {
			return res, err
		}
		o.staged = drop(o.staged, vol)
		res.Volumes = append(res.Volumes, v)
	}
	// Later measurements expect tarn as deployed: default flags.
	if err := s.restart(ctx); err != nil {
		return res, err
	}
	return res, nil
}

// roundsCompared is one pattern's rounds reduced to the reported figures.
type roundsCompared struct {
	Plain, Volume fioFigures
	Ratio         float64
	RoundRatios   []float64
}

// compareRounds reduces one pattern's rounds (plain[i] and volume[i] ran
// back to back): Plain and Volume are the median rounds by MiB/s, so
// that IOPS and latencies come from the same fio run; Ratio is the
// median of the per-round ratios, each of which compares two jobs that
// met the disk in the same state, which the ratio of the two medians
// would not.
func compareRounds(plain, volume []fioFigures) roundsCompared {
	c := roundsCompared{Plain: medianRun(plain), Volume: medianRun(volume)}
	for i := range min(len(plain), len(volume)) {
		c.RoundRatios = append(c.RoundRatios, ratio(volume[i].MiBps, plain[i].MiBps))
	}
	c.Ratio = median(c.RoundRatios)
	return c
}

// medianRun is the run with the nearest-rank median MiB/s, or zero for
// none.
func medianRun(runs []fioFigures) fioFigures {
	if len(runs) == 0 {
		return fioFigures{}
	}
	sorted := slices.Clone(runs)
	slices.SortStableFunc(sorted, func(a, b fioFigures) int { return cmp.Compare(a.MiBps, b.MiBps) })
	return percentile(sorted, 50)
}

// freeBytes is the space an unprivileged writer may still use on dir's
// filesystem.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// deviceDIO reads whether the loop device mounted at mnt does direct I/O
// on its backing file.
func deviceDIO(mnt string) (bool, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mnt))
	if err != nil || len(mounts) == 0 {
		return false, fmt.Errorf("nothing mounted at %s: %v", mnt, err)
	}
	dev := mounts[len(mounts)-1].Source
	dio, err := os.ReadFile(sysLoopAttr(dev, "dio"))
	if err != nil {
		return false, fmt.Errorf("%s is not a loop device: %w", dev, err)
	}
	return strings.TrimSpace(string(dio)) == "1", nil
}

// layOut writes the whole file once (not timed), unless it exists, so that
// reads meet real data rather than holes and writes overwrite allocated
// blocks on both sides.
func layOut(ctx context.Context, dir, file string, p profile) error {
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		return err
	}
	out := filepath.Join(dir, "fio.json")
	defer os.Remove(out)
	prep := append(fioCommon(file, p.FioSize, out), "--rw=write", "--bs=1M", "--iodepth=8", "--end_fsync=1")
	if _, err := runFio(ctx, prep, out); err != nil {
		return fmt.Errorf("lay out %s: %w", file, err)
	}
	return nil
}

// runPattern runs one pattern on a laid-out file for the profile's
// runtime.
func runPattern(ctx context.Context, dir, file string, pat fioPattern, p profile) (fioFigures, error) {
	out := filepath.Join(dir, "fio.json")
	defer os.Remove(out)
	args := append(fioCommon(file, p.FioSize, out), "--rw="+pat.RW, "--bs="+pat.BS,
		"--iodepth="+strconv.Itoa(pat.IODepth), "--time_based",
		fmt.Sprintf("--runtime=%dms", p.FioRuntime.d().Milliseconds()))
	if p.FioRamp > 0 {
		args = append(args, fmt.Sprintf("--ramp_time=%dms", p.FioRamp.d().Milliseconds()))
	}
	f, err := runFio(ctx, args, out)
	if err != nil {
		return fioFigures{}, fmt.Errorf("fio %s on %s: %w", pat.Name, file, err)
	}
	return f, nil
}

func runFio(ctx context.Context, argv []string, out string) (fioFigures, error) {
	if _, err := run(ctx, argv...); err != nil {
		return fioFigures{}, err
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return fioFigures{}, err
	}
	return parseFio(data)
}

// fioOutput is the part of fio's JSON output the bench reads.
type fioOutput struct {
	Jobs []struct {
		Error int      `json:"error"`
		Read  fioStats `json:"read"`
		Write fioStats `json:"write"`
	} `json:"jobs"`
}

type fioStats struct {
	BWBytes float64 `json:"bw_bytes"`
	IOPS    float64 `json:"iops"`
	LatNS   struct {
		Mean float64 `json:"mean"`
	} `json:"lat_ns"`
	ClatNS struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

// parseFio reads a one-job fio JSON report; the job is either a read or a
// write job, so the direction that moved data is the one reported.
func parseFio(data []byte) (fioFigures, error) {
	// fio may print notices before the JSON document.
	if i := strings.IndexByte(string(data), '{'); i > 0 {
		data = data[i:]
	}
	var o fioOutput
	if err := json.Unmarshal(data, &o); err != nil {
		return fioFigures{}, fmt.Errorf("fio output: %w", err)
	}
	if len(o.Jobs) != 1 {
		return fioFigures{}, fmt.Errorf("fio output has %d jobs, want 1", len(o.Jobs))
	}
	j := o.Jobs[0]
	if j.Error != 0 {
		return fioFigures{}, fmt.Errorf("fio job failed with error %d", j.Error)
	}
	st := j.Read
	if j.Write.BWBytes > st.BWBytes {
		st = j.Write
	}
	if st.BWBytes <= 0 {
		return fioFigures{}, errors.New("fio job moved no data")
	}
	round := func(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
	return fioFigures{
		MiBps:     round(st.BWBytes / float64(mib)),
		IOPS:      round(st.IOPS),
		MeanLatUS: round(st.LatNS.Mean / 1000),
		P99LatUS:  round(st.ClatNS.Percentile["99.000000"] / 1000),
	}, nil
}
