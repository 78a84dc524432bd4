package reliability

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// crasher kills `tarn serve` in the middle of operations and restarts it,
// and records where each kill landed.
type crasher struct {
	t *testing.T
	e *env
	r *rand.Rand
	// points counts, per operation, the states the pool and the kernel
	// were found in right after a kill.
	points map[string]map[string]int
	// early counts kills that came after the call had already returned.
	early map[string]int
	// retryErrors are the errors, other than the driver being away, that
	// retries met before succeeding.
	retryErrors map[string]int
	// verifications numbers the staging paths of verifyVolume.
	verifications int
}

// killDuring starts call, SIGKILLs the driver after a random delay in
// [0, typical], and returns once the call has returned. phase describes
// the state the kill left, read before the restart.
func (c *crasher) killDuring(op string, typical time.Duration, call func(ctx context.Context) error, phase func() string) {
	c.t.Helper()
	delay := time.Duration(c.r.Int64N(int64(typical) + 1))
	done := make(chan error, 1)
	go func() {
		ctx, cancel := callCtx()
		defer cancel()
		done <- call(ctx)
	}()
	time.Sleep(delay)
	select {
	case <-done:
		c.early[op]++
		c.e.proc.Kill(c.t, killWait)
	default:
		c.e.proc.Kill(c.t, killWait)
		<-done
	}
	if c.points[op] == nil {
		c.points[op] = map[string]int{}
	}
	c.points[op][phase()]++
	c.e.serve(c.t, c.e.work)
	c.checkPool()
}

// retry repeats a call until it succeeds, as the sidecars do, for up to a
// minute. Answers other than the driver being away or busy are remembered
// for the report.
func (c *crasher) retry(what string, call func(ctx context.Context) error) {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := callCtx()
		err := call(ctx)
		cancel()
		if err == nil {
			return
		}
		last = err
		if code := status.Code(err); code != codes.Unavailable && code != codes.Aborted {
			msg := status.Convert(err).Message()
			c.retryErrors[what+": "+code.String()+": "+msg[:strings.IndexAny(msg+"/", "/0123456789")]]++
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("%s never succeeded after the restart: %v", what, last)
}

// checkPool checks what a restarted driver must have made of the pool:
// nothing half-made or half-deleted left, no mount or loop device for
// anything that is not a complete volume, and listings and capacity that
// agree with the pool's directories.
func (c *crasher) checkPool() {
	t, e := c.t, c.e
	t.Helper()
	for _, dir := range []string{".staging", ".trash"} {
		if left := e.poolEntries(t, dir); len(left) > 0 {
			t.Errorf("pool/%s after the restart: %v, want it swept", dir, left)
		}
	}
	if m := mountsUnder(t, e.pool); len(m) > 0 {
		t.Errorf("mounts inside the pool after the restart: %v", m)
	}
	for dev, file := range loopsUnder(t, e.pool) {
		if strings.HasSuffix(file, " (deleted)") || !strings.HasPrefix(file, filepath.Join(e.pool, "volumes")+"/") {
			t.Errorf("after the restart %s is still attached to %s", dev, file)
		}
	}
	ctx, cancel := callCtx()
	defer cancel()
	vols, err := e.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("ListVolumes after the restart: %v", err)
	}
	var listed []string
	var sizes int64
	for _, v := range vols.GetEntries() {
		listed = append(listed, v.GetVolume().GetVolumeId())
		sizes += v.GetVolume().GetCapacityBytes()
	}
	sort.Strings(listed)
	if dirs := e.poolEntries(t, "volumes"); !slices.Equal(listed, dirs) {
		t.Errorf("ListVolumes after the restart: %v, but the pool holds %v", listed, dirs)
	}
	snaps, err := e.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatalf("ListSnapshots after the restart: %v", err)
	}
	listed = listed[:0]
	for _, s := range snaps.GetEntries() {
		listed = append(listed, s.GetSnapshot().GetSnapshotId())
	}
	sort.Strings(listed)
	if dirs := e.poolEntries(t, "snapshots"); !slices.Equal(listed, dirs) {
		t.Errorf("ListSnapshots after the restart: %v, but the pool holds %v", listed, dirs)
	}
	c.checkCapacity(sizes)
}

