package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/test/testpool"
)

// TestCrashSafety SIGKILLs a real `tarn serve` at a random instant of each
// kind of operation, restarts it on the same pool and socket, retries the
// call until it succeeds as the sidecars do, and checks that every volume
// and snapshot is either complete with its data intact or absent, that the
// restart swept whatever the kill left half-done, and that listings and
// capacity agree with the pool.
func TestCrashSafety(t *testing.T) {
	iterations := intKnob(t, *crashIterationsFlag, "TARN_CRASH_ITERATIONS", 10)
	seed := time.Now().UnixNano()
	t.Logf("crash safety: %d kills per operation, seed %d", iterations, seed)
	e := newEnv(t, 8*GiB)
	kernelBefore := testpool.Snapshot(t)
	e.serve(t, e.work)
	c := &crasher{t: t, e: e, r: rand.New(rand.NewPCG(uint64(seed), 0xc4a5)),
		points: map[string]map[string]int{}, early: map[string]int{}, retryErrors: map[string]int{}}
	fx := c.newFixture()

	ops := []struct {
		name string
		run  func(iterations int)
	}{
		{"restore", fx.restore}, {"snapshot-mounted", fx.snapshot}, {"delete", fx.delete},
		{"expand", fx.expand}, {"stage", fx.stage}, {"unstage", fx.unstage},
	}
	for _, op := range ops {
		start := time.Now()
		op.run(iterations)
		t.Logf("crash safety: %s done in %v", op.name, time.Since(start).Round(time.Millisecond))
		if t.Failed() {
			break
		}
	}
	fx.finish()
	c.report()
	for _, leak := range testpool.Diff(kernelBefore, testpool.Snapshot(t)) {
		t.Errorf("left behind: %s", leak)
	}
}

// fixture is what the operations share: a volume with data that stays
// published and written to, a snapshot of it to restore from, and
// volumes to expand and to stage.
type fixture struct {
	c       *crasher
	src     string // published, written to
	staging string // where src is staged
	target  string // where src is published
	snap    string // of src, holding data
	data    string // sha256 of src's file "data"
	writer  *streamWriter
	growing string
	staged  string
	paths   int
}

const dataSize = 8 * MiB

func (c *crasher) newFixture() *fixture {
	fx := &fixture{c: c}
	fx.src = c.createVolume("source", nil)
	fx.staging, fx.target = fx.path("source-staging"), fx.path("source-target")
	c.stage(fx.src, fx.staging)
	c.publish(fx.src, fx.staging, fx.target)
	fx.data = writeRandom(c.t, filepath.Join(fx.target, "data"), dataSize)
	fx.snap = c.createSnapshot("source-snap", fx.src)
	fx.writer = startStream(filepath.Join(fx.target, "stream"), 8192)
	// Whatever happens, no cleanup may meet a frozen filesystem: the
	// unmount would hang.
	c.t.Cleanup(func() { _ = runQuiet("fsfreeze", "-u", fx.target) })
	fx.growing = c.createVolume("expand", fromSnapshot(fx.snap))
	fx.staged = c.createVolume("stage", fromSnapshot(fx.snap))
	return fx
}

func (fx *fixture) path(name string) string {
	fx.paths++
	return filepath.Join(fx.c.e.work, fmt.Sprintf("%s-%d", name, fx.paths))
}

// finish checks the live volume that was written to all along, and
// deletes everything.
func (fx *fixture) finish() {
	c := fx.c
	if err := fx.writer.halt(); err != nil {
		c.t.Errorf("writing to the published volume: %v", err)
	}
	if got := sha256Of(c.t, filepath.Join(fx.target, "data"), -1); got != fx.data {
		c.t.Errorf("the published volume's data changed: sha256 %s, want %s", got, fx.data)
	}
	n := checkStream(c.t, filepath.Join(fx.target, "stream"))
	c.t.Logf("crash safety: the published volume took %d records while the driver was killed and restarted", n)
	c.unpublish(fx.src, fx.target)
	c.unstage(fx.src, fx.staging)
	c.deleteSnapshot(fx.snap)
	for _, id := range []string{fx.src, fx.growing, fx.staged} {
		c.deleteVolume(id)
	}
	for _, dir := range []string{"volumes", "snapshots", ".staging", ".trash"} {
		if left := c.e.poolEntries(c.t, dir); len(left) > 0 {
			c.t.Errorf("pool/%s at the end: %v, want it empty", dir, left)
		}
	}
}

