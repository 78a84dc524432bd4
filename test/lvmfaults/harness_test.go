package lvmfaults

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
	"github.com/tarn-csi/tarn/test/harness"
)

const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30

	// Small ext4 volumes keep the copies of thick snapshots and restores
	// short under emulation; 16 MiB is ext4's minimum.
	fsType    = "ext4"
	volSize   = 32 * MiB
	grownSize = 48 * MiB
	// A copy of inCopySize takes long enough to be killed in.
	inCopySize = 128 * MiB
	// The thin pool gets generous metadata, so that its capacity is
	// bound by the virtual sizes in it, which return exactly to what they
	// were when an object goes, rather than by metadata usage.
	poolName     = "faultpool"
	poolSize     = GiB
	poolMetadata = 16 * MiB

	nodeID = "lvmfaults-node"
	// callTimeout bounds every CSI call: under TCG an LVM command takes a
	// quarter to half a second, and a thick copy some seconds.
	callTimeout = 2 * time.Minute
	// readyTimeout bounds how long a started driver may take to answer
	// Probe (its start-up sweep runs LVM commands first).
	readyTimeout = time.Minute

	vgEnv     = "TARN_TEST_VG"
	binaryEnv = "TARN_TEST_FAULT_BINARY"
)

// Volume types, the "type" StorageClass parameter of the LVM backend.
const (
	thin  = "thin"
	thick = "thick"
)

// env is the volume group, a thin pool made for the test, the driver
// serving them and a client connected to it, and what the test knows
// should exist.
type env struct {
	t      *testing.T // the current (sub)test
	vg     string
	binary string
	work   string // staging paths live under it
	sock   string
	lvm    *lvmcmd.Client

	conn  *grpc.ClientConn
	ident csi.IdentityClient
	ctrl  csi.ControllerClient
	node  csi.NodeClient
	proc  *harness.Process

	// known are the objects (volume and snapshot IDs) that must exist,
	// complete, in the VG; staged maps the volumes the test keeps staged
	// to their staging paths. Every other Tarn LV is a leftover.
	known  map[string]bool
	staged map[string]string
	// settling is a volume being staged or unstaged by a call that a kill
	// cut short: until the retry, it may be active or not, mounted or not.
	settling string
	// took is the duration of the last successful call of each kind,
	// which sizes the window of random kills.
	took  map[string]time.Duration
	paths int
	// marks are the phases of the current run, for TARN_LVMFAULTS_TRACE.
	marks    []string
	lastMark time.Time
}

// mark records how long the phase that just ended took.
func (e *env) mark(phase string) {
	now := time.Now()
	if !e.lastMark.IsZero() {
		e.marks = append(e.marks, fmt.Sprintf("%s %.1fs", phase, now.Sub(e.lastMark).Seconds()))
	}
	e.lastMark = now
}

// trace logs the phases marked since the last trace.
func (e *env) trace() {
	if os.Getenv("TARN_LVMFAULTS_TRACE") != "" && len(e.marks) > 0 {
		var parts []string
		for _, m := range e.marks {
			if !strings.HasPrefix(m, "- 0.0") {
				parts = append(parts, m)
			}
		}
		e.t.Logf("phases: %s", strings.Join(parts, ", "))
	}
	e.marks, e.lastMark = nil, time.Now()
}

// newEnv makes the thin pool and the work directory; no driver runs yet.
// Everything is removed at cleanup, and anything the test left behind
// (mounts, frozen filesystems, Tarn LVs) fails it.
func newEnv(t *testing.T) *env {
	t.Helper()
	vg := os.Getenv(vgEnv)
	if vg == "" {
		t.Skipf("%s is not set: these tests need a scratch LVM volume group (run them in the test VM, test/vm)", vgEnv)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: LVM, mounts")
	}
	e := &env{t: t, vg: vg, binary: faultBinary(t, vg), lvm: lvmcmd.NewClient(nil, 0),
		known: map[string]bool{}, staged: map[string]string{}, took: map[string]time.Duration{}}
	// Not t.TempDir: its removal would run before the unmounts below
	// and reach into the staged filesystems.
	var err error
	if e.work, err = os.MkdirTemp("", "lvmfaults-"); err != nil {
		t.Fatal(err)
	}
	// A unix socket path must fit in 108 bytes.
	e.sock = filepath.Join(e.work, "csi.sock")
	t.Cleanup(e.teardown)
	// Started many times: from the guest's tmpfs, not over 9p.
	b, err := os.ReadFile(e.binary)
	if err != nil {
		t.Fatal(err)
	}
	e.binary = filepath.Join(e.work, "tarn")
	if err := os.WriteFile(e.binary, b, 0o755); err != nil {
		t.Fatal(err)
	}
	e.runLVM("lvcreate", "--yes", "--type", "thin-pool", "--size", strconv.FormatInt(poolSize, 10)+"b",
		"--poolmetadatasize", strconv.FormatInt(poolMetadata, 10)+"b", "--name", poolName, vg)
	return e
}

