package reliability

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/backend/loop"
	"github.com/tarn-csi/tarn/pkg/driver"
	"github.com/tarn-csi/tarn/pkg/metrics"
	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

const (
	nodeID = "reliability-node"
	MiB    = int64(1) << 20
	GiB    = int64(1) << 30

	// Volumes are xfs: growing a mounted ext4 needs CAP_SYS_RESOURCE,
	// which some sandboxes withhold even from root, and staging a volume
	// expanded while unstaged grows its filesystem online. 300 MiB is
	// mkfs.xfs's minimum; the files are sparse, so size costs nothing.
	fsType  = "xfs"
	volSize = 320 * MiB

	// callTimeout bounds every CSI call: a call that has not returned by
	// then is taken for a deadlock. The slowest calls (mkfs, a staged
	// restore's XFS log replay) take a second or two on a busy machine.
	callTimeout = 60 * time.Second
	// readyTimeout bounds how long a started driver may take to answer
	// Probe.
	readyTimeout = 20 * time.Second
	// killWait and terminateWait bound how long the driver may take to
	// die of SIGKILL and to stop on SIGTERM.
	killWait      = 10 * time.Second
	terminateWait = 30 * time.Second
)

// env is one pool, the driver serving it, and a client connected to it.
type env struct {
	work    string // staging and target paths live under it
	sock    string
	poolMnt string // the pool filesystem's mountpoint
	pool    string // the driver's pool directory inside it

	conn  *grpc.ClientConn
	ident csi.IdentityClient
	ctrl  csi.ControllerClient
	node  csi.NodeClient

	// proc is the current `tarn serve`, nil for an in-process driver.
	proc *harness.Process
	// binary is what serve runs; "" means tarnBinary.
	binary string
}

// newEnv makes an XFS reflink pool of size bytes (a sparse image); no
// driver serves it yet. Cleanups run in this order: driver, leftover
// sweep, pool, work directory.
func newEnv(t *testing.T, size int64) *env {
	t.Helper()
	showDriverLogOnFailure(t)
	work := t.TempDir()
	// A unix socket path must fit in 108 bytes, which a t.TempDir named
	// after a subtest can exceed.
	sockDir, err := os.MkdirTemp("", "s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	poolMnt := testpool.New(t, testpool.XFSReflink, size)
	e := &env{work: work, sock: filepath.Join(sockDir, "csi.sock"), poolMnt: poolMnt, pool: filepath.Join(poolMnt, "pool")}
	if err := os.Mkdir(e.pool, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.sweepLeftovers(t) })
	return e
}

// startInProcess serves the pool with a driver in this process, its calls
// recorded by m when m is not nil. The returned stop function stops the
// driver and closes the client (idempotent; also a cleanup), so that a
// test can count goroutines and descriptors afterwards.
func (e *env) startInProcess(t *testing.T, withMetrics bool) (m *metrics.Metrics, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := loop.Config{PoolDir: e.pool, DirectIO: true}
	if withMetrics {
		// Before the pool opens, so that its start-up sweep is counted.
		m = metrics.New(metrics.Options{})
		cfg.Metrics = m
	}
	b, err := loop.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("open pool: %v", err)
	}
	if withMetrics {
		if err := m.RegisterPool(b); err != nil {
			cancel()
			t.Fatal(err)
		}
	}
	d, err := driver.New(driver.Config{Endpoint: "unix://" + e.sock, NodeID: nodeID, Version: "reliability", Backend: b, Metrics: m, KubeletDir: e.work})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		if e.conn != nil {
			_ = e.conn.Close()
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("driver stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("driver did not stop within 30s")
		}
	}
	t.Cleanup(stop)
	e.dial(t)
	return m, stop
}

// dial connects to the driver's socket and waits until it is ready. The
// connection outlives restarts of the driver on the same socket; the short
// backoff keeps a reconnection from costing seconds.
func (e *env) dial(t *testing.T) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+e.sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: 5 * time.Second,
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.conn = conn
	e.ident, e.ctrl, e.node = csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	e.waitReady(t)
}

func (e *env) waitReady(t *testing.T) {
	t.Helper()
	if err := e.probe(); err != nil {
		t.Fatalf("driver on %s not ready: %v", e.sock, err)
	}
}

// probe waits until Probe answers ready. Right after a kill the client
// may not have noticed yet that its connection died, and a Probe sent on
// it fails with Unavailable (EOF) instead of waiting: that is retried.
func (e *env) probe() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		resp, err := e.ident.Probe(ctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
		switch {
		case err == nil && !resp.GetReady().GetValue():
			return errors.New("Probe answered ready=false")
		case status.Code(err) == codes.Unavailable && ctx.Err() == nil:
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return err
	}
}

// serve starts `tarn serve` on the env's pool and socket, the first time or
// after the previous process died; dir is its working directory.
func (e *env) serve(t *testing.T, dir string) {
	t.Helper()
	e.serveWith(t, dir)
}

