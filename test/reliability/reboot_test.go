package reliability

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tarn-csi/tarn/pkg/loopdev"
	"github.com/tarn-csi/tarn/test/testpool"
)

// TestNodeReboot simulates a node reboot under staged and published
// volumes of every kind: the driver is SIGKILLed, every mount under the
// kubelet-like work directory is removed, every loop device of the pool is
// detached and the pool filesystem is remounted (no cache survives a
// reboot), and unrelated files are attached on the loop numbers the
// volumes had, as other users of a rebooted node take them. The restarted
// driver must then let kubelet tear down the old paths idempotently, stage
// and publish every volume again with its data intact, list and account
// for exactly what it did before, restore its snapshots and, once
// everything is deleted, leave nothing behind. A driver that trusted a
// remembered device path would reach a decoy and fail the test.
func TestNodeReboot(t *testing.T) {
	e := newEnv(t, 4*GiB)
	kernelBefore := testpool.Snapshot(t)
	e.serve(t, e.work)
	r := &rebooter{c: &crasher{t: t, e: e}}

	ext4 := &rebootVol{name: "reboot-ext4", access: "ext4", size: 64 * MiB}
	xfs := &rebootVol{name: "reboot-xfs", access: "xfs", size: volSize}
	block := &rebootVol{name: "reboot-block", access: "block", size: 32 * MiB}
	// Neither snapshotted nor cloned: it reserves only its unwritten
	// part, so capacity depends on its allocation surviving the reboot.
	plain := &rebootVol{name: "reboot-plain", access: "ext4", size: 64 * MiB}
	// Published again onto its old target file, which no device is bound
	// to any more.
	blockKept := &rebootVol{name: "reboot-block-kept", access: "block", size: 32 * MiB, survives: true}
	for _, v := range []*rebootVol{ext4, xfs, block, plain, blockKept} {
		r.create(v)
		r.stageAndPublish(v, v.target)
		r.write(v, "data", 0, 4*MiB)
	}
	// Snapshots of published volumes: the mounted one is frozen.
	snaps := []*rebootVol{
		{name: "reboot-from-snap-xfs", access: "xfs", size: volSize, content: slices.Clone(xfs.content),
			source: fromSnapshot(r.c.createSnapshot("reboot-snap-xfs", xfs.id))},
		{name: "reboot-from-snap-block", access: "block", size: block.size, content: slices.Clone(block.content),
			source: fromSnapshot(r.c.createSnapshot("reboot-snap-block", block.id))},
	}
	// A restore whose pod survives the reboot, so kubelet stages and
	// publishes it again at its old paths without tearing them down; and
	// a clone of a mounted volume.
	restored := &rebootVol{name: "reboot-restored", access: "xfs", size: volSize, survives: true,
		source: snaps[0].source, content: slices.Clone(xfs.content)}
	clone := &rebootVol{name: "reboot-clone", access: "ext4", size: ext4.size, content: slices.Clone(ext4.content),
		source: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: ext4.id}}}}
	for _, v := range []*rebootVol{restored, clone} {
		r.create(v)
		r.stageAndPublish(v, v.target)
		r.verify(v, v.target)
	}
	vols := []*rebootVol{ext4, xfs, block, plain, blockKept, restored, clone}
	for _, v := range vols {
		r.write(v, "own", 8*MiB, MiB)
	}
	listedBefore, capacityBefore := r.listing(), r.capacity()

	decoys := r.reboot(vols)
	r.c.e.serve(t, r.c.e.work)

	if l := loopsUnder(t, e.pool); len(l) > 0 {
		t.Errorf("the restarted driver attached %v before any stage", l)
	}
	r.checkDecoys(decoys, "the restart")
	if got := r.listing(); !slices.EqualFunc(got, listedBefore, func(a, b *csi.Volume) bool { return proto.Equal(a, b) }) {
		t.Errorf("ListVolumes after the reboot:\n%v\nbefore:\n%v", got, listedBefore)
	}
	r.checkCapacity(capacityBefore)

	// The kubelet asks for stats of the volumes it reconstructs before it
	// stages them again: an old path with nothing on it must not report
	// the node's root disk as the volume.
	for _, v := range vols {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := r.c.e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: v.target})
		cancel()
		if status.Code(err) != codes.NotFound {
			t.Errorf("volume %s: NodeGetVolumeStats at its old target after the reboot = %v, %v; want NotFound", v.name, resp, err)
		}
	}

	// What kubelet does for pods that are gone after the reboot: unpublish
	// and unstage paths that nothing is mounted on any more, each twice as
	// its retries would.
	for _, v := range vols {
		if v.survives {
			continue
		}
		for range 2 {
			r.unpublish(v, v.target)
			r.unstage(v)
		}
		if _, err := os.Lstat(v.target); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("volume %s: old target %s still exists after NodeUnpublishVolume: %v", v.name, v.target, err)
		}
	}
	r.checkDecoys(decoys, "unpublishing and unstaging the old paths")

	// Every volume is staged and published again: a surviving pod at its
	// old target, the others at a new pod's.
	for _, v := range vols {
		target := v.target
		if !v.survives {
			target += "-new-pod"
		}
		r.stageAndPublish(v, target)
		r.verify(v, target)
		r.write(v, "after", 16*MiB, MiB)
		r.verify(v, target)
	}
	r.checkDecoys(decoys, "staging again")

	// Snapshots taken before the reboot restore, and so does one of a
	// volume mounted after it (its freeze reaches the new device).
	after := &rebootVol{name: "reboot-from-snap-after", access: "ext4", size: clone.size, content: slices.Clone(clone.content),
		source: fromSnapshot(r.c.createSnapshot("reboot-snap-after", clone.id))}
	for _, v := range append(snaps, after) {
		r.create(v)
		r.stageAndPublish(v, v.target)
		r.verify(v, v.target)
		r.tearDown(v, v.target)
		r.c.deleteVolume(v.id)
	}

	for _, v := range vols {
		r.tearDown(v, v.published)
	}
	r.checkDecoys(decoys, "the last unstage")
	for _, v := range vols {
		r.c.deleteVolume(v.id)
	}
	for _, s := range append(snaps, after) {
		r.c.deleteSnapshot(s.source.GetSnapshot().GetSnapshotId())
	}
	r.checkEmpty()
	r.detachDecoys(decoys)
	for _, leak := range testpool.Diff(kernelBefore, testpool.Snapshot(t)) {
		t.Errorf("left behind: %s", leak)
	}
}

