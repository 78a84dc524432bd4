package reliability

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

// Knobs. Flags win over the environment, which suits CI jobs that only
// set variables.
var (
	stressDurationFlag  = flag.Duration("stress.duration", 0, "how long TestStress runs its clients (default $TARN_STRESS_DURATION or 20s)")
	crashIterationsFlag = flag.Int("crash.iterations", 0, "kills per operation in TestCrashSafety (default $TARN_CRASH_ITERATIONS or 10)")
	fuzzRequestsFlag    = flag.Int("fuzz.requests", 0, "requests sent by TestMalformedRequests (default $TARN_FUZZ_REQUESTS or 5000)")
	fuzzSeedFlag        = flag.Int64("fuzz.seed", 0, "seed of TestMalformedRequests (default $TARN_FUZZ_SEED or the clock)")
)

func stressDuration(t *testing.T) time.Duration {
	if *stressDurationFlag > 0 {
		return *stressDurationFlag
	}
	if v := os.Getenv("TARN_STRESS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("TARN_STRESS_DURATION=%q: want a positive duration such as 5m", v)
		}
		return d
	}
	return 20 * time.Second
}

func intKnob(t *testing.T, flagValue int, env string, def int) int {
	if flagValue > 0 {
		return flagValue
	}
	if v := os.Getenv(env); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("%s=%q: want a positive integer", env, v)
		}
		return n
	}
	return def
}

func fuzzSeed(t *testing.T) int64 {
	if *fuzzSeedFlag != 0 {
		return *fuzzSeedFlag
	}
	if v := os.Getenv("TARN_FUZZ_SEED"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("TARN_FUZZ_SEED=%q: want an integer", v)
		}
		return n
	}
	return time.Now().UnixNano()
}

// tarnBinary is `tarn`, built once for the tests that run the driver as a
// process of its own (so that it can be SIGKILLed, or can crash without
// taking the test binary with it).
var tarnBinary string

// faultBinary is `tarn` built with the faultinject tag, built on first use
// (only TestFaultPoints runs it) into the same directory as tarnBinary.
var faultBinary struct {
	once sync.Once
	path string
	err  error
}

// faultTarn returns the path of the faultinject build of tarn.
func faultTarn(t *testing.T) string {
	t.Helper()
	faultBinary.once.Do(func() {
		start := time.Now()
		faultBinary.path = filepath.Join(filepath.Dir(tarnBinary), "tarn-faultinject")
		faultBinary.err = harness.BuildTarn(faultBinary.path, "faultinject")
		t.Logf("built %s in %v", faultBinary.path, time.Since(start).Round(time.Millisecond))
	})
	if faultBinary.err != nil {
		t.Fatal(faultBinary.err)
	}
	return faultBinary.path
}

// driverLog collects what the in-process driver logs, printed only for a
// failing test.
var driverLog harness.LogBuffer

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

// run is TestMain's body, so that its deferred removals happen before
// os.Exit.
func run(m *testing.M) int {
	flag.Parse()
	if err := harness.RouteKlog(&driverLog); err != nil {
		fmt.Fprintf(os.Stderr, "reliability: %v\n", err)
		return 1
	}
	if os.Geteuid() != 0 {
		// Every test here needs loop devices and mounts; they skip, and
		// building tarn would be wasted.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "tarn-reliability-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "reliability: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	tarnBinary = filepath.Join(dir, "tarn")
	if err := harness.BuildTarn(tarnBinary); err != nil {
		fmt.Fprintf(os.Stderr, "reliability: %v\n", err)
		return 1
	}
	return testpool.RunWithLeakCheck(m)
}

// showDriverLogOnFailure prints the in-process driver's log lines of this
// test if it fails; registered first, it runs after every other cleanup.
func showDriverLogOnFailure(t *testing.T) {
	start := driverLog.Len()
	t.Cleanup(func() {
		if log := driverLog.Since(start); t.Failed() && log != "" {
			t.Logf("in-process driver log of %s (last 200 lines):\n%s", t.Name(), tail(log, 200))
			keepLog(t, "driver.log", log)
		}
	})
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// keepLog writes a failing test's whole driver log to the directory named
// by TARN_RELIABILITY_LOGS, when set: the test output only shows its end.
func keepLog(t *testing.T, name, log string) {
	dir := os.Getenv("TARN_RELIABILITY_LOGS")
	if dir == "" {
		return
	}
	path := filepath.Join(dir, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+"-"+name)
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Logf("keep log: %v", err)
		return
	}
	t.Logf("whole log in %s", path)
}