// faultBinary returns the faultinject build of tarn named by
// TARN_TEST_FAULT_BINARY, after checking that it is static (the guest
// runs what the host built) and that it can be armed.
func faultBinary(t *testing.T, vg string) string {
	t.Helper()
	path := os.Getenv(binaryEnv)
	if path == "" {
		t.Fatalf("%s is not set. Build the binary on the host and name it, e.g.\n"+
			"  CGO_ENABLED=0 go build -trimpath -tags faultinject -o _output/tarn-faultinject ./cmd/tarn\n"+
			"  export %s=$PWD/_output/tarn-faultinject", binaryEnv, binaryEnv)
	}
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s=%s: %v (the module directory is shared with the VM; is the binary under it?)", binaryEnv, path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	// A binary without the faultinject tag ignores the arming; one with
	// it refuses an unknown point before it opens anything.
	cmd := exec.Command(path, "serve", "--backend=lvm", "--volume-group="+vg, "--endpoint=unix:///nonexistent/csi.sock")
	cmd.Env = append(os.Environ(), "TARN_FAULT_POINT=lvmfaults.nowhere")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is not a fault point") {
		t.Fatalf("%s was not built with -tags faultinject (armed with an unknown point it said: %v\n%s)", path, err, out)
	}
	return path
}

// teardown stops the driver and removes whatever is left: mounts under
// the work directory (thawed first, or the unmount would hang), Tarn LVs,
// the thin pool. Leftovers of a passing test fail it.
func (e *env) teardown() {
	t := e.t
	if e.proc != nil && !e.proc.Exited() {
		e.proc.Terminate(t, time.Minute)
	}
	if e.conn != nil {
		_ = e.conn.Close()
	}
	mounts := mountsUnder(t, e.work)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if len(e.staged) == 0 && !t.Failed() {
			t.Errorf("left behind: mount on %s", m)
		}
		_ = exec.Command("fsfreeze", "-u", m).Run()
		if out, err := exec.Command("umount", m).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", m, err, out)
		}
	}
	ctx := context.Background()
	lvs, err := e.lvm.LVs(ctx, e.vg)
	if err != nil {
		t.Errorf("teardown: %v", err)
	}
	for _, lv := range lvs {
		if !lv.HasTag("tarn.owner") {
			continue
		}
		if !t.Failed() {
			t.Errorf("left behind: LV %s", lv.Name)
		}
		if err := e.lvm.Remove(ctx, e.vg, lv.Name); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	if out, err := exec.Command("lvm", "lvremove", "--yes", e.vg+"/"+poolName).CombinedOutput(); err != nil {
		t.Errorf("remove thin pool: %v: %s", err, out)
	}
	_ = os.RemoveAll(e.work)
}

// runLVM runs an LVM command the driver has no call for.
func (e *env) runLVM(args ...string) string {
	e.t.Helper()
	out, err := exec.Command("lvm", args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("lvm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// path returns a new path in the work directory, named after base.
func (e *env) path(base string) string {
	e.paths++
	return filepath.Join(e.work, fmt.Sprintf("%s-%d", base, e.paths))
}

// name returns a new CSI name.
func (e *env) name(base string) string { return filepath.Base(e.path(base)) }

// ---- the driver process ----------------------------------------------------

// serve starts `tarn serve` on the VG and the thin pool, with variables
// added to an environment stripped of fault injection settings. It runs
// in a process group of its own, so that LVM commands it leaves running
// when it is killed can be waited for (see kill).
func (e *env) serve(environ ...string) {
	t := e.t
	t.Helper()
	e.mark("-")
	defer e.mark("serve")
	if e.proc != nil && !e.proc.Exited() {
		t.Fatal("serve: the previous tarn process is still running")
	}
	cmd := exec.Command(e.binary, "serve", "--backend=lvm", "--volume-group="+e.vg, "--thin-pool="+poolName,
		"--endpoint=unix://"+e.sock, "--node-id="+nodeID, "--kubelet-dir="+e.work, "-v=2")
	cmd.Dir = e.work
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, err := harness.Start(cmd, environ...)
	if err != nil {
		t.Fatalf("start %s: %v", e.binary, err)
	}
	e.proc = p
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output of tarn serve (pid %d, last 60 lines):\n%s", p.Pid(), tail(p.Out.Since(0), 60))
		}
	})
	if e.conn == nil {
		e.dial()
		return
	}
	if err := e.probe(); err != nil {
		state := "still running"
		if p.Exited() {
			state = fmt.Sprintf("exited: %v", p.Err())
		}
		t.Fatalf("tarn serve (pid %d, %s) not ready: %v", p.Pid(), state, err)
	}
}

