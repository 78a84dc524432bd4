package harness

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is one run of a command, `tarn serve` in the tests, whose output
// is kept for when a test fails.
type Process struct {
	Cmd  *exec.Cmd
	Out  *LogBuffer
	done chan struct{}
	err  error // what Wait returned, once done is closed
}

// Start starts cmd with its stdout and stderr in Out. The child gets this
// process's environment without fault injection settings (TARN_FAULT_*),
// which only the extraEnv of the test that arms a point may add.
func Start(cmd *exec.Cmd, extraEnv ...string) (*Process, error) {
	p := &Process{Cmd: cmd, Out: &LogBuffer{}, done: make(chan struct{})}
	cmd.Env = nil
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TARN_FAULT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stdout, cmd.Stderr = p.Out, p.Out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Pid is the process's ID.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited says whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is what waiting for the process returned; nil while it runs.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Kill ends the process the way an OOM kill does, no handler running, and
// fails the test unless it is gone within the time given.
func (p *Process) Kill(t testing.TB, within time.Duration) {
	t.Helper()
	if err := p.Cmd.Process.Signal(syscall.SIGKILL); err != nil && !p.Exited() {
		t.Fatalf("kill pid %d: %v", p.Pid(), err)
	}
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("pid %d did not die within %v of SIGKILL", p.Pid(), within)
	}
}

// Terminate stops the process as the kubelet does, with SIGTERM, and kills
// it if it has not stopped within the time given; anything but a clean
// exit fails the test.
func (p *Process) Terminate(t testing.TB, within time.Duration) {
	t.Helper()
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("pid %d exited with %v after SIGTERM", p.Pid(), p.err)
		}
	case <-time.After(within):
		t.Errorf("pid %d did not stop within %v of SIGTERM", p.Pid(), within)
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}
