// Command bench measures Tarn through its CSI API, talking to a real
// 'tarn serve' on pools it makes on loop devices (or, with --backend lvm,
// on a thin pool in a volume group): control-plane latency,
// throughput of concurrent clients, snapshot and restore cost against data
// size, fio on a volume against the pool's own filesystem, and behaviour
// with 1,000 volumes. It writes every figure as JSON and Markdown, plots
// snapshot time against size, and leaves no loop device, mount or file
// behind.
//
// Exit status: 0 all measured (and, in a full run, every target met);
// 1 a measurement failed or something was left behind; 2 bad usage;
// 3 a full run missed a target (the results are written all the same).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	tarn        string
	backend     string
	volumeGroup string
	smoke       bool
	out         string
	workBase    string
	verbose     int
	only        string
	plot        bool
	merge       string
}

// sections lists the measurements, in the order they run; --only picks
// some of them.
func sections() []string {
	return []string{"latency", "concurrency", "snapshot", "datapath", "scale"}
}

func main() { os.Exit(mainStatus()) }

func mainStatus() int {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&o.tarn, "tarn", "bin/tarn", "tarn binary to run")
	fs.StringVar(&o.backend, "backend", "loop", "tarn backend to measure")
	fs.BoolVar(&o.smoke, "smoke", false, "run every measurement once at toy size; missed targets do not fail")
	fs.StringVar(&o.out, "out", "", "directory for latest.json, latest.md and snapshot-vs-size.png (smoke: none kept)")
	fs.StringVar(&o.workBase, "work-dir", os.TempDir(), "where the run's temporary directory (pool images, mounts) goes")
	fs.IntVar(&o.verbose, "tarn-v", 0, "tarn's log verbosity; above 1 logs every call, which costs time")
	fs.StringVar(&o.only, "only", "", "comma-separated subset of "+strings.Join(sections(), ",")+" (default: all the backend supports)")
	fs.StringVar(&o.volumeGroup, "volume-group", os.Getenv("TARN_TEST_VG"), "lvm backend: the volume group to make the thin pool in (default $TARN_TEST_VG, as the test VM sets it)")
	fs.BoolVar(&o.plot, "plot", true, "draw snapshot-vs-size.png with gnuplot")
	fs.StringVar(&o.merge, "merge", "", "measure nothing: add the snapshot-vs-size figures, pools and targets of this run's JSON (e.g. an lvm run in the VM) to --out's latest.json, and write the outputs again")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	if o.merge != "" {
		if err := mergeInto(o); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		return 0
	}
	status, err := runBench(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	return status
}

func (o *options) check() error {
	if o.merge != "" {
		if o.out == "" {
			return errors.New("--merge needs --out, the directory whose latest.json receives the figures")
		}
		if _, err := exec.LookPath("gnuplot"); err != nil && o.plot {
			return errors.New("gnuplot is missing (make bench-deps, or --plot=false)")
		}
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it attaches loop devices and mounts filesystems")
	}
	abs, err := filepath.Abs(o.tarn)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(abs); err != nil || fi.IsDir() {
		return fmt.Errorf("tarn binary %s not found (make build)", abs)
	}
	o.tarn = abs
	b, err := lookupBackend(o.backend, *o)
	if err != nil {
		return err
	}
	for _, s := range strings.Split(o.only, ",") {
		if s != "" && !slices.Contains(sections(), s) {
			return fmt.Errorf("--only: unknown section %q", s)
		}
		if s != "" && !b.supports(s) {
			return fmt.Errorf("--only: the %s backend does not measure %s (it measures %s)", b.Name, s, strings.Join(b.Sections, ","))
		}
	}
	if o.only == "" && b.Sections != nil {
		o.only = strings.Join(b.Sections, ",")
	}
	tools := b.Tools
	if o.runs("datapath") {
		tools = append(tools, "fio")
	}
	if o.plot {
		tools = append(tools, "gnuplot")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing (make bench-deps)", tool)
		}
	}
	return nil
}

func (o *options) runs(section string) bool {
	return o.only == "" || slices.Contains(strings.Split(o.only, ","), section)
}