// rebootVol is a volume of the reboot test and what it must hold.
type rebootVol struct {
	name   string
	access string // "ext4", "xfs" or "block"
	size   int64
	source *csi.VolumeContentSource
	// survives says the volume's pod outlives the reboot: kubelet stages
	// and publishes it again at its old paths without tearing them down.
	survives bool

	id, staging, target string
	published           string // where it is published now
	content             []chunk
}

// chunk is data written to a volume: a file of a mounted volume, or a
// range of a block volume.
type chunk struct {
	name      string
	off, size int64
	sha       string
}

func (v *rebootVol) capability() *csi.VolumeCapability {
	mode := &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}
	if v.access == "block" {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: mode}
	}
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: v.access}}, AccessMode: mode}
}

type rebooter struct{ c *crasher }

func (r *rebooter) create(v *rebootVol) {
	r.c.t.Helper()
	r.c.must("CreateVolume "+v.name, func(ctx context.Context) error {
		resp, err := r.c.e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v.name,
			CapacityRange: &csi.CapacityRange{RequiredBytes: v.size}, VolumeCapabilities: []*csi.VolumeCapability{v.capability()},
			VolumeContentSource: v.source})
		v.id = resp.GetVolume().GetVolumeId()
		return err
	})
	dir := filepath.Join(r.c.e.work, v.name)
	v.staging, v.target = filepath.Join(dir, "staging"), filepath.Join(dir, "target")
}

// stageAndPublish stages v and publishes it at target, then checks that
// both are served by the one loop device of v's own file.
func (r *rebooter) stageAndPublish(v *rebootVol, target string) {
	t := r.c.t
	t.Helper()
	r.c.must("NodeStageVolume "+v.name, func(ctx context.Context) error {
		_, err := r.c.e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id,
			StagingTargetPath: v.staging, VolumeCapability: v.capability()})
		return err
	})
	r.c.must("NodePublishVolume "+v.name, func(ctx context.Context) error {
		_, err := r.c.e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id,
			StagingTargetPath: v.staging, TargetPath: target, VolumeCapability: v.capability()})
		return err
	})
	v.published = target
	loops := loopsUnder(t, filepath.Join(r.c.e.pool, "volumes", v.id))
	if len(loops) != 1 {
		t.Fatalf("volume %s is attached %d times after a stage: %v", v.name, len(loops), loops)
	}
	if v.access == "block" {
		var dev string
		for d := range loops {
			dev = d
		}
		var want, got unix.Stat_t
		if err := unix.Stat(dev, &want); err != nil {
			t.Fatal(err)
		}
		if err := unix.Stat(target, &got); err != nil || got.Mode&unix.S_IFMT != unix.S_IFBLK || got.Rdev != want.Rdev {
			t.Fatalf("block volume %s: %s is not its device %s (%v)", v.name, target, dev, err)
		}
		return
	}
	for _, p := range []string{v.staging, target} {
		if file, err := backingFileOfMount(p); err != nil || file != r.c.e.volumeFile(v.id) {
			t.Fatalf("volume %s: %s is mounted from %q (%v), want its own file", v.name, p, file, err)
		}
	}
}