// dial connects to the driver's socket; the connection outlives restarts
// of the driver on the same socket.
func (e *env) dial() {
	t := e.t
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
	e.conn = conn
	e.ident, e.ctrl, e.node = csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	if err := e.probe(); err != nil {
		t.Fatalf("driver on %s not ready: %v", e.sock, err)
	}
}

// probe waits until Probe answers ready. Right after a kill the client
// may not have noticed that its connection died, and a Probe on it fails
// with Unavailable instead of waiting: that is retried.
func (e *env) probe() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		resp, err := e.ident.Probe(ctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
		switch {
		case err == nil && !resp.GetReady().GetValue():
			return errors.New("Probe answered ready=false")
		case status.Code(err) == codes.Unavailable && ctx.Err() == nil && !e.proc.Exited():
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return err
	}
}

// kill SIGKILLs the driver, and only it, as the kernel's OOM killer
// would; then it waits for what the driver had started (an LVM command
// runs to its end: LVM blocks signals while it holds a VG lock) before
// the next driver starts.
func (e *env) kill() {
	t := e.t
	t.Helper()
	e.proc.Kill(t, 30*time.Second)
	e.waitOrphans()
}

// waitOrphans waits until no process is left in the dead driver's process
// group, and reports what was (its LVM or filesystem commands).
func (e *env) waitOrphans() {
	t := e.t
	t.Helper()
	pgid := e.proc.Pid()
	deadline := time.Now().Add(2 * time.Minute)
	var seen []string
	for {
		left := processesInGroup(pgid)
		for _, c := range left {
			if !slices.Contains(seen, c) {
				seen = append(seen, c)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("commands started by the killed driver still run after 2 minutes: %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(seen) > 0 {
		t.Logf("waited for what the killed driver had started: %v", seen)
	}
	e.mark("orphans")
}

// processesInGroup lists the live (not zombie) processes of a process
// group, as "pid:command".
func processesInGroup(pgid int) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", en.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) < 3 || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(fields[2]); g == pgid {
			comm := s[strings.IndexByte(s, '(')+1 : i]
			out = append(out, fmt.Sprintf("%d:%s", pid, comm))
		}
	}
	return out
}

// ---- CSI calls ---------------------------------------------------------------

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

// call makes one CSI call, remembering how long it took when it succeeded.
func (e *env) call(kind string, f func(ctx context.Context) error) error {
	ctx, cancel := callCtx()
	defer cancel()
	e.mark("-")
	start := time.Now()
	err := f(ctx)
	if err == nil {
		e.took[kind] = time.Since(start)
	}
	e.mark(kind)
	return err
}

// must makes a call that has to succeed.
func (e *env) must(kind, what string, f func(ctx context.Context) error) {
	e.t.Helper()
	if err := e.call(kind, f); err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// retry repeats a call as the sidecars do, until it succeeds, for up to two
// minutes. It returns the answers other than the driver being away or
// busy that came before the success: after a restart there should be none.
func (e *env) retry(kind, what string, f func(ctx context.Context) error) []string {
	e.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var errs []string
	for {
		err := e.call(kind, f)
		if err == nil {
			return errs
		}
		if code := status.Code(err); code != codes.Unavailable && code != codes.Aborted {
			errs = append(errs, err.Error())
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s never succeeded after the restart: %v (earlier errors: %q)", what, err, errs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mountCapability() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func params(typ string) map[string]string { return map[string]string{"type": typ, "fsType": fsType} }

func volumeRequest(name, typ string, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:                name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: volSize},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCapability()},
		Parameters:          params(typ),
		VolumeContentSource: src,
	}
}

// createVolumeCall is CreateVolume as a retryable call, checking the answer.
func (e *env) createVolumeCall(req *csi.CreateVolumeRequest) func(ctx context.Context) error {
	id := backend.VolumeIDFor(req.GetName())
	return func(ctx context.Context) error {
		resp, err := e.ctrl.CreateVolume(ctx, req)
		if err == nil {
			v := resp.GetVolume()
			if v.GetVolumeId() != id || v.GetCapacityBytes() < req.GetCapacityRange().GetRequiredBytes() ||
				v.GetContentSource().GetSnapshot().GetSnapshotId() != req.GetVolumeContentSource().GetSnapshot().GetSnapshotId() {
				e.t.Errorf("CreateVolume %s answered %v", req.GetName(), v)
			}
		}
		return err
	}
}

func (e *env) createSnapshotCall(name, src string) func(ctx context.Context) error {
	id := backend.SnapshotIDFor(name)
	return func(ctx context.Context) error {
		resp, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src})
		if s := resp.GetSnapshot(); err == nil && (s.GetSnapshotId() != id || s.GetSourceVolumeId() != src || !s.GetReadyToUse()) {
			e.t.Errorf("CreateSnapshot %s answered %v", name, s)
		}
		return err
	}
}

