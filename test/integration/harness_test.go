package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/atomicfile"
	"github.com/tarn-csi/tarn/pkg/backend/loop"
	"github.com/tarn-csi/tarn/pkg/driver"
	"github.com/tarn-csi/tarn/test/harness"
	"github.com/tarn-csi/tarn/test/testpool"
)

const (
	// nodeID is the node every driver of these tests serves.
	nodeID = "integration-node"
	// callTimeout bounds one CSI call; the slowest ones (mkfs at the first
	// stage, a snapshot copy on a pool without reflinks) take seconds.
	callTimeout = 60 * time.Second
	// readyTimeout bounds how long a driver may take to answer Probe after
	// it was started.
	readyTimeout = 15 * time.Second

	// MiB and GiB keep sizes readable.
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)

// env is one pool and the driver serving it, reached through its socket.
// Helpers take the *testing.T of the (sub)test they work for, so that
// subtests can share an env while their volumes are cleaned up with them.
type env struct {
	work    string // staging and target paths live here
	sock    string
	poolMnt string // the pool filesystem's mountpoint
	pool    string // the driver's pool directory inside it

	ident csi.IdentityClient
	ctrl  csi.ControllerClient
	node  csi.NodeClient

	// proc is the current `tarn serve` process, nil for an in-process
	// driver.
	proc *harness.Process
	// paths numbers the staging/target directories handed out.
	paths int
}

// newEnv makes a fresh pool of kind; no driver serves it yet.
func newEnv(t *testing.T, kind testpool.Kind, size int64) *env {
	t.Helper()
	showDriverLogOnFailure(t)
	// Created before the pool so that its removal comes last, once no
	// mount is left under it.
	work := t.TempDir()
	// A unix socket path is limited to 108 bytes, which a t.TempDir named
	// after a subtest can exceed; TMPDIR is already private to this run.
	sockDir, err := os.MkdirTemp("", "s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	poolMnt := testpool.New(t, kind, size)
	pool := filepath.Join(poolMnt, "pool")
	if err := os.Mkdir(pool, 0o700); err != nil {
		t.Fatal(err)
	}
	e := &env{work: work, sock: filepath.Join(sockDir, "csi.sock"), poolMnt: poolMnt, pool: pool}
	// Registered before the driver starts, so it runs after the driver
	// stopped and before the pool is unmounted.
	t.Cleanup(func() { e.sweepLeftovers(t) })
	return e
}

// startInProcess makes a pool and serves it with a driver running in this
// process, the way the sanity suite does.
func startInProcess(t *testing.T, kind testpool.Kind, size int64) *env {
	t.Helper()
	e := newEnv(t, kind, size)
	ctx, cancel := context.WithCancel(context.Background())
	b, err := loop.New(ctx, loop.Config{PoolDir: e.pool, DirectIO: true})
	if err != nil {
		cancel()
		t.Fatalf("open pool: %v", err)
	}
	d, err := driver.New(driver.Config{Endpoint: "unix://" + e.sock, NodeID: nodeID, Version: "integration", Backend: b, KubeletDir: e.work})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("driver stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("driver did not stop within 30s")
		}
	})
	e.dial(t)
	return e
}

// dial connects to the driver's socket and waits until it is ready. The
// connection survives driver restarts on the same socket: gRPC reconnects,
// and the short backoff keeps that from adding seconds to a test.
func (e *env) dial(t *testing.T) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+e.sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: 5 * time.Second,
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.ident = csi.NewIdentityClient(conn)
	e.ctrl = csi.NewControllerClient(conn)
	e.node = csi.NewNodeClient(conn)
	e.waitReady(t)
}

// waitReady waits until Probe says ready.
func (e *env) waitReady(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	resp, err := e.ident.Probe(ctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("driver on %s not ready: %v", e.sock, err)
	}
	if !resp.GetReady().GetValue() {
		t.Fatalf("driver on %s answered Probe with ready=false", e.sock)
	}
}

// sweepLeftovers fails the test for every mount under its work directory
// and every loop device backed by its pool that is still there once the
// driver stopped, and removes them so that the pool can be unmounted and
// the next test starts clean. Tests that unstage explicitly check this
// themselves; this catches the rest. It also fails the test for anything
// left in the pool's internal directories (see checkPoolInternals).
func (e *env) sweepLeftovers(t *testing.T) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(e.work))
	if err != nil {
		t.Errorf("read mount table: %v", err)
	}
	// Deepest first, so that a mount is never removed before one on it.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	for _, m := range mounts {
		t.Errorf("left behind: %s mounted on %s", m.Source, m.Mountpoint)
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", m.Mountpoint, err)
		}
	}
	for dev, file := range loopDevicesUnder(t, e.pool) {
		t.Errorf("left behind: loop device %s backed by %s", dev, file)
		if out, err := runCmd("losetup", "-d", dev); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	}
	// Last: it may stop this cleanup, which must not keep the above from
	// running.
	e.checkPoolInternals(t)
}