func (r *rebooter) unpublish(v *rebootVol, target string) {
	r.c.t.Helper()
	r.c.must("NodeUnpublishVolume "+v.name+" at "+target, func(ctx context.Context) error {
		_, err := r.c.e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target})
		return err
	})
}

func (r *rebooter) unstage(v *rebootVol) {
	r.c.t.Helper()
	r.c.must("NodeUnstageVolume "+v.name, func(ctx context.Context) error {
		_, err := r.c.e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
		return err
	})
}

func (r *rebooter) tearDown(v *rebootVol, target string) {
	r.c.t.Helper()
	r.unpublish(v, target)
	r.unstage(v)
	r.c.checkUnstaged(v.id, v.staging)
}

// write puts size random bytes into v, published at v.published: a file
// named name, or for a block volume the range at off, synced, and
// remembers their SHA-256.
func (r *rebooter) write(v *rebootVol, name string, off, size int64) {
	t := r.c.t
	t.Helper()
	if v.access != "block" {
		v.content = append(v.content, chunk{name: name, size: size, sha: writeRandom(t, filepath.Join(v.published, name), size)})
		return
	}
	f, err := os.OpenFile(v.published, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(io.NewOffsetWriter(f, off), h), crand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	v.content = append(v.content, chunk{name: name, off: off, size: size, sha: hex.EncodeToString(h.Sum(nil))})
}

// verify checks every chunk written to v (or to its origin before a
// snapshot or clone) through its publication at target.
func (r *rebooter) verify(v *rebootVol, target string) {
	t := r.c.t
	t.Helper()
	for _, c := range v.content {
		var got string
		if v.access != "block" {
			got = sha256Of(t, filepath.Join(target, c.name), -1)
		} else {
			f, err := os.Open(target)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			_, err = io.Copy(h, io.NewSectionReader(f, c.off, c.size))
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			got = hex.EncodeToString(h.Sum(nil))
		}
		if got != c.sha {
			t.Errorf("volume %s at %s: %q has sha256 %s, want %s", v.name, target, c.name, got, c.sha)
		}
	}
}

// listing returns every volume the driver lists, sorted by ID.
func (r *rebooter) listing() []*csi.Volume {
	r.c.t.Helper()
	var out []*csi.Volume
	r.c.must("ListVolumes", func(ctx context.Context) error {
		resp, err := r.c.e.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
		for _, en := range resp.GetEntries() {
			out = append(out, en.GetVolume())
		}
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].GetVolumeId() < out[j].GetVolumeId() })
	return out
}

func (r *rebooter) capacity() int64 {
	r.c.t.Helper()
	var avail int64
	r.c.must("GetCapacity", func(ctx context.Context) error {
		resp, err := r.c.e.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{})
		avail = resp.GetAvailableCapacity()
		return err
	})
	return avail
}

// capacitySlack is how far GetCapacity may move across the reboot with no
// volume created or written: the pool filesystem may give back the
// copy-on-write preallocations it held for the open files of shared
// volumes (none was seen to move on an XFS reflink pool).
const capacitySlack = 4 * MiB

// checkCapacity compares GetCapacity with before, and with the pool's free
// space as the crash test does.
func (r *rebooter) checkCapacity(before int64) {
	t := r.c.t
	t.Helper()
	after := r.capacity()
	t.Logf("reboot: GetCapacity %d bytes before, %d after (%+d)", before, after, after-before)
	if d := after - before; d < -capacitySlack || d > capacitySlack {
		t.Errorf("GetCapacity after the reboot: %d bytes, %d before", after, before)
	}
	var sizes int64
	for _, v := range r.listing() {
		sizes += v.GetCapacityBytes()
	}
	r.c.checkCapacity(sizes)
}