// checkCapacity checks GetCapacity against the pool filesystem: at most
// its free space, at least its free space less every volume's whole size
// (the most a volume can reserve), rounded to the MiB the driver rounds
// to. XFS frees the blocks of deleted files in the background, so free
// space is read before and after the call, and the check is retried for a
// moment while it moves.
func (c *crasher) checkCapacity(sizes int64) {
	t, e := c.t, c.e
	t.Helper()
	free := func() int64 {
		var st unix.Statfs_t
		if err := unix.Statfs(e.pool, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}
	var avail, lo, hi int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		before := free()
		ctx, cancel := callCtx()
		resp, err := e.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{})
		cancel()
		if err != nil {
			t.Fatalf("GetCapacity after the restart: %v", err)
		}
		after := free()
		avail, lo, hi = resp.GetAvailableCapacity(), min(before, after), max(before, after)
		if (avail <= hi && avail >= lo-sizes-backend.SizeGranularity) || time.Now().After(deadline) {
			break
		}
	}
	if avail > hi || avail < lo-sizes-backend.SizeGranularity {
		t.Errorf("GetCapacity after the restart: %d bytes available; the pool has %d to %d free and its volumes total %d", avail, lo, hi, sizes)
	}
}

// report prints, per operation, where the kills landed.
func (c *crasher) report() {
	ops := make([]string, 0, len(c.points))
	for op := range c.points {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	var b strings.Builder
	total := 0
	for _, op := range ops {
		var parts []string
		kills := 0
		for p, n := range c.points[op] {
			parts = append(parts, fmt.Sprintf("%s=%d", p, n))
			kills += n
		}
		total += kills
		sort.Strings(parts)
		fmt.Fprintf(&b, "  %-18s %2d kills (%d after the call returned): %s\n", op, kills, c.early[op], strings.Join(parts, ", "))
	}
	c.t.Logf("crash safety: %d kills; states found right after each kill:\n%s", total, b.String())
	if len(c.retryErrors) > 0 {
		c.t.Logf("crash safety: errors met by retries before they succeeded: %v", c.retryErrors)
	}
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

// sha256Of hashes the first n bytes of path (all of it when n < 0).
func sha256Of(t *testing.T, path string, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = f
	if n >= 0 {
		r = io.LimitReader(f, n)
	}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// recordSize is the unit the stream writer appends: an 8-byte sequence
// number followed by a pattern derived from it, so that any prefix of the
// stream can be checked without remembering what was written.
const recordSize = 4096

func record(seq uint64) []byte {
	b := make([]byte, recordSize)
	binary.LittleEndian.PutUint64(b, seq)
	for i := 8; i < recordSize; i++ {
		b[i] = byte(seq*31 + uint64(i))
	}
	return b
}

// streamWriter appends records to a file on a mounted volume until
// stopped, as a database writing its log would. Each write is one whole
// record, so a consistent snapshot holds only whole records.
type streamWriter struct {
	stop    chan struct{}
	done    chan error
	written atomic.Uint64
}

func startStream(path string, maxRecords uint64) *streamWriter {
	w := &streamWriter{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			w.done <- err
			return
		}
		defer f.Close()
		for n := uint64(0); ; n++ {
			select {
			case <-w.stop:
				w.done <- nil
				return
			default:
			}
			if n >= maxRecords {
				<-w.stop
				w.done <- nil
				return
			}
			if _, err := f.Write(record(n)); err != nil {
				w.done <- err
				return
			}
			w.written.Store(n + 1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return w
}

func (w *streamWriter) halt() error {
	close(w.stop)
	return <-w.done
}

// checkStream fails the test unless path holds whole, consecutive records
// from the first on, and returns how many.
func checkStream(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("read stream %s: %v", path, err)
		return 0
	}
	if len(b)%recordSize != 0 {
		t.Errorf("stream %s is %d bytes, not whole records: a write was cut in half", path, len(b))
	}
	for i := 0; i+recordSize <= len(b); i += recordSize {
		if got, want := b[i:i+recordSize], record(uint64(i/recordSize)); string(got) != string(want) {
			t.Errorf("stream %s: record %d is damaged", path, i/recordSize)
			return i / recordSize
		}
	}
	return len(b) / recordSize
}
