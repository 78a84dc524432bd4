package reliability

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestMalformedRequests sends thousands of random, mostly malformed
// requests across every RPC to a running `tarn serve` and checks that it
// never dies (it answers Probe to the end), answers each with a code the
// spec allows for that RPC, never writes outside its pool and the sandbox
// holding staging and target paths, and leaves no mount or loop device
// once the volumes valid requests created are cleaned up.
//
// The driver runs as a process of its own so that a panic is seen as its
// death, with its stack in the output, instead of ending the test binary.
func TestMalformedRequests(t *testing.T) {
	n := intKnob(t, *fuzzRequestsFlag, "TARN_FUZZ_REQUESTS", 5000)
	seed := fuzzSeed(t)
	t.Logf("malformed requests: %d, seed %d (replay with TARN_FUZZ_SEED=%d)", n, seed, seed)
	e := newEnv(t, 8*GiB)

	// The watched tree is the work directory: the driver's working
	// directory (where relative paths would land), decoys, and the
	// sandbox three levels down, so that '..' climbing out of it lands in
	// the tree too; and the pool's filesystem outside the pool directory.
	cwd, sandbox := filepath.Join(e.work, "cwd"), filepath.Join(e.work, "a", "b", "sandbox")
	for _, d := range []string{cwd, sandbox, filepath.Join(e.work, "a", "b", "sibling")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(e.work, "decoy"), filepath.Join(e.work, "a", "b", "sibling", "decoy"), filepath.Join(e.poolMnt, "decoy")} {
		if err := os.WriteFile(p, []byte("must stay as it is"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	treeBefore := snapshotTree(t, e.work, sandbox)
	poolFSBefore := snapshotTree(t, e.poolMnt, e.pool)
	kernelBefore := testpool.Snapshot(t)
	e.serve(t, cwd)

	f := &fuzzer{r: rand.New(rand.NewPCG(uint64(seed), 0x7a7)), sandbox: sandbox}
	r := &fuzzRun{t: t, e: e, counts: map[string]map[codes.Code]int{}, mounted: map[string]string{}, reported: map[string]bool{}}
	start := time.Now()
	for i := range n {
		rpc := fuzzRPCs[f.r.IntN(len(fuzzRPCs))]
		f.sane = f.chance(0.5)
		r.one(i, rpc, f)
		if i%500 == 499 {
			r.alive(i)
		}
	}
	r.alive(n)
	t.Logf("malformed requests: %d sent in %v, %d valid enough to create a volume, %d a snapshot, %d to stage, %d to publish\n%s",
		n, time.Since(start).Round(time.Millisecond), len(f.volumes), len(f.snapshots), len(r.stages), len(r.publishes), r.table())
	if r.crossUnmounts > 0 {
		// A node call touches only what belongs to the volume it names.
		t.Errorf("malformed requests: %d unstage/unpublish calls naming one volume unmounted another's path", r.crossUnmounts)
	}
	if r.exempt > 0 {
		t.Logf("malformed requests: %d Internal answers let through: mount options the kernel refused, or ext4 growth without CAP_SYS_RESOURCE", r.exempt)
	}

	r.cleanUp(sandbox)
	if m := mountsUnder(t, e.work); len(m) > 0 {
		t.Errorf("mounts left after cleaning up: %v", m)
	}
	for _, leak := range testpool.Diff(kernelBefore, testpool.Snapshot(t)) {
		t.Errorf("left behind: %s", leak)
	}
	for _, d := range diffTrees(treeBefore, snapshotTree(t, e.work, sandbox)) {
		t.Errorf("written outside the pool and the sandbox: %s", d)
	}
	for _, d := range diffTrees(poolFSBefore, snapshotTree(t, e.poolMnt, e.pool)) {
		t.Errorf("written on the pool's filesystem outside the pool: %s", d)
	}
	for _, dir := range []string{"volumes", "snapshots", ".staging", ".trash"} {
		if left := e.poolEntries(t, dir); len(left) > 0 {
			t.Errorf("pool/%s after cleanup: %v, want it empty", dir, left)
		}
	}
}

// fuzzRun is the state of one TestMalformedRequests run.
type fuzzRun struct {
	t      *testing.T
	e      *env
	counts map[string]map[codes.Code]int
	// stages and publishes are the accepted (volume, path) pairs, in
	// order, for the cleanup to undo: a path may have held several
	// volumes in turn.
	stages, publishes [][2]string
	// mounted maps a path to the volume last staged or published there,
	// to notice a call naming one volume that unmounts another's path.
	mounted map[string]string
	// leftAttached are refused stages that left their volume attached.
	leftAttached  [][2]string
	crossUnmounts int
	// mountsBefore are the mounts under the work directory before the
	// unstage or unpublish being sent.
	mountsBefore []string
	exempt       int
	// reported keeps each kind of violation to one report.
	reported map[string]bool
}

// one sends a random request of rpc and checks the answer.
func (r *fuzzRun) one(i int, rpc fuzzRPC, f *fuzzer) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var before *nodeState
	switch rpc.method {
	case "NodeStageVolume":
		before = r.nodeState()
	case "NodeUnstageVolume", "NodeUnpublishVolume":
		r.mountsBefore = mountsUnder(r.t, r.e.work)
	}
	req, resp, err := rpc.send(ctx, r.e, f)
	code := status.Code(err)
	if before != nil && code != codes.OK {
		r.checkFailedStage(i, req.(*csi.NodeStageVolumeRequest), err, before)
	}
	if r.counts[rpc.method] == nil {
		r.counts[rpc.method] = map[codes.Code]int{}
	}
	r.counts[rpc.method][code]++
	if r.e.proc.Exited() {
		r.t.Fatalf("tarn serve died (%v) on request #%d, %s:\n%s", r.e.proc.Err(), i, rpc.method, show(req))
	}
	allowed := slices.Concat(generalCodes, rpc.codes)
	switch {
	case slices.Contains(allowed, code):
	case code == codes.Internal && r.refusedMount(req, err):
		r.exempt++
	default:
		// One report per RPC, code and kind of message (its words up to
		// the first path or number).
		msg := status.Convert(err).Message()
		key := rpc.method + "/" + code.String() + "/" + msg[:strings.IndexAny(msg+"/", "/0123456789")]
		if !r.reported[key] {
			r.reported[key] = true
			r.t.Errorf("request #%d %s answered %v, outside %v (further ones not shown):\n%s", i, rpc.method, err, allowed, show(req))
		}
	}
	if code == codes.OK {
		r.track(req, resp, f)
	}
	r.mountsBefore = nil
}

// nodeState is what a node call can leave behind: loop devices of the
// pool and mounts in the sandbox.
type nodeState struct {
	loops  map[string]string
	mounts []string
}

func (r *fuzzRun) nodeState() *nodeState {
	return &nodeState{loops: loopsUnder(r.t, r.e.pool), mounts: mountsUnder(r.t, r.e.work)}
}

// checkFailedStage fails the test when a refused NodeStageVolume left a
// loop device attached or a filesystem mounted: the CO takes a refused
// stage as not done and never unstages it, so they stay, and the volume
// can never be deleted. The cleanup unstages it so that the rest of the
// run is checked on its own.
func (r *fuzzRun) checkFailedStage(i int, req *csi.NodeStageVolumeRequest, err error, before *nodeState) {
	now := r.nodeState()
	var left []string
	for dev, file := range now.loops {
		if before.loops[dev] != file {
			left = append(left, dev+" attached to "+file)
		}
	}
	for _, m := range now.mounts {
		if !slices.Contains(before.mounts, m) {
			left = append(left, "a mount on "+m)
		}
	}
	if len(left) == 0 {
		return
	}
	r.leftAttached = append(r.leftAttached, [2]string{req.GetVolumeId(), filepath.Clean(req.GetStagingTargetPath())})
	msg := status.Convert(err).Message()
	key := "NodeStageVolume/left behind/" + msg[:strings.IndexAny(msg+"/", "/0123456789")]
	if !r.reported[key] {
		r.reported[key] = true
		r.t.Errorf("request #%d NodeStageVolume answered %v but left %s (further ones not shown):\n%s",
			i, err, strings.Join(left, " and "), show(req))
	}
}

// refusedMount says whether an Internal answer is the kernel refusing
// mount options the request asked for, which the driver cannot know in
// advance, or resize2fs refusing to grow a mounted ext4 for want of
// CAP_SYS_RESOURCE (which some sandboxes withhold even from root; the
// node plugin's pod has it).
func (r *fuzzRun) refusedMount(req proto.Message, err error) bool {
	msg := status.Convert(err).Message()
	if strings.Contains(msg, "resize2fs") && !hasCapSysResource(r.t) {
		return true
	}
	switch q := req.(type) {
	case *csi.NodeStageVolumeRequest:
		return unsafeFlags(q.GetVolumeCapability()) && strings.Contains(msg, "mount")
	case *csi.NodePublishVolumeRequest:
		return unsafeFlags(q.GetVolumeCapability()) && strings.Contains(msg, "mount")
	}
	return false
}

// track remembers what an accepted request created, for later requests
// to use and for the cleanup.
func (r *fuzzRun) track(req, resp proto.Message, f *fuzzer) {
	switch q := req.(type) {
	case *csi.CreateVolumeRequest:
		if id := resp.(*csi.CreateVolumeResponse).GetVolume().GetVolumeId(); !slices.Contains(f.volumes, id) {
			f.volumes = append(f.volumes, id)
		}
	case *csi.CreateSnapshotRequest:
		if id := resp.(*csi.CreateSnapshotResponse).GetSnapshot().GetSnapshotId(); !slices.Contains(f.snapshots, id) {
			f.snapshots = append(f.snapshots, id)
		}
	case *csi.NodeStageVolumeRequest:
		pair := [2]string{q.GetVolumeId(), filepath.Clean(q.GetStagingTargetPath())}
		r.stages = append(r.stages, pair)
		r.mounted[pair[1]] = pair[0]
		f.staged = append(f.staged, pair)
	case *csi.NodePublishVolumeRequest:
		pair := [2]string{q.GetVolumeId(), filepath.Clean(q.GetTargetPath())}
		r.publishes = append(r.publishes, pair)
		r.mounted[pair[1]] = pair[0]
		f.published = append(f.published, pair)
	case *csi.NodeUnstageVolumeRequest:
		r.unmounted(q.GetVolumeId(), q.GetStagingTargetPath())
	case *csi.NodeUnpublishVolumeRequest:
		r.unmounted(q.GetVolumeId(), q.GetTargetPath())
	}
}

// unmounted notes an accepted unstage or unpublish, counting one that
// unmounted a path holding another volume than the one it names (a block
// stage mounts nothing, so only a path that was mounted counts).
func (r *fuzzRun) unmounted(id, path string) {
	path = filepath.Clean(path)
	owner, ok := r.mounted[path]
	if !ok {
		return
	}
	if owner != id && slices.Contains(r.mountsBefore, path) && len(mountsUnder(r.t, path)) == 0 {
		r.crossUnmounts++
	}
	if owner == id || len(mountsUnder(r.t, path)) == 0 {
		delete(r.mounted, path)
	}
}

// alive fails the test unless the driver still answers Probe.
func (r *fuzzRun) alive(after int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.e.ident.Probe(ctx, &csi.ProbeRequest{}); err != nil {
		r.t.Fatalf("Probe after %d requests: %v", after, err)
	}
}

// cleanUp undoes every accepted publication and stage, newest first, then
// deletes every snapshot and volume. Nothing else runs now, so each call
// must succeed.
func (r *fuzzRun) cleanUp(sandbox string) {
	t, e := r.t, r.e
	must := func(what string, err error) {
		if err != nil {
			t.Errorf("cleanup: %s: %v", what, err)
		}
	}
	for i := len(r.publishes) - 1; i >= 0; i-- {
		id, path := r.publishes[i][0], r.publishes[i][1]
		ctx, cancel := callCtx()
		_, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: path})
		cancel()
		must("NodeUnpublishVolume "+path, err)
	}
	unstage := func(id, path string) error {
		ctx, cancel := callCtx()
		defer cancel()
		_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: path})
		return err
	}
	for i := len(r.stages) - 1; i >= 0; i-- {
		must("NodeUnstageVolume "+r.stages[i][1], unstage(r.stages[i][0], r.stages[i][1]))
	}
	// A refused stage's path may be one no call accepts (too long); any
	// valid path detaches the volume then.
	for _, p := range r.leftAttached {
		_ = unstage(p[0], p[1])
		must("NodeUnstageVolume of a volume left attached", unstage(p[0], filepath.Join(sandbox, "cleanup")))
	}
	ctx, cancel := callCtx()
	defer cancel()
	snaps, err := e.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	must("ListSnapshots", err)
	for _, s := range snaps.GetEntries() {
		_, err := e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshot().GetSnapshotId()})
		must("DeleteSnapshot", err)
	}
	vols, err := e.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	must("ListVolumes", err)
	for _, v := range vols.GetEntries() {
		_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolume().GetVolumeId()})
		must("DeleteVolume", err)
	}
	t.Logf("malformed requests: cleanup deleted %d volumes and %d snapshots", len(vols.GetEntries()), len(snaps.GetEntries()))
}