func (e *env) deleteVolumeCall(id string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	}
}

func (e *env) deleteSnapshotCall(id string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		return err
	}
}

func (e *env) expandCall(id string, size int64) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		resp, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: mountCapability()})
		if err == nil && (resp.GetCapacityBytes() < size || !resp.GetNodeExpansionRequired()) {
			e.t.Errorf("ControllerExpandVolume %s answered %v", id, resp)
		}
		return err
	}
}

// createVolume makes a volume of the type, from a snapshot when src is set.
func (e *env) createVolume(name, typ string, src string) string {
	e.t.Helper()
	req := volumeRequest(name, typ, nil)
	kind := "create"
	if src != "" {
		req.VolumeContentSource, kind = fromSnapshot(src), "restore"
	}
	e.must(kind, "CreateVolume "+name, e.createVolumeCall(req))
	id := backend.VolumeIDFor(name)
	e.known[id] = true
	return id
}

func (e *env) createSnapshot(name, src string) string {
	e.t.Helper()
	e.must("snapshot", "CreateSnapshot "+name, e.createSnapshotCall(name, src))
	id := backend.SnapshotIDFor(name)
	e.known[id] = true
	return id
}

func (e *env) deleteVolume(id string) {
	e.t.Helper()
	e.must("delete-volume", "DeleteVolume "+id, e.deleteVolumeCall(id))
	delete(e.known, id)
}

func (e *env) deleteSnapshot(id string) {
	e.t.Helper()
	e.must("delete-snapshot", "DeleteSnapshot "+id, e.deleteSnapshotCall(id))
	delete(e.known, id)
}

func (e *env) stage(id, staging string) {
	e.t.Helper()
	e.must("stage", "NodeStageVolume "+id, func(ctx context.Context) error {
		_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			VolumeCapability: mountCapability()})
		return err
	})
}

func (e *env) unstage(id, staging string) {
	e.t.Helper()
	e.must("unstage", "NodeUnstageVolume "+id, func(ctx context.Context) error {
		_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		return err
	})
	if m := mountsUnder(e.t, staging); len(m) > 0 {
		e.t.Errorf("volume %s still mounted at %v after NodeUnstageVolume", id, m)
	}
}

// ---- data ----------------------------------------------------------------------

// files maps the names of files in a volume's filesystem to their SHA-256.
type files map[string]string

func (f files) with(name, sum string) files {
	out := files{name: sum}
	for k, v := range f {
		out[k] = v
	}
	return out
}