// reboot does to the node what a reboot does to it: the driver dies
// without a chance to clean up, every mount under the work directory and
// every loop device of the pool go away, and the pool filesystem is
// mounted afresh. Then, as the node's other users would, it attaches
// decoy files on the loop numbers the volumes had, so that any device path
// remembered from before now leads somewhere else. It returns the decoys,
// device to backing file.
func (r *rebooter) reboot(vols []*rebootVol) map[string]string {
	t, e := r.c.t, r.c.e
	t.Helper()
	var old []string
	for _, v := range vols {
		for dev := range loopsUnder(t, filepath.Join(e.pool, "volumes", v.id)) {
			old = append(old, dev)
		}
	}
	if len(old) != len(vols) {
		t.Fatalf("before the reboot %d loop devices serve %d volumes", len(old), len(vols))
	}
	e.proc.Kill(t, killWait)

	mounts := mountsUnder(t, e.work)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		unmountPatiently(t, m)
	}
	kernel := loopdev.Manager{}
	devs, err := kernel.List()
	if err != nil {
		t.Fatal(err)
	}
	detached := 0
	for _, d := range devs {
		if strings.HasPrefix(d.BackingFile, e.pool+"/") {
			if err := kernel.Detach(d.Path); err != nil {
				t.Fatalf("reboot: detach %s: %v", d.Path, err)
			}
			detached++
		}
	}
	dev := testpool.DeviceOf(t, e.poolMnt)
	unmountPatiently(t, e.poolMnt)
	if err := unix.Mount(dev, e.poolMnt, "xfs", 0, ""); err != nil {
		t.Fatalf("reboot: mount the pool again: %v", err)
	}
	t.Logf("reboot: removed %d mounts and %d loop devices, remounted the pool", len(mounts), detached)
	return r.attachDecoys(old)
}

// unmountPatiently unmounts path, waiting a moment while it is busy: a
// just-killed process's files take an instant to close.
func unmountPatiently(t *testing.T, path string) {
	t.Helper()
	for i := 0; ; i++ {
		err := unix.Unmount(path, 0)
		if err == nil {
			return
		}
		if !errors.Is(err, unix.EBUSY) || i == 50 {
			t.Fatalf("reboot: unmount %s: %v", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// attachDecoys binds a blank file to each of devs. A number another
// process took meanwhile is skipped, but at least one decoy must hold.
func (r *rebooter) attachDecoys(devs []string) map[string]string {
	t := r.c.t
	t.Helper()
	dir := t.TempDir()
	decoys := map[string]string{}
	t.Cleanup(func() { r.detachDecoys(decoys) })
	for i, dev := range devs {
		file := filepath.Join(dir, fmt.Sprintf("decoy-%d.img", i))
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(file, 64*MiB); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("losetup", dev, file).CombinedOutput(); err != nil {
			t.Logf("reboot: no decoy on %s: %v: %s", dev, err, out)
			continue
		}
		decoys[dev] = file
	}
	if len(decoys) == 0 {
		t.Fatalf("reboot: could not attach a decoy on any of %v", devs)
	}
	t.Logf("reboot: decoys on the volumes' old loop devices: %v", decoys)
	return decoys
}

// checkDecoys fails the test unless every decoy is still attached to its
// file: a driver that detached one acted on a device path from before the
// reboot.
func (r *rebooter) checkDecoys(decoys map[string]string, after string) {
	t := r.c.t
	t.Helper()
	for dev, file := range decoys {
		got, err := readBackingFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
		if err != nil || got != file {
			t.Errorf("after %s decoy %s is backed by %q (%v), want %s", after, dev, got, err, file)
		}
	}
}

// detachDecoys detaches the decoys still backed by their files, and only
// those: a number may belong to someone else by now.
func (r *rebooter) detachDecoys(decoys map[string]string) {
	t := r.c.t
	for dev, file := range decoys {
		got, _ := readBackingFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
		if got == file {
			if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
				t.Errorf("detach decoy %s: %v: %s", dev, err, out)
			}
		}
		delete(decoys, dev)
	}
}

// checkEmpty fails the test for anything left once every object is
// deleted: a file in the pool, a mount under the work directory, a loop
// device of the pool.
func (r *rebooter) checkEmpty() {
	t, e := r.c.t, r.c.e
	t.Helper()
	err := filepath.WalkDir(e.pool, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.pool, path)
		if rel == "." || (d.IsDir() && slices.Contains([]string{"volumes", "snapshots", ".staging", ".trash"}, rel)) {
			return nil
		}
		// The lock of the tarn serving the pool is the pool's own.
		if rel == ".tarn.lock" && d.Type().IsRegular() {
			return nil
		}
		t.Errorf("left in the pool: %s", rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, e.work); len(m) > 0 {
		t.Errorf("mounts left under the work directory: %v", m)
	}
	if l := loopsUnder(t, e.pool); len(l) > 0 {
		t.Errorf("loop devices of the pool left: %v", l)
	}
}
