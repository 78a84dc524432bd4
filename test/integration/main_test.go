package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

// tarnBinary is the tarn command, built once for the tests that run the
// driver as a process of its own.
var tarnBinary string

// driverLog collects what the in-process driver logs; a failing test prints
// the part written while it ran instead of flooding every run with it.
var driverLog harness.LogBuffer

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

// runTests is TestMain's body, separate so that its deferred cleanups run
// before os.Exit.
func runTests(m *testing.M) int {
	if err := harness.RouteKlog(&driverLog); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "tarn-integration-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	tarnBinary = filepath.Join(dir, "tarn")
	if err := harness.BuildTarn(tarnBinary); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	// Fails the binary when a loop device or mount of this process
	// survives the tests, even if every test passed.
	return testpool.RunWithLeakCheck(m)
}

// showDriverLogOnFailure prints the driver's log lines of this test when it
// fails. Register it first so that it runs last, after cleanups that may
// fail too.
func showDriverLogOnFailure(t *testing.T) {
	start := driverLog.Len()
	t.Cleanup(func() {
		// Empty when the driver ran as a process of its own.
		if log := driverLog.Since(start); t.Failed() && log != "" {
			t.Logf("in-process driver log while %s ran:\n%s", t.Name(), log)
		}
	})
}
