package integration

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/test/testpool"
)

// tarnBinary is the tarn command, built once for the tests that run the
// driver as a process of its own.
var tarnBinary string

// driverLog collects what the in-process driver logs; a failing test prints
// the part written while it ran instead of flooding every run with it.
var driverLog syncBuffer

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

// runTests is TestMain's body, separate so that its deferred cleanups run
// before os.Exit.
func runTests(m *testing.M) int {
	if err := routeKlog(&driverLog); err != nil {
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
	if err := buildTarn(tarnBinary); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	// Fails the binary when a loop device or mount of this process
	// survives the tests, even if every test passed.
	return testpool.RunWithLeakCheck(m)
}

// routeKlog sends klog to w only. Without one_output every error line would
// be written once per lower severity, and without an output klog would
// create log files in the temp directory.
func routeKlog(w *syncBuffer) error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for name, value := range map[string]string{
		"logtostderr":     "false",
		"alsologtostderr": "false",
		"one_output":      "true",
		"stderrthreshold": "FATAL",
		"v":               "2",
	} {
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("klog flag %s: %w", name, err)
		}
	}
	klog.SetOutput(w)
	return nil
}

// buildTarn builds ./cmd/tarn of the module under test, found with go env
// GOMOD so that the tests work from any working directory.
func buildTarn(out string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(gomod))
	if mod == "" || mod == os.DevNull {
		return errors.New("go env GOMOD: not inside a module")
	}
	cmd := exec.Command("go", "build", "-o", out, "./cmd/tarn")
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/tarn: %w\n%s", err, b)
	}
	return nil
}

// syncBuffer is a bytes.Buffer that the driver's goroutines (or a child
// process's output copier) can write while a test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Len is the offset a later Since starts from.
func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// Since returns what was written after offset.
func (b *syncBuffer) Since(offset int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if offset > b.buf.Len() {
		offset = 0
	}
	return string(b.buf.Bytes()[offset:])
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