// serveWith is serve with variables added to the environment, which is
// otherwise this process's without any fault injection setting.
func (e *env) serveWith(t *testing.T, dir string, environ ...string) {
	t.Helper()
	first := e.proc == nil
	if !first && !e.proc.Exited() {
		t.Fatal("serve: the previous tarn process is still running")
	}
	binary := e.binary
	if binary == "" {
		binary = tarnBinary
	}
	cmd := exec.Command(binary, "serve", "--endpoint=unix://"+e.sock, "--node-id="+nodeID,
		"--pool-dir="+e.pool, "--kubelet-dir="+e.work, "-v=2")
	cmd.Dir = dir
	p, err := harness.Start(cmd, environ...)
	if err != nil {
		t.Fatalf("start %s: %v", binary, err)
	}
	e.proc = p
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output of tarn serve (pid %d, last 100 lines):\n%s", p.Pid(), tail(p.Out.Since(0), 100))
			keepLog(t, fmt.Sprintf("tarn-serve-%d.log", p.Pid()), p.Out.Since(0))
		}
	})
	if !first {
		if err := e.probe(); err != nil {
			state := "still running"
			if p.Exited() {
				state = fmt.Sprintf("exited: %v", p.Err())
			}
			t.Fatalf("restarted tarn serve (pid %d, %s) not ready: %v", p.Pid(), state, err)
		}
		return
	}
	// One cleanup stops whichever process is current by then, after the
	// test's own cleanups have used it.
	t.Cleanup(func() { e.proc.Terminate(t, terminateWait) })
	e.dial(t)
}

// sweepLeftovers fails the test for every mount under the work directory
// and every loop device backed by the pool still there once the driver
// stopped, and removes them so that the pool can be unmounted.
func (e *env) sweepLeftovers(t *testing.T) {
	mounts := mountsUnder(t, e.work)
	// Deepest first, so that no mount is removed from under another.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		t.Errorf("left behind: mount on %s", m)
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", m, err)
		}
	}
	for dev, file := range loopsUnder(t, e.pool) {
		t.Errorf("left behind: loop device %s backed by %s", dev, file)
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	}
}

// mountsUnder lists the mountpoints at or below dir.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatalf("read mount table: %v", err)
	}
	out := make([]string, 0, len(infos))
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	return out
}

// loopsUnder maps each loop device whose backing file lies below dir to
// that file (with the kernel's " (deleted)" suffix when it is gone). It
// reads sysfs itself rather than through testpool, because a device being
// detached by another client at that instant answers ENODEV, which must
// count as gone here and not fail the test.
func loopsUnder(t testing.TB, dir string) map[string]string {
	t.Helper()
	paths, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range paths {
		file, err := readBackingFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(file, dir+"/") {
			out["/dev/"+filepath.Base(filepath.Dir(filepath.Dir(p)))] = file
		}
	}
	return out
}

// readBackingFile reads a loop device's sysfs backing_file; "" when the
// device was detached meanwhile.
func readBackingFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENXIO) {
		return "", nil
	}
	return strings.TrimSpace(string(b)), err
}

// backingFileOfMount returns the backing file of the loop device whose
// filesystem is mounted at path, "" when nothing is mounted there (or no
// longer is).
func backingFileOfMount(path string) (string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil || len(infos) == 0 {
		return "", err
	}
	src := infos[len(infos)-1].Source
	if !strings.HasPrefix(src, "/dev/loop") {
		return "", fmt.Errorf("%s is mounted from %s, which is not a loop device", path, src)
	}
	return readBackingFile(filepath.Join("/sys/block", filepath.Base(src), "loop", "backing_file"))
}

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	// ReadDir's own descriptor is closed again by now but was listed.
	return len(entries) - 1
}

// goroutineDump returns every goroutine's stack, to show where a call
// that never returned is stuck.
func goroutineDump() string {
	buf := make([]byte, 8<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// ctx returns a context bounded by callTimeout.
func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

// mountCapability is a filesystem capability with access mode mode.
func mountCapability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

// poolEntries lists the names in a directory of the pool.
func (e *env) poolEntries(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.pool, dir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	names := make([]string, 0, len(entries))
	for _, en := range entries {
		names = append(names, en.Name())
	}
	sort.Strings(names)
	return names
}

func (e *env) volumeFile(id string) string { return filepath.Join(e.pool, "volumes", id, "data.img") }

// scrapeMetrics fetches and parses a Prometheus endpoint.
func scrapeMetrics(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	f, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return f
}

// hasCapSysResource says whether this process may grow a mounted ext4
// (CAP_SYS_RESOURCE, bit 24 of the effective set).
func hasCapSysResource(t testing.TB) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && v&(1<<24) != 0
		}
	}
	return false
}
