// Package harness holds what the test packages that drive a real `tarn
// serve` share: building the binary under test, and capturing a driver's
// log while a test reads it.
package harness

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// BuildTarn builds ./cmd/tarn of the module under test into out, with the
// build tags given. The module is found through `go env GOMOD`, so tests
// work from any directory.
func BuildTarn(out string, tags ...string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(gomod))
	if mod == "" || mod == os.DevNull {
		return errors.New("go env GOMOD: not inside a module")
	}
	args := []string{"build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, "./cmd/tarn")...)
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/tarn: %w\n%s", err, b)
	}
	return nil
}

// RouteKlog sends klog to w only, at verbosity 2. Without one_output every
// error line would be written once per lower severity, and without an
// output klog would create log files in the temporary directory.
func RouteKlog(w io.Writer) error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for name, value := range map[string]string{
		"logtostderr": "false", "alsologtostderr": "false", "one_output": "true",
		"stderrthreshold": "FATAL", "v": "2",
	} {
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("klog flag %s: %w", name, err)
		}
	}
	klog.SetOutput(w)
	return nil
}

// LogBuffer is a buffer that an in-process driver's goroutines, or the
// copier of a child's output, write while a test reads it.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Len is the offset a later Since starts from.
func (b *LogBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// Since returns what was written after offset (everything, if the offset
// is past the end).
func (b *LogBuffer) Since(offset int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if offset > b.buf.Len() {
		offset = 0
	}
	return string(b.buf.Bytes()[offset:])
}

// FilesystemSize is the size of the filesystem mounted at path, as statfs
// reports it: what a pod sees grow when its volume is expanded.
func FilesystemSize(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return int64(st.Blocks) * st.Bsize
}
