package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// tarnProcess is the driver under demonstration, running as a child.
type tarnProcess struct {
	cmd     *exec.Cmd
	logPath string
	// exited is closed once the process has been reaped; waitErr is
	// written before that and read only after.
	exited  chan struct{}
	waitErr error
	// signalled records that the demo asked tarn to stop, so that a second
	// stop (the unwind after a failed first) does not report it again.
	signalled bool
}

// startTarn runs 'tarn serve' with its output in logPath.
// Staging and target paths lie under kubeletDir, as the kubelet's would.
func startTarn(binary, endpoint, poolDir, kubeletDir, logPath string) (*tarnProcess, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create tarn log: %w", err)
	}
	// The child keeps its own descriptor; ours is not needed past Start.
	defer logFile.Close()
	cmd := exec.Command(binary, "serve",
		"--endpoint", endpoint,
		"--pool-dir", poolDir,
		"--kubelet-dir", kubeletDir,
		"--node-id", nodeID,
		"-v=2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: a Ctrl-C at the terminal reaches only the
		// demo, which still needs tarn to unmount and detach what it made.
		Setpgid: true,
		// Should the demo die without cleaning up, tarn must not outlive
		// it holding the socket.
		Pdeathsig: syscall.SIGTERM,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	p := &tarnProcess{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *tarnProcess) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// diedError describes an unexpected exit; it is only meaningful once
// exited is closed.
func (p *tarnProcess) diedError() error {
	if p.waitErr == nil {
		return errors.New("tarn exited unexpectedly (status 0)")
	}
	return fmt.Errorf("tarn exited unexpectedly: %v", p.waitErr)
}

// stopTimeout is how long tarn gets to finish its calls in progress after
// SIGTERM before it is killed.
const stopTimeout = 30 * time.Second

// stop sends SIGTERM and waits for tarn to exit; a clean exit is status 0,
// anything else (including needing SIGKILL) is an error.
func (p *tarnProcess) stop(ctx context.Context) error {
	if !p.running() {
		if p.signalled {
			return nil
		}
		return p.diedError()
	}
	p.signalled = true
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("send SIGTERM to tarn: %w", err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("tarn did not exit within %v of SIGTERM and was killed", stopTimeout)
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("tarn was killed while stopping: %w", ctx.Err())
	}
	if p.waitErr != nil {
		return fmt.Errorf("tarn exited badly after SIGTERM: %v", p.waitErr)
	}
	return nil
}

// csiClients is one connection to tarn and the three services on it.
type csiClients struct {
	conn *grpc.ClientConn
	id   csi.IdentityClient
	ctrl csi.ControllerClient
	node csi.NodeClient
}

func dial(socket string) (*csiClients, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	return &csiClients{
		conn: conn,
		id:   csi.NewIdentityClient(conn),
		ctrl: csi.NewControllerClient(conn),
		node: csi.NewNodeClient(conn),
	}, nil
}

// readyTimeout bounds start-up: opening a pool sweeps leftovers and probes
// reflink, which takes well under a second on a healthy machine.
const readyTimeout = 30 * time.Second

// waitReady waits for the socket to appear and Probe to answer ready,
// failing at once if tarn exits meanwhile.
func waitReady(ctx context.Context, p *tarnProcess, socket string, c *csiClients) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	lastErr := errors.New("the socket did not appear")
	for {
		if _, err := os.Stat(socket); err == nil {
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := c.id.Probe(pctx, &csi.ProbeRequest{})
			pcancel()
			switch {
			case err != nil:
				lastErr = fmt.Errorf("Probe: %w", err)
			case resp.GetReady() != nil && !resp.GetReady().GetValue():
				lastErr = errors.New("Probe answered ready=false")
			default:
				return nil
			}
		}
		select {
		case <-p.exited:
			return p.diedError()
		case <-ctx.Done():
			return fmt.Errorf("tarn not ready after %v: %v", readyTimeout, lastErr)
		case <-tick.C:
		}
	}
}

// tarnLog is what the demo learns from tarn's log for its summary; the
// CSI API does not say how a snapshot was taken.
type tarnLog struct {
	reflink        string // "true", "false" or "" when not logged
	snapshotMethod string
	frozenFor      string
}

func readTarnLog(path, snapshotID string) tarnLog {
	var l tarnLog
	f, err := os.Open(path)
	if err != nil {
		return l
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, `"Opened loop pool"`):
			l.reflink = logValue(line, "reflink")
		case strings.Contains(line, `"Created loop snapshot"`) && strings.Contains(line, snapshotID):
			l.snapshotMethod = logValue(line, "method")
		case strings.Contains(line, `"Froze filesystem for clone"`):
			// The restore is cloned from an unattached snapshot, so the
			// only freeze is the snapshot's.
			l.frozenFor = logValue(line, "frozenFor")
			if d, err := time.ParseDuration(l.frozenFor); err == nil {
				l.frozenFor = fmtDuration(d)
			}
		}
	}
	return l
}

// logKeyValue matches one key=value pair of klog's structured text output,
// the value bare or quoted.
var logKeyValue = regexp.MustCompile(`(?:^|\s)([A-Za-z]+)=("(?:[^"\\]|\\.)*"|\S+)`)

func logValue(line, key string) string {
	for _, m := range logKeyValue.FindAllStringSubmatch(line, -1) {
		if m[1] == key {
			return strings.Trim(m[2], `"`)
		}
	}
	return ""
}

// logTail returns the last n lines of the tarn log for a failure report.
func logTail(path string, n int) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
