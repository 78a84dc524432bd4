package reliability

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/faults"
	"github.com/tarn-csi/tarn/test/testpool"
)

// faultRun is the run of one fault point: the crash test's machinery (its
// t is the point's subtest) and the fixture every point shares.
type faultRun struct {
	*crasher
	fx    *faultFixture
	point string
}

// instant is the point's name without its operation.
func (r *faultRun) instant() string {
	_, instant, _ := strings.Cut(r.point, ".")
	return instant
}

// phaseAtKill is what each point leaves in the pool and on the node, read
// right after the kill: the proof that the point lies where its name says.
var phaseAtKill = map[string]string{
	"create-volume.after-staging-dir":   "absent+in .staging: []",
	"create-volume.after-data-file":     "absent+in .staging: [data.img(empty)]",
	"create-volume.before-clone":        "absent+in .staging: [data.img(empty)]",
	"create-volume.after-clone":         "absent+in .staging: [data.img]",
	"create-volume.after-size":          "absent+in .staging: [data.img]",
	"create-volume.after-meta":          "absent+in .staging: [data.img record]",
	"create-volume.before-publish":      "absent+in .staging: [data.img record]",
	"create-volume.after-publish":       "complete: []",
	"create-snapshot.after-staging-dir": "absent+in .staging: []",
	"create-snapshot.after-data-file":   "absent+in .staging: [data.img(empty)]",
	"create-snapshot.before-clone":      "absent+in .staging: [data.img(empty)]",
	"create-snapshot.after-clone":       "absent+in .staging: [data.img]",
	"create-snapshot.after-thaw":        "absent+in .staging: [data.img]",
	"create-snapshot.after-meta":        "absent+in .staging: [data.img record]",
	"create-snapshot.before-publish":    "absent+in .staging: [data.img record]",
	"create-snapshot.after-publish":     "complete: []",
	"delete-volume.before-trash":        "complete",
	"delete-volume.after-trash":         "absent+in .trash",
	"delete-volume.before-empty":        "absent+in .trash",
	"delete-snapshot.before-trash":      "complete",
	"delete-snapshot.after-trash":       "absent+in .trash",
	"delete-snapshot.before-empty":      "absent+in .trash",
	"expand-volume.after-truncate":      "file grown, not recorded",
	"expand-volume.after-meta":          "recorded",
	"stage-volume.after-attach":         "attached+unmounted, holding xfs",
	"stage-volume.before-mount":         "attached+unmounted, holding xfs", // a blank volume: after mkfs
	"stage-volume.after-mount":          "attached+mounted, holding xfs",
	"unstage-volume.after-unmount":      "attached+unmounted",
}

// killAt stops the driver, starts it again armed at the point, and makes
// call, which must reach the point: the driver then SIGKILLs itself there,
// and the call fails as the driver vanishes. phase, read right after, must
// be the point's phaseAtKill. An unarmed driver is started again by
// restart.
func (r *faultRun) killAt(call func(ctx context.Context) error, phase func() string) {
	t, e := r.t, r.e
	t.Helper()
	e.proc.Terminate(t, terminateWait)
	e.serveWith(t, e.work, faults.EnvPoint+"="+r.point)
	p := e.proc
	ctx, cancel := callCtx()
	err := call(ctx)
	cancel()
	wait := 10 * time.Second
	if err == nil {
		wait = time.Second
	}
	select {
	case <-p.Done():
	case <-time.After(wait):
		p.Kill(t, killWait)
		t.Fatalf("the call returned %v and the driver kept running: %s was never reached", err, r.point)
	}
	if err == nil {
		t.Fatalf("the call succeeded, then the driver died (%v): %s was reached after the call", p.Err(), r.point)
	}
	var exit *exec.ExitError
	if !errors.As(p.Err(), &exit) {
		t.Fatalf("the driver ended with %v, not SIGKILL", p.Err())
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the driver ended with %v, not SIGKILL", p.Err())
	}
	if out := p.Out.Since(0); !strings.Contains(out, "Fault point reached") || !strings.Contains(out, `point="`+r.point+`"`) {
		t.Fatalf("the driver was SIGKILLed, but its log does not say it was at %s", r.point)
	}
	if got, want := phase(), phaseAtKill[r.point]; got != want {
		t.Errorf("right after the kill at %s: %q, want %q", r.point, got, want)
	}
}

// stagingContents lists what the one object being built in .staging holds
// (an empty data file marked).
func (r *faultRun) stagingContents() string {
	entries := r.e.poolEntries(r.t, ".staging")
	if len(entries) > 1 {
		return fmt.Sprintf(": %d objects in .staging", len(entries))
	}
	names := []string{}
	for _, entry := range entries {
		for _, name := range r.e.poolEntries(r.t, filepath.Join(".staging", entry)) {
			path := filepath.Join(r.e.pool, ".staging", entry, name)
			if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
				name += "(empty)"
			}
			names = append(names, name)
		}
		if testpool.HasRecordXattr(filepath.Join(r.e.pool, ".staging", entry)) {
			names = append(names, "record")
		}
	}
	return fmt.Sprintf(": %v", names)
}

// formatted names the filesystem in an image, as blkid finds it.
func formatted(t *testing.T, image string) string {
	out, err := exec.Command("blkid", "-p", "-s", "TYPE", "-o", "value", image).Output()
	if err != nil {
		return ", holding nothing"
	}
	return ", holding " + strings.TrimSpace(string(out))
}