// checkPoolInternals fails the test for what a finished call must never
// leave in the pool: entries of .staging (objects being built) or .trash
// (objects being deleted), and temporary files of an atomic record write
// (atomicfile.TempPrefix) in the pool or in any object directory. The
// driver sweeps these at its next start, but a call that returned must not
// need that sweep. Nothing is removed: the pool goes with the test.
func (e *env) checkPoolInternals(t *testing.T) {
	if _, err := os.Stat(e.pool); errors.Is(err, os.ErrNotExist) {
		return
	}
	for _, dir := range []string{".staging", ".trash"} {
		if left := e.poolEntries(t, dir); len(left) > 0 {
			t.Errorf("left behind in pool/%s: %v", dir, left)
		}
	}
	for _, pattern := range []string{"", "*", "*/*"} {
		matches, err := filepath.Glob(filepath.Join(e.pool, pattern, atomicfile.TempPrefix+"*"))
		if err != nil {
			t.Errorf("glob pool temporary files: %v", err)
		}
		for _, m := range matches {
			t.Errorf("left behind: temporary file %s", m)
		}
	}
}

func (e *env) volumeFile(id string) string {
	return filepath.Join(e.pool, "volumes", id, "data.img")
}

func (e *env) snapshotFile(id string) string {
	return filepath.Join(e.pool, "snapshots", id, "data.img")
}

// capability returns a single-node-writer capability: a filesystem of
// fsType, or raw block access when fsType is "".
func capability(fsType string) *csi.VolumeCapability {
	c := &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	if fsType == "" {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}}
	}
	return c
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

// volumeRequest asks for a volume of exactly size bytes.
func volumeRequest(name, fsType string, size int64, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:                name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities:  []*csi.VolumeCapability{capability(fsType)},
		VolumeContentSource: src,
	}
}

// tryCreateVolume sends req as is; a volume it creates is deleted when the
// test ends.
func (e *env) tryCreateVolume(t *testing.T, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := e.ctrl.CreateVolume(ctx, req)
	if err == nil {
		id := resp.GetVolume().GetVolumeId()
		t.Cleanup(func() { e.deleteVolumeAtEnd(t, id) })
	}
	return resp, err
}

// createVolume creates a volume (fsType "" for raw block) or fails the test.
func (e *env) createVolume(t *testing.T, name, fsType string, size int64, src *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	resp, err := e.tryCreateVolume(t, volumeRequest(name, fsType, size, src))
	if err != nil {
		t.Fatalf("CreateVolume %q: %v", name, err)
	}
	if got := resp.GetVolume().GetCapacityBytes(); got < size {
		t.Fatalf("CreateVolume %q: capacity %d, asked for %d", name, got, size)
	}
	return resp.GetVolume()
}

func (e *env) deleteVolumeAtEnd(t *testing.T, id string) {
	ctx, cancel := callCtx()
	defer cancel()
	if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("cleanup: DeleteVolume %s: %v", id, err)
	}
}

// createSnapshot snapshots a volume or fails the test; the snapshot is
// deleted when the test ends.
func (e *env) createSnapshot(t *testing.T, name, volID string) *csi.Snapshot {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volID})
	if err != nil {
		t.Fatalf("CreateSnapshot %q of %s: %v", name, volID, err)
	}
	snap := resp.GetSnapshot()
	if !snap.GetReadyToUse() || snap.GetSourceVolumeId() != volID {
		t.Fatalf("CreateSnapshot %q: got %v, want a ready snapshot of %s", name, snap, volID)
	}
	t.Cleanup(func() {
		ctx, cancel := callCtx()
		defer cancel()
		if _, err := e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err != nil {
			t.Errorf("cleanup: DeleteSnapshot %s: %v", snap.GetSnapshotId(), err)
		}
	})
	return snap
}

// attachment is a volume as a CO uses it on the node.
type attachment struct {
	volID   string
	fsType  string // "" for raw block
	staging string
	target  string // the published file system or device file
	// cap, when set, is sent instead of capability(fsType), e.g. to pass
	// mount flags.
	cap *csi.VolumeCapability
	// readonly is the publish request's readonly flag.
	readonly bool
}

