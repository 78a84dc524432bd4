// Package lvm runs LVM commands for Tarn: one wrapper that executes the lvm
// binary without a shell, reads its JSON reports into typed values and turns
// its error text into the backend's sentinel errors, so that nothing else in
// Tarn parses LVM output.
package lvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// DefaultTimeout bounds one LVM command when the Client is given none. LVM
// commands take well under a second on a healthy node; minutes mean a stuck
// device, and the caller should hear about it.
const DefaultTimeout = 2 * time.Minute

// Runner runs one lvm command. args[0] is the LVM command ("lvs",
// "lvcreate"), the rest its arguments, each one argv entry. It is the seam
// that lets tests feed recorded LVM output to the Client.
type Runner interface {
	// Run returns what the command printed and its exit status. An error
	// means the command could not be run or was interrupted, not that it
	// failed: a failure is a non-zero Output.ExitCode.
	Run(ctx context.Context, args []string) (Output, error)
}

// Output is what one command printed and how it ended.
type Output struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
}

// Exec runs the real lvm binary.
type Exec struct {
	// Path is the lvm binary; "" means "lvm" looked up in the standard
	// system directories.
	Path string
	// AbandonAfter is how long a command told to stop (SIGTERM, when its
	// context ends) may take to end before the call gives up waiting
	// for it; 0 means DefaultAbandonAfter.
	AbandonAfter time.Duration
}

// DefaultAbandonAfter is long enough for LVM to leave a critical section
// (a metadata commit, a table reload) once it is told to stop.
const DefaultAbandonAfter = 30 * time.Second

// execPath is fixed rather than inherited so that LVM's helpers (modprobe,
// thin_check) resolve the same way whatever the driver's environment is.
const execPath = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

// Run implements Runner.
func (e Exec) Run(ctx context.Context, args []string) (Output, error) {
	path := e.Path
	if path == "" {
		path = "lvm"
		for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
			if _, err := os.Stat(dir + "/lvm"); err == nil {
				path = dir + "/lvm"
				break
			}
		}
	}
	cmd := exec.CommandContext(ctx, path, args...)
	// LC_ALL=C keeps the messages that classify reads in English. LVM
	// warns on stderr about every inherited descriptor; a driver has none
	// that matter.
	cmd.Env = []string{"LC_ALL=C", execPath, "LVM_SUPPRESS_FD_WARNINGS=1"}
	if dir, ok := os.LookupEnv("LVM_SYSTEM_DIR"); ok {
		// Containers often mount the host's LVM configuration elsewhere.
		cmd.Env = append(cmd.Env, "LVM_SYSTEM_DIR="+dir)
	}
	// SIGKILL could catch LVM with a device suspended and leave every
	// writer of that device hanging. LVM blocks signals while it holds a
	// VG write lock, so SIGTERM ends it at the next safe point instead;
	// no WaitDelay, because escalating to SIGKILL is what must not happen.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return Output{}, fmt.Errorf("%w: lvm binary: %v", backend.ErrNotReady, err)
		}
		return Output{}, fmt.Errorf("run lvm %s: %w", args[0], err)
	}
	ended := make(chan error, 1)
	go func() { ended <- cmd.Wait() }()
	var err error
	select {
	case err = <-ended:
	case <-ctx.Done():
		// The context's end has sent SIGTERM. A command that does not
		// end is left to end on its own (it is reaped then), so that it
		// holds neither its caller nor the volume's lock; LVM's own VG
		// lock keeps later commands from running into it.
		grace := e.AbandonAfter
		if grace <= 0 {
			grace = DefaultAbandonAfter
		}
		select {
		case err = <-ended:
		case <-time.After(grace):
			pid := cmd.Process.Pid
			go func() {
				<-ended
				klog.InfoS("An abandoned LVM command has ended", "command", args[0], "pid", pid)
			}()
			return Output{}, fmt.Errorf("lvm %s interrupted: %w; it is still running %s after being told to stop (pid %d), and is left to end on its own",
				args[0], ctx.Err(), grace, pid)
		}
	}
	out := Output{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return out, nil
	case ctx.Err() != nil:
		return out, fmt.Errorf("lvm %s interrupted: %w", args[0], ctx.Err())
	case errors.As(err, &exitErr):
		out.ExitCode = exitErr.ExitCode()
		if out.ExitCode < 0 {
			return out, fmt.Errorf("lvm %s: %w", args[0], err)
		}
		return out, nil
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, os.ErrNotExist):
		return out, fmt.Errorf("%w: lvm binary: %v", backend.ErrNotReady, err)
	}
	return out, fmt.Errorf("run lvm %s: %w", args[0], err)
}

// Error is a failed LVM command. It unwraps to the backend sentinel its
// message maps to, when there is one.
type Error struct {
	Args     []string
	ExitCode int
	// Stderr is LVM's message, trimmed.
	Stderr string
	kind   error
}

func (e *Error) Error() string {
	msg := e.Stderr
	if msg == "" {
		msg = "no message"
	}
	return fmt.Sprintf("lvm %s failed (exit %d): %s", strings.Join(e.Args, " "), e.ExitCode, msg)
}

// Unwrap returns the sentinel LVM's message maps to, or nil.
func (e *Error) Unwrap() error { return e.kind }

// Client runs LVM commands through a Runner. It holds no state about LVs:
// every call asks LVM.
type Client struct {
	runner  Runner
	timeout time.Duration
}

// NewClient returns a Client; a nil runner means Exec{}, a zero timeout
// DefaultTimeout.
func NewClient(runner Runner, timeout time.Duration) *Client {
	if runner == nil {
		runner = Exec{}
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{runner: runner, timeout: timeout}
}

// run runs one command and returns its stdout, or an *Error carrying the
// mapped sentinel.
func (c *Client) run(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	out, err := c.runner.Run(ctx, args)
	if err != nil {
		return nil, err
	}
	if out.ExitCode != 0 {
		stderr := strings.TrimSpace(string(out.Stderr))
		return nil, &Error{Args: args, ExitCode: out.ExitCode, Stderr: stderr, kind: classify(stderr)}
	}
	return out.Stdout, nil
}