// restart starts the driver unarmed on the same pool and checks what it
// made of the pool before any retry: nothing half-made or half-deleted
// left, listings and capacity that agree with the pool.
func (r *faultRun) restart() {
	r.t.Helper()
	r.e.serve(r.t, r.e.work)
	r.checkPool()
	r.checkAccounting()
}

// retry repeats the call as the sidecars do; after a restart the first
// real answer must be success.
func (r *faultRun) retry(what string, call func(ctx context.Context) error) {
	r.t.Helper()
	r.retryErrors = map[string]int{}
	r.crasher.retry(what, call)
	if len(r.retryErrors) > 0 {
		r.t.Errorf("%s after the restart failed before it succeeded: %v", what, r.retryErrors)
	}
	r.checkPool()
	r.checkAccounting()
}

// checkAccounting checks that a volume whose file shares extents (with a
// snapshot or clone) is recorded as shared, which is what keeps GetCapacity
// from promising the blocks that overwriting it needs, and that
// GetCapacity is what the pool on disk gives: its free space less every
// volume's reserve. XFS frees blocks of deleted files in the background,
// so the check is retried for a moment while free space moves.
func (r *faultRun) checkAccounting() {
	t, e := r.t, r.e
	t.Helper()
	type record struct {
		SizeBytes int64 `json:"sizeBytes"`
		Shared    bool  `json:"shared"`
	}
	reserved := func() int64 {
		var sum int64
		for _, id := range e.poolEntries(t, "volumes") {
			b, err := testpool.ReadRecord(filepath.Join(e.pool, "volumes", id))
			var m record
			if err == nil {
				err = json.Unmarshal(b, &m)
			}
			if err != nil {
				t.Fatalf("record of volume %s: %v", id, err)
			}
			data := e.volumeFile(id)
			if shared, err := testpool.SharedExtents(data); err != nil {
				t.Fatal(err)
			} else if shared && !m.Shared {
				t.Errorf("volume %s shares extents with a snapshot or clone, but its record does not say so: GetCapacity overstates what is free", id)
			}
			if m.Shared {
				sum += m.SizeBytes
				continue
			}
			var st unix.Stat_t
			if err := unix.Stat(data, &st); err != nil {
				t.Fatal(err)
			}
			sum += max(0, m.SizeBytes-st.Blocks*512)
		}
		return sum
	}
	free := func() int64 {
		var st unix.Statfs_t
		if err := unix.Statfs(e.pool, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}
	expect := func(free, reserved int64) int64 {
		return max(0, free-reserved) / backend.SizeGranularity * backend.SizeGranularity
	}
	var got, lo, hi int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		before, res := free(), reserved()
		ctx, cancel := callCtx()
		resp, err := e.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{})
		cancel()
		if err != nil {
			t.Fatalf("GetCapacity: %v", err)
		}
		after := free()
		got, lo, hi = resp.GetAvailableCapacity(), expect(min(before, after), res), expect(max(before, after), res)
		if (got >= lo && got <= hi) || time.Now().After(deadline) {
			break
		}
	}
	if got < lo || got > hi {
		t.Errorf("GetCapacity: %d bytes available, but the pool's free space less its volumes' reserves is %d to %d", got, lo, hi)
	}
}

// checkBaseline checks that the point's run left the pool and the node as
// it found them: only the fixture's objects, nothing in .staging or
// .trash, no loop device and no mount.
func (r *faultRun) checkBaseline() {
	t, e := r.t, r.e
	t.Helper()
	for dir, want := range map[string][]string{
		"volumes": {r.fx.src}, "snapshots": {r.fx.snap}, ".staging": nil, ".trash": nil,
	} {
		if got := e.poolEntries(t, dir); !slices.Equal(got, want) && len(got)+len(want) > 0 {
			t.Errorf("pool/%s after the run: %v, want %v", dir, got, want)
		}
	}
	if loops := loopsUnder(t, e.pool); len(loops) > 0 {
		t.Errorf("loop devices left after the run: %v", loops)
	}
	if m := mountsUnder(t, e.work); len(m) > 0 {
		t.Errorf("mounts left after the run: %v", m)
	}
}

// verify stages a volume, checks its file "data" (when sum is set) and
// that its filesystem fills it, and unstages it.
func (r *faultRun) verify(id, sum string) {
	r.t.Helper()
	staging := r.fx.path("verify")
	r.stage(id, staging)
	if sum != "" {
		if got := sha256Of(r.t, filepath.Join(staging, "data"), -1); got != sum {
			r.t.Errorf("volume %s: data sha256 %s, want %s", id, got, sum)
		}
	}
	r.checkFilesystemSize(id, staging)
	r.unstage(id, staging)
	r.checkUnstaged(id, staging)
}

// checkFilesystemSize fails the test unless the XFS mounted at staging
// spans the whole volume: a stage must grow the filesystem of a volume
// restored or expanded into a larger size.
func (r *faultRun) checkFilesystemSize(id, staging string) {
	r.t.Helper()
	size := r.volumeSize(id)
	out, err := exec.Command("xfs_io", "-c", "statfs", staging).Output()
	if err != nil {
		r.t.Fatalf("xfs_io -c statfs %s: %v", staging, err)
	}
	geom := map[string]int64{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, " = "); ok {
			geom[k], _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if fs := geom["geom.datablocks"] * geom["geom.bsize"]; fs != size {
		r.t.Errorf("volume %s of %d bytes holds a filesystem of %d: it was not grown", id, size, fs)
	}
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
		_, err = f.Write([]byte("after the kill"))
		done <- errors.Join(err, f.Sync(), f.Close())
	}()
	return done
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