// restore: CreateVolume from a snapshot holding data, killed at any
// point of the reflink, the flush and the publication.
func (fx *fixture) restore(iterations int) {
	c := fx.c
	call := func(name string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.e.ctrl.CreateVolume(ctx, volumeRequest(name, fromSnapshot(fx.snap)))
			return err
		}
	}
	typical := c.median(func(i int) time.Duration {
		name := fmt.Sprintf("restore-calibration-%d", i)
		defer c.deleteVolume(backend.VolumeIDFor(name))
		return c.timed(call(name))
	})
	for i := range iterations {
		name := fmt.Sprintf("restore-%d", i)
		id := backend.VolumeIDFor(name)
		c.killDuring("restore", typical, call(name), func() string { return c.objectPhase("volumes", id) })
		c.retry("CreateVolume from a snapshot", call(name))
		c.verifyVolume(id, fx.data, false)
		c.deleteVolume(id)
	}
}

// snapshot: CreateSnapshot of the published volume while it is written
// to, killed before, during or after its filesystem is frozen. The
// restarted driver must thaw it (the writer goes on), and the snapshot,
// once retried, must hold the data and whole records only.
func (fx *fixture) snapshot(iterations int) {
	c := fx.c
	call := func(name string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: fx.src})
			return err
		}
	}
	typical := c.median(func(i int) time.Duration {
		name := fmt.Sprintf("snap-calibration-%d", i)
		defer c.deleteSnapshot(backend.SnapshotIDFor(name))
		return c.timed(call(name))
	})
	for i := range iterations {
		name := fmt.Sprintf("snap-%d", i)
		id := backend.SnapshotIDFor(name)
		c.killDuring("snapshot-mounted", typical, call(name), func() string {
			phase := c.objectPhase("snapshots", id)
			if fx.stalled() {
				phase += "+frozen"
			}
			return phase
		})
		if fx.stalled() {
			c.t.Fatal("the published volume is still frozen after the driver restarted")
		}
		c.retry("CreateSnapshot of a mounted volume", call(name))
		restored := c.createVolume(fmt.Sprintf("snap-check-%d", i), fromSnapshot(id))
		c.verifyVolume(restored, fx.data, true)
		c.deleteVolume(restored)
		c.deleteSnapshot(id)
	}
}

// stalled says whether the writer makes no progress for a while, which is
// what a frozen filesystem does to it.
func (fx *fixture) stalled() bool {
	before := fx.writer.written.Load()
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		if fx.writer.written.Load() != before {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A writer that reached its end is not stalled.
	return before < 8192
}

// delete: DeleteVolume of a volume holding data, killed before or after
// its rename into .trash.
func (fx *fixture) delete(iterations int) {
	c := fx.c
	call := func(id string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			return err
		}
	}
	typical := c.median(func(i int) time.Duration {
		return c.timed(call(c.createVolume(fmt.Sprintf("delete-calibration-%d", i), fromSnapshot(fx.snap))))
	})
	for i := range iterations {
		id := c.createVolume(fmt.Sprintf("delete-%d", i), fromSnapshot(fx.snap))
		c.killDuring("delete", typical, call(id), func() string { return c.objectPhase("volumes", id) })
		if _, err := os.Stat(c.e.volumeFile(id)); err == nil {
			// Still there: then whole.
			c.verifyVolume(id, fx.data, false)
		}
		c.retry("DeleteVolume", call(id))
		if _, err := os.Stat(filepath.Join(c.e.pool, "volumes", id)); !os.IsNotExist(err) {
			c.t.Errorf("volume %s is in the pool after DeleteVolume succeeded", id)
		}
	}
}

// expand: ControllerExpandVolume, killed between growing the file and
// recording the size. The data before the old end must not change.
func (fx *fixture) expand(iterations int) {
	c := fx.c
	id := fx.growing
	size := c.volumeSize(id)
	origSize, origSum := size, sha256Of(c.t, c.e.volumeFile(id), size)
	call := func(want int64) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
				CapacityRange: &csi.CapacityRange{RequiredBytes: want}})
			return err
		}
	}
	typical := c.median(func(int) time.Duration {
		size += 16 * MiB
		return c.timed(call(size))
	})
	for range iterations {
		want := size + 16*MiB
		c.killDuring("expand", typical, call(want), func() string { return c.expandPhase(id, size) })
		switch got := c.volumeSize(id); {
		case got != size && got != want:
			c.t.Errorf("after the restart volume %s is %d bytes, neither the old %d nor the new %d", id, got, size, want)
		case fileSize(c.t, c.e.volumeFile(id)) < got:
			c.t.Errorf("after the restart volume %s's file is smaller than its recorded %d bytes", id, got)
		}
		if sum := sha256Of(c.t, c.e.volumeFile(id), origSize); sum != origSum {
			c.t.Errorf("expanding volume %s changed its data", id)
		}
		c.retry("ControllerExpandVolume", call(want))
		if size = c.volumeSize(id); size < want {
			c.t.Errorf("volume %s is %d bytes after the expansion to %d succeeded", id, size, want)
		}
	}
	// Staging grows the filesystem to the new size; the data is still
	// there.
	c.verifyVolume(id, fx.data, false)
}