// runBench does the whole run and decides the exit status.
func runBench(o options) (int, error) {
	p := fullProfile()
	if o.smoke {
		p = smokeProfile()
	}
	b, err := lookupBackend(o.backend, o)
	if err != nil {
		return 2, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, p.Deadline.d())
	defer cancel()

	work, err := os.MkdirTemp(o.workBase, "tarn-bench-")
	if err != nil {
		return 1, err
	}
	// Empty lists rather than nulls, for whoever reads the JSON.
	r := &report{Schema: reportSchema, Mode: p.Name, StartedAt: time.Now().UTC(), Backend: b.Name, Profile: p,
		Machine: describeMachine(ctx, o.tarn), Errors: []string{}}
	fail := func(what string, err error) {
		if err != nil {
			msg := fmt.Sprintf("%s: %v", what, err)
			r.Errors = append(r.Errors, msg)
			fmt.Fprintln(os.Stderr, "bench: FAILED", msg)
		}
	}

	for i, kind := range b.Kinds {
		if ctx.Err() != nil {
			fail("run stopped", context.Cause(ctx))
			break
		}
		// Only the snapshot comparison runs on the other pool kinds.
		if i > 0 && !o.runs("snapshot") {
			continue
		}
		fail(kind+" pool", runPool(ctx, o, p, b, kind, i == 0, work, r, fail))
	}

	// Whatever is still attached or mounted under the run's directory was
	// left by the driver or by a failed step; it is a failure, and it is
	// removed so that the machine is as it was.
	cleanCtx := context.WithoutCancel(ctx)
	left, err := findLeftovers(work)
	fail("looking for leftovers", err)
	r.Leftovers = left
	if !left.empty() {
		fail("leftovers", fmt.Errorf("left behind: %s", left))
		fail("removing leftovers", forceClean(cleanCtx, left))
	}
	r.Seconds = time.Since(r.StartedAt).Seconds()
	r.Targets = evaluateTargets(r, b)

	out := o.out
	if out == "" {
		out = filepath.Join(work, "results")
	}
	fail("writing results", writeOutputs(cleanCtx, r, out, o.plot))
	fmt.Print(markdown(r))
	if o.out != "" {
		fmt.Printf("Results written to %s\n", o.out)
	}
	if l, err := findLeftovers(work); err == nil && l.empty() {
		fail("removing work directory", os.RemoveAll(work))
	} else {
		fail("work directory kept", fmt.Errorf("%s still holds %s", work, l))
	}
	return exitStatus(r, o.smoke), nil
}

func exitStatus(r *report, smoke bool) int {
	if len(r.Errors) > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d measurement(s) failed\n", len(r.Errors))
		return 1
	}
	var missed []string
	for _, t := range r.Targets {
		if t.Measured && !t.Met {
			missed = append(missed, t.Goal)
		}
	}
	if len(missed) > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d target(s) missed: %s\n", len(missed), strings.Join(missed, "; "))
		if !smoke {
			return 3
		}
		fmt.Fprintln(os.Stderr, "bench: smoke run: missed targets do not fail it")
	}
	return 0
}

// runPool makes one pool, serves it with tarn, runs the measurements that
// belong on it, and takes everything down again.
func runPool(ctx context.Context, o options, p profile, b benchBackend, kind string, primary bool,
	work string, r *report, fail func(string, error)) (err error) {
	dir := filepath.Join(work, kind)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	start := time.Now()
	size := p.poolImageSize()
	if b.PoolSize != nil {
		size = b.PoolSize(p)
	}
	pl, err := b.Open(ctx, dir, kind, size)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, pl.Close(context.WithoutCancel(ctx))) }()
	r.Pools = append(r.Pools, pl.Info())
	s := &session{pool: pl, bin: o.tarn, dir: dir, verbose: o.verbose}
	if err := s.start(ctx); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.stop()) }()
	logf("%s pool ready in %s (tarn ready in %s)", kind, time.Since(start).Round(time.Millisecond), s.tarn.Ready.Round(time.Millisecond))

	step := func(name string, f func() error) {
		if ctx.Err() != nil || !o.runs(name) {
			return
		}
		if s.tarn == nil {
			// An earlier restart failed; without a driver there is
			// nothing to measure.
			if err := s.start(ctx); err != nil {
				fail(kind+" "+name, err)
				return
			}
		}
		start := time.Now()
		logf("%s: %s ...", kind, name)
		err := f()
		fail(kind+" "+name, err)
		logf("%s: %s done in %s", kind, name, time.Since(start).Round(time.Millisecond))
		// A step that failed may have stopped tarn, or left it serving
		// with odd flags; the next one starts from a fresh default tarn.
		if err != nil && ctx.Err() == nil {
			fail(kind+" restart after "+name, s.restart(ctx))
		}
	}
	if primary {
		step("latency", func() (err error) {
			res, err := measureLatency(ctx, s, p)
			if err == nil {
				r.Latency = &res
			}
			return err
		})
		step("concurrency", func() (err error) {
			res, err := measureConcurrency(ctx, s, p)
			// Answers outside the spec fail the step but are the
			// figure itself, so they are reported.
			if res.Calls > 0 {
				r.Concurrency = &res
			}
			return err
		})
	}
	step("snapshot", func() (err error) {
		res, err := measureSnapshotSizes(ctx, s, p)
		if err == nil {
			r.SnapshotSizes = append(r.SnapshotSizes, res)
		}
		return err
	})
	if primary {
		step("datapath", func() (err error) {
			res, err := measureDataPath(ctx, s, b, p)
			if err == nil {
				r.DataPath = &res
			}
			return err
		})
		step("scale", func() (err error) {
			res, err := measureScale(ctx, s, p)
			if err == nil {
				r.Scale = &res
			}
			return err
		})
	}
	return ctx.Err()
}

// logf reports progress on stderr, so that stdout is the Markdown alone.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