// writeRandom writes size random bytes to path, syncs them, and returns
// their SHA-256.
func writeRandom(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), crand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sha256Of(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Errorf("%v", err)
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Errorf("read %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// verifyVolume stages a volume, checks its files and that its ext4 spans
// the whole LV (a stage grows a filesystem restored or expanded into a
// larger volume), and unstages it, which must deactivate its LV.
func (e *env) verifyVolume(id string, want files) {
	t := e.t
	t.Helper()
	staging := e.path("verify")
	e.stage(id, staging)
	for name, sum := range want {
		if got := sha256Of(t, filepath.Join(staging, name)); got != sum {
			t.Errorf("volume %s: %s has sha256 %s, want %s", id, name, got, sum)
		}
	}
	lv, err := e.lvm.LV(context.Background(), e.vg, id)
	if err != nil {
		t.Fatal(err)
	}
	if fs := ext4Size(t, lvmcmd.DevicePath(e.vg, id)); fs != lv.Size {
		t.Errorf("volume %s of %d bytes holds an ext4 of %d: it was not grown", id, lv.Size, fs)
	}
	e.unstage(id, staging)
	if lv, err := e.lvm.LV(context.Background(), e.vg, id); err != nil || lv.Active {
		t.Errorf("volume %s after NodeUnstageVolume: %+v, %v; want its LV inactive", id, lv, err)
	}
}

// verifySnapshot restores a snapshot into a new volume of the snapshot's
// type and verifies that.
func (e *env) verifySnapshot(id, typ string, want files) {
	e.t.Helper()
	restored := e.createVolume(e.name("verify-restore"), typ, id)
	e.verifyVolume(restored, want)
	e.deleteVolume(restored)
}

// ext4Size is the size of the ext4 on dev, as its superblock says.
func ext4Size(t *testing.T, dev string) int64 {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", dev).Output()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v", dev, err)
	}
	var count, size int64
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "Block count":
			count = n
		case "Block size":
			size = n
		}
	}
	return count * size
}

// startWrite creates and fsyncs a file in dir in the background; the
// channel yields the result. On a frozen filesystem it blocks until thawed.
func startWrite(dir string) <-chan error {
	done := make(chan error, 1)
	go func() {
		f, err := os.CreateTemp(dir, "write-")
		if err != nil {
			done <- err
			return
		}
		_, err = f.Write([]byte("written after a kill"))
		err = errors.Join(err, f.Sync(), f.Close(), os.Remove(f.Name()))
		done <- err
	}()
	return done
}

// ---- what the VG holds -----------------------------------------------------------

// state describes an object's LV right after a kill: absent, or
// incomplete/complete and active/inactive.
func (e *env) state(id string) string {
	e.t.Helper()
	lv, err := e.lvm.LV(context.Background(), e.vg, id)
	if errors.Is(err, backend.ErrNotFound) {
		return "absent"
	}
	if err != nil {
		e.t.Fatal(err)
	}
	s := "incomplete"
	if lv.HasTag("tarn.complete") {
		s = "complete"
	}
	if lv.Active {
		return s + ", active"
	}
	return s + ", inactive"
}