// table renders the answers by RPC and code.
func (r *fuzzRun) table() string {
	methods := make([]string, 0, len(r.counts))
	for m := range r.counts {
		methods = append(methods, m)
	}
	sort.Strings(methods)
	var b strings.Builder
	for _, m := range methods {
		var parts []string
		total := 0
		for c, k := range r.counts[m] {
			parts = append(parts, fmt.Sprintf("%s=%d", c, k))
			total += k
		}
		sort.Strings(parts)
		fmt.Fprintf(&b, "  %-32s %5d  %s\n", m, total, strings.Join(parts, " "))
	}
	return b.String()
}

// show renders a request for a failure message, cut to a readable size.
func show(m proto.Message) string {
	s := prototext.Format(m)
	if len(s) > 3000 {
		s = s[:3000] + "... (cut)"
	}
	return s
}

// treeEntry is what snapshotTree records of one file or directory.
type treeEntry struct {
	mode  fs.FileMode
	size  int64
	mtime int64 // nanoseconds
	sum   string
}

// snapshotTree records every entry under root except the excluded
// subtrees: type and permissions, size, modification time, and the
// content's hash for regular files.
func snapshotTree(t *testing.T, root string, exclude ...string) map[string]treeEntry {
	t.Helper()
	out := map[string]treeEntry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if slices.Contains(exclude, p) {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := treeEntry{mode: info.Mode(), size: info.Size(), mtime: info.ModTime().UnixNano()}
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			e.sum = hex.EncodeToString(sum[:])
		}
		out[p] = e
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

// diffTrees describes every entry created, removed or changed.
func diffTrees(before, after map[string]treeEntry) []string {
	var out []string
	for p, a := range after {
		b, ok := before[p]
		switch {
		case !ok:
			out = append(out, "created "+p)
		case a != b:
			out = append(out, fmt.Sprintf("changed %s: %+v -> %+v", p, b, a))
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			out = append(out, "removed "+p)
		}
	}
	sort.Strings(out)
	return out
}
