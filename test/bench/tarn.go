package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// client is one connection to tarn with its three services.
type client struct {
	conn *grpc.ClientConn
	id   csi.IdentityClient
	ctrl csi.ControllerClient
	node csi.NodeClient
}

func dial(socket string) (*client, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC waits a second after a failed connect by default; a connect
		// that races tarn's bind and listen would then add that second to
		// the measured start-up.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 20 * time.Millisecond},
			MinConnectTimeout: 5 * time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	return &client{conn: conn, id: csi.NewIdentityClient(conn),
		ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn)}, nil
}

func (c *client) Close() error { return c.conn.Close() }

// tarnProc is a running 'tarn serve'.
type tarnProc struct {
	cmd     *exec.Cmd
	socket  string
	logPath string
	// Ready is the time from exec to the first Probe answering ready.
	Ready  time.Duration
	client *client
	// exited is closed once the process is reaped; waitErr is set before.
	exited  chan struct{}
	waitErr error
}

const (
	readyTimeout = 60 * time.Second
	stopTimeout  = 60 * time.Second
	// socketPoll is fine-grained because start-up itself is measured and
	// the target is one second.
	socketPoll = time.Millisecond
)

// startTarn runs tarn and waits for a ready Probe, measuring how long that
// took. The socket is polled rather than dialled blindly: a gRPC dial that
// fails enters reconnect backoff (a second or more), which would be measured
// as start-up time.
func startTarn(ctx context.Context, bin, socket, logPath string, args []string) (*tarnProc, error) {
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	argv := append([]string{"serve", "--endpoint", "unix://" + socket, "--node-id", "bench-node"}, args...)
	cmd := exec.Command(bin, argv...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A Ctrl-C at the terminal reaches only the harness, which still
		// needs tarn to unstage what it staged.
		Setpgid: true,
		// Should the harness die, tarn must not live on holding mounts.
		Pdeathsig: syscall.SIGTERM,
	}
	t := &tarnProc{cmd: cmd, socket: socket, logPath: logPath, exited: make(chan struct{})}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		t.waitErr = cmd.Wait()
		close(t.exited)
	}()
	if err := t.waitReady(ctx); err != nil {
		return nil, errors.Join(err, t.stop(), t.tailError())
	}
	t.Ready = time.Since(start)
	return t, nil
}

func (t *tarnProc) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(socketPoll)
	defer tick.Stop()
	for {
		if _, err := os.Stat(t.socket); err == nil {
			break
		}
		select {
		case <-t.exited:
			return fmt.Errorf("tarn exited before listening: %v", t.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("tarn did not create its socket in %v", readyTimeout)
		case <-tick.C:
		}
	}
	c, err := dial(t.socket)
	if err != nil {
		return err
	}
	t.client = c
	for {
		resp, err := c.id.Probe(ctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
		if err == nil && (resp.GetReady() == nil || resp.GetReady().GetValue()) {
			return nil
		}
		select {
		case <-t.exited:
			return fmt.Errorf("tarn exited before ready: %v", t.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("tarn not ready in %v: %v", readyTimeout, err)
		case <-tick.C:
		}
	}
}

// stop ends tarn with SIGTERM, as Kubernetes would; a clean exit is the
// only success.
func (t *tarnProc) stop() error {
	if t.client != nil {
		_ = t.client.Close()
	}
	select {
	case <-t.exited:
		return fmt.Errorf("tarn had already exited: %v", t.waitErr)
	default:
	}
	if err := t.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-t.exited:
	case <-time.After(stopTimeout):
		_ = t.cmd.Process.Kill()
		<-t.exited
		return fmt.Errorf("tarn ignored SIGTERM for %v and was killed", stopTimeout)
	}
	if t.waitErr != nil {
		return fmt.Errorf("tarn exited badly after SIGTERM: %v", t.waitErr)
	}
	return nil
}

// memory returns VmRSS and VmHWM (peak RSS) in bytes.
func (t *tarnProc) memory() (rss, hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", t.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse %s %q: %w", key, val, err)
		}
		if key == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc status")
	}
	return rss, hwm, sc.Err()
}

// logLine returns the first line of tarn's log containing all of words.
func (t *tarnProc) logLine(words ...string) string {
	data, err := os.ReadFile(t.logPath)
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			return line
		}
	}
	return ""
}

// tailError carries the end of tarn's log into an error, because the log
// itself goes with the run's temporary directory.
func (t *tarnProc) tailError() error {
	data, err := os.ReadFile(t.logPath)
	if err != nil || len(data) == 0 {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	lines = lines[max(0, len(lines)-15):]
	return fmt.Errorf("tarn log %s ends:\n  %s", t.logPath, strings.Join(lines, "\n  "))
}

// logValue reads key=value from a klog structured line, unquoting the
// value; "" when the key is absent.
func logValue(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}