// checkVG checks what a (restarted) driver must have made of the VG, and
// returns the capacity it reports for thin and thick volumes:
//   - every Tarn LV is complete and one of the known objects, and every
//     known object is there: nothing half-made is left, nothing whole lost;
//   - snapshots are inactive, and volumes active only while staged;
//   - the only mounts under the work directory are the staged volumes';
//
// and when full is set (after a restart; the lighter check ends each run):
//   - ListVolumes and ListSnapshots show exactly the known objects;
//   - GetCapacity is what the VG and the pool give (see wantCapacity);
//   - the staged volumes' filesystems take writes (none is left frozen).
func (e *env) checkVG(full bool) (thinCap, thickCap int64) {
	t := e.t
	t.Helper()
	e.mark("-")
	defer e.mark("checkVG")
	ctx := context.Background()
	var vg lvmcmd.VG
	var err error
	if full {
		if vg, err = e.lvm.VG(ctx, e.vg); err != nil {
			t.Fatal(err)
		}
	}
	lvs, err := e.lvm.LVs(ctx, e.vg)
	if err != nil {
		t.Fatal(err)
	}
	var vols, snaps []string
	for _, lv := range lvs {
		if lv.Name == poolName {
			continue
		}
		switch {
		case !lv.HasTag("tarn.owner"):
			t.Errorf("LV %s in the VG is not Tarn's", lv.Name)
		case !lv.HasTag("tarn.complete"):
			t.Errorf("incomplete LV %s is left in the VG (%s)", lv.Name, e.state(lv.Name))
		case !e.known[lv.Name]:
			t.Errorf("LV %s is in the VG, but it was deleted or never made", lv.Name)
		}
		_, staged := e.staged[lv.Name]
		switch {
		case backend.ValidSnapshotID(lv.Name) && lv.Active:
			t.Errorf("snapshot LV %s is active", lv.Name)
		case backend.ValidVolumeID(lv.Name) && lv.Name != e.settling && lv.Active != staged:
			t.Errorf("volume LV %s: active %v, staged %v", lv.Name, lv.Active, staged)
		}
		if backend.ValidSnapshotID(lv.Name) {
			snaps = append(snaps, lv.Name)
		} else {
			vols = append(vols, lv.Name)
		}
	}
	for id := range e.known {
		if !slices.Contains(vols, id) && !slices.Contains(snaps, id) {
			t.Errorf("%s is missing from the VG", id)
		}
	}
	sort.Strings(vols)
	sort.Strings(snaps)

	var stagedPaths, mounts []string
	for id, p := range e.staged {
		if id != e.settling {
			stagedPaths = append(stagedPaths, p)
		}
	}
	sort.Strings(stagedPaths)
	for _, m := range mountsUnder(t, e.work) {
		if m != e.staged[e.settling] {
			mounts = append(mounts, m)
		}
	}
	if !slices.Equal(mounts, stagedPaths) {
		t.Errorf("mounts under the work directory: %v, want only the staged volumes' %v", mounts, stagedPaths)
	}

	thinCap, thickCap = e.capacity(thin), e.capacity(thick)
	if !full {
		return thinCap, thickCap
	}
	if want := wantCapacity(vg, lvs, thin); thinCap != want {
		t.Errorf("GetCapacity for thin volumes: %d bytes; the pool gives %d", thinCap, want)
	}
	if want := wantCapacity(vg, lvs, thick); thickCap != want {
		t.Errorf("GetCapacity for thick volumes: %d bytes; the VG has %d free", thickCap, want)
	}

	cctx, cancel := callCtx()
	defer cancel()
	vresp, err := e.ctrl.ListVolumes(cctx, &csi.ListVolumesRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("ListVolumes: %v", err)
	}
	var listed []string
	for _, v := range vresp.GetEntries() {
		listed = append(listed, v.GetVolume().GetVolumeId())
	}
	sort.Strings(listed)
	if !slices.Equal(listed, vols) {
		t.Errorf("ListVolumes: %v, but the VG holds the volumes %v", listed, vols)
	}
	sresp, err := e.ctrl.ListSnapshots(cctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatalf("ListSnapshots: %v", err)
	}
	listed = listed[:0]
	for _, s := range sresp.GetEntries() {
		listed = append(listed, s.GetSnapshot().GetSnapshotId())
	}
	sort.Strings(listed)
	if !slices.Equal(listed, snaps) {
		t.Errorf("ListSnapshots: %v, but the VG holds the snapshots %v", listed, snaps)
	}

	for id, p := range e.staged {
		if id == e.settling {
			continue
		}
		select {
		case err := <-startWrite(p):
			if err != nil {
				t.Errorf("write to staged volume %s: %v", id, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("staged volume %s at %s is still frozen: a write has blocked for 30s", id, p)
		}
	}
	return thinCap, thickCap
}

func (e *env) capacity(typ string) int64 {
	e.t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := e.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"type": typ}})
	if err != nil {
		e.t.Fatalf("GetCapacity for %s volumes: %v", typ, err)
	}
	return resp.GetAvailableCapacity()
}

// wantCapacity is what the README promises, from LVM's own report: for
// thick volumes the VG's free extents; for thin ones (over-provisioning
// ratio 1) the pool's size less the virtual sizes of its thin LVs, and no
// more than its unused data and metadata shares, in whole extents.
func wantCapacity(vg lvmcmd.VG, lvs []lvmcmd.LV, typ string) int64 {
	if typ == thick {
		return vg.FreeCount * vg.ExtentSize
	}
	var pool lvmcmd.LV
	var virtual int64
	for _, lv := range lvs {
		switch {
		case lv.Name == poolName:
			pool = lv
		case lv.IsThin() && lv.Pool == poolName:
			virtual += lv.Size
		}
	}
	share := func(pct float64) int64 { return int64(math.Floor(float64(pool.Size) * (1 - pct/100))) }
	avail := min(pool.Size-virtual, share(pool.DataPercent), share(pool.MetadataPercent))
	return max(avail, 0) / vg.ExtentSize * vg.ExtentSize
}

// mountsUnder lists the mountpoints below dir, sorted.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatalf("read mount table: %v", err)
	}
	var out []string
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	sort.Strings(out)
	return out
}

// holdsOpen says whether process pid has the block device dev open.
func holdsOpen(pid int, dev string) bool {
	var want syscall.Stat_t
	if syscall.Stat(dev, &want) != nil {
		return false
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(dir, en.Name()), &st) == nil &&
			st.Mode&syscall.S_IFMT == syscall.S_IFBLK && st.Rdev == want.Rdev {
			return true
		}
	}
	return false
}

// ---- logs --------------------------------------------------------------------

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