func (a attachment) path(name string) string { return filepath.Join(a.target, name) }

// capability is what stage and publish send for a.
func (a attachment) capability() *csi.VolumeCapability {
	if a.cap != nil {
		return a.cap
	}
	return capability(a.fsType)
}

// stage runs NodeStageVolume on fresh paths or fails the test;
// NodeUnstageVolume follows at the end of the test.
func (e *env) stage(t *testing.T, volID, fsType string) attachment {
	t.Helper()
	a, err := e.tryStage(t, volID, fsType)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// tryStage is stage for a call that may fail. The unstage at the end of the
// test is registered either way, since a failed stage must leave nothing
// that an unstage would not clear.
func (e *env) tryStage(t *testing.T, volID, fsType string) (attachment, error) {
	t.Helper()
	return e.tryStageWith(t, volID, fsType, nil)
}

// stageWith is stage with capability c (nil: capability(fsType)), which
// publish then sends too unless the attachment's cap is changed.
func (e *env) stageWith(t *testing.T, volID, fsType string, c *csi.VolumeCapability) attachment {
	t.Helper()
	a, err := e.tryStageWith(t, volID, fsType, c)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (e *env) tryStageWith(t *testing.T, volID, fsType string, c *csi.VolumeCapability) (attachment, error) {
	t.Helper()
	e.paths++
	dir := filepath.Join(e.work, fmt.Sprintf("v%d", e.paths))
	a := attachment{volID: volID, fsType: fsType, staging: filepath.Join(dir, "staging"), target: filepath.Join(dir, "target"), cap: c}
	t.Cleanup(func() {
		if err := e.tryUnstage(a); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ctx, cancel := callCtx()
	defer cancel()
	if _, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: volID, StagingTargetPath: a.staging, VolumeCapability: a.capability(),
	}); err != nil {
		return a, fmt.Errorf("NodeStageVolume %s at %s: %w", volID, a.staging, err)
	}
	return a, nil
}

// publish runs NodePublishVolume; NodeUnpublishVolume follows at the end of
// the test.
func (e *env) publish(t *testing.T, a attachment) attachment {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	if _, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: a.volID, StagingTargetPath: a.staging, TargetPath: a.target, VolumeCapability: a.capability(), Readonly: a.readonly,
	}); err != nil {
		t.Fatalf("NodePublishVolume %s at %s: %v", a.volID, a.target, err)
	}
	t.Cleanup(func() {
		if err := e.tryUnpublish(a); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return a
}

// use stages and publishes a volume.
func (e *env) use(t *testing.T, volID, fsType string) attachment {
	t.Helper()
	return e.publish(t, e.stage(t, volID, fsType))
}

// release unpublishes and unstages a volume used with use.
func (e *env) release(t *testing.T, a attachment) {
	t.Helper()
	if err := e.tryUnpublish(a); err != nil {
		t.Fatal(err)
	}
	if err := e.tryUnstage(a); err != nil {
		t.Fatal(err)
	}
}

func (e *env) tryUnpublish(a attachment) error {
	ctx, cancel := callCtx()
	defer cancel()
	if _, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: a.volID, TargetPath: a.target}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume %s at %s: %w", a.volID, a.target, err)
	}
	return nil
}

func (e *env) tryUnstage(a attachment) error {
	ctx, cancel := callCtx()
	defer cancel()
	if _, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: a.volID, StagingTargetPath: a.staging}); err != nil {
		return fmt.Errorf("NodeUnstageVolume %s at %s: %w", a.volID, a.staging, err)
	}
	return nil
}

// getVolume returns the controller's view of a volume or fails the test.
func (e *env) getVolume(t *testing.T, id string) *csi.Volume {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := e.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil {
		t.Fatalf("ControllerGetVolume %s: %v", id, err)
	}
	return resp.GetVolume()
}

// capacity returns GetCapacity's available bytes for mount volumes.
func (e *env) capacity(t *testing.T) int64 {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	resp, err := e.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{capability("ext4")}})
	if err != nil {
		t.Fatalf("GetCapacity: %v", err)
	}
	return resp.GetAvailableCapacity()
}

// wantCode fails the test unless err carries code.
func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want code %s", what, err, code)
	}
}

// poolEntries lists the names in a directory of the pool, so that a test
// can tell that a refused call left nothing behind.
func (e *env) poolEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.pool, dir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	names := make([]string, 0, len(entries))
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}