// stage: NodeStageVolume, killed while attaching, formatting (every other
// time on a blank volume) or mounting.
func (fx *fixture) stage(iterations int) {
	c := fx.c
	call := func(id, staging string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
				VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)})
			return err
		}
	}
	staging := fx.path("stage")
	typicalData := c.timed(call(fx.staged, staging))
	c.unstage(fx.staged, staging)
	blank := c.createVolume("stage-blank-calibration", nil)
	typicalBlank := c.timed(call(blank, staging))
	c.unstage(blank, staging)
	c.deleteVolume(blank)
	for i := range iterations {
		id, typical, op := fx.staged, typicalData, "stage"
		if i%2 == 1 {
			id, typical, op = c.createVolume(fmt.Sprintf("stage-blank-%d", i), nil), typicalBlank, "stage-blank"
		}
		staging := fx.path("stage")
		c.killDuring(op, typical, call(id, staging), func() string { return c.nodePhase(id, staging) })
		c.retry("NodeStageVolume", call(id, staging))
		c.checkStaged(id, staging)
		if id == fx.staged {
			if got := sha256Of(c.t, filepath.Join(staging, "data"), -1); got != fx.data {
				c.t.Errorf("staged volume %s: data sha256 %s, want %s", id, got, fx.data)
			}
		} else {
			sum := writeRandom(c.t, filepath.Join(staging, "new"), MiB)
			if got := sha256Of(c.t, filepath.Join(staging, "new"), -1); got != sum {
				c.t.Errorf("volume %s formatted at a retried stage does not keep what is written", id)
			}
		}
		c.unstage(id, staging)
		c.checkUnstaged(id, staging)
		if id != fx.staged {
			c.deleteVolume(id)
		}
	}
}

// unstage: NodeUnstageVolume, killed while unmounting or detaching.
func (fx *fixture) unstage(iterations int) {
	c := fx.c
	id := fx.staged
	call := func(staging string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
			return err
		}
	}
	staging := fx.path("unstage")
	c.stage(id, staging)
	typical := c.timed(call(staging))
	for range iterations {
		staging := fx.path("unstage")
		c.stage(id, staging)
		if got := sha256Of(c.t, filepath.Join(staging, "data"), -1); got != fx.data {
			c.t.Errorf("volume %s staged again: data sha256 %s, want %s", id, got, fx.data)
		}
		c.killDuring("unstage", typical, call(staging), func() string { return c.nodePhase(id, staging) })
		c.retry("NodeUnstageVolume", call(staging))
		c.checkUnstaged(id, staging)
	}
}

// objectPhase describes a volume or snapshot's state in the pool right
// after a kill: present or absent, with what is left in .staging and
// .trash (and mounts or loop devices of half-made objects).
func (c *crasher) objectPhase(kind, id string) string {
	var parts []string
	if _, err := os.Stat(filepath.Join(c.e.pool, kind, id)); err == nil {
		parts = append(parts, "complete")
	} else {
		parts = append(parts, "absent")
	}
	for _, dir := range []string{".staging", ".trash"} {
		if len(c.e.poolEntries(c.t, dir)) > 0 {
			parts = append(parts, "in "+dir)
		}
	}
	if len(mountsUnder(c.t, c.e.pool)) > 0 {
		parts = append(parts, "mounted in the pool")
	}
	for _, file := range loopsUnder(c.t, c.e.pool) {
		if !strings.Contains(file, "/volumes/") {
			parts = append(parts, "loop device on a half-made file")
			break
		}
	}
	return strings.Join(parts, "+")
}

// expandPhase says how far an expansion from size got.
func (c *crasher) expandPhase(id string, size int64) string {
	b, err := testpool.ReadRecord(filepath.Join(c.e.pool, "volumes", id))
	var meta struct {
		SizeBytes int64 `json:"sizeBytes"`
	}
	if err != nil || json.Unmarshal(b, &meta) != nil {
		return "record unreadable"
	}
	switch grown := fileSize(c.t, c.e.volumeFile(id)) > size; {
	case meta.SizeBytes > size:
		return "recorded"
	case grown:
		return "file grown, not recorded"
	}
	return "untouched"
}

// nodePhase says whether a volume is attached and mounted at staging.
func (c *crasher) nodePhase(id, staging string) string {
	attached := "detached"
	if len(loopsUnder(c.t, filepath.Join(c.e.pool, "volumes", id))) > 0 {
		attached = "attached"
	}
	mounted := "unmounted"
	if len(mountsUnder(c.t, staging)) > 0 {
		mounted = "mounted"
	}
	return attached + "+" + mounted
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
