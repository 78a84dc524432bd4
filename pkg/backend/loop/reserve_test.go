package loop

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/backend/reserve/reservetest"
	"github.com/tarn-csi/tarn/test/testpool"
)

// Calls under different names run side by side (the driver only
// serialises calls per name), each checked against capacity before it
// writes: together they must never be promised more than GetCapacity
// reported, and those that do not fit must fail with ErrNoSpace before
// anything is written.
func TestParallelCallsNeverPromiseMoreThanCapacity(t *testing.T) {
	const callers = 12
	for _, tc := range []struct {
		name string
		// copies forces the copy path, whose space is real data.
		copies bool
		// prepare makes what the calls work on, on an empty pool.
		prepare func(t *testing.T, b *Backend)
		// need is what each call asks for, given what is available.
		need func(t *testing.T, b *Backend, avail int64) int64
		call func(ctx context.Context, b *Backend, i int, need int64) error
	}{
		{
			name: "create",
			need: func(_ *testing.T, _ *Backend, avail int64) int64 { return roundDown(avail * 2 / 9) },
			call: func(ctx context.Context, b *Backend, i int, need int64) error {
				_, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: fmt.Sprint("v", i), RequiredBytes: need})
				return err
			},
		},
		{
			name: "expand",
			prepare: func(t *testing.T, b *Backend) {
				for i := range callers {
					mustCreate(t, b, fmt.Sprint("e", i), backend.MiB)
				}
			},
			need: func(_ *testing.T, _ *Backend, avail int64) int64 { return roundDown(avail * 2 / 9) },
			call: func(ctx context.Context, b *Backend, i int, need int64) error {
				_, err := b.ExpandVolume(ctx, backend.VolumeIDFor(fmt.Sprint("e", i)), backend.MiB+need, 0)
				return err
			},
		},
		{
			name:   "snapshot by copy",
			copies: true,
			prepare: func(t *testing.T, b *Backend) {
				const data = 16 * backend.MiB
				src := mustCreate(t, b, "src", data)
				fillFile(t, filepath.Join(b.volumeDir(src), dataFile), data)
				// A sparse filler leaves room for two or three copies on
				// paper while the disk has room for all of them, so only
				// the accounting can refuse the rest.
				c, err := b.Capacity(context.Background(), nil)
				if err != nil {
					t.Fatal(err)
				}
				mustCreate(t, b, "filler", c.AvailableBytes-5*data/2)
			},
			need: func(t *testing.T, b *Backend, _ int64) int64 {
				return allocatedBytes(filepath.Join(b.volumeDir(backend.VolumeIDFor("src")), dataFile))
			},
			call: func(ctx context.Context, b *Backend, i int, _ int64) error {
				_, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: fmt.Sprint("s", i), SourceVolumeID: backend.VolumeIDFor("src")})
				return err
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testpool.New(t, testpool.XFSReflink, 512*backend.MiB)
			b, err := New(ctx, Config{PoolDir: pool, Loop: &fakeLoop{}, DisableReflink: tc.copies})
			if err != nil {
				t.Fatal(err)
			}
			if tc.prepare != nil {
				tc.prepare(t, b)
			}
			before, err := b.Capacity(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			need := tc.need(t, b, before.AvailableBytes)
			reservetest.ParallelPromises(t, callers, need, before.AvailableBytes,
				func(i int) error { return tc.call(ctx, b, i, need) })
			if left, err := os.ReadDir(filepath.Join(pool, stagingDir)); err != nil || len(left) > 0 {
				t.Errorf("staging after the calls: %v, %v; want it empty", left, err)
			}
			if p := b.ledger.Pending(); p != 0 {
				t.Errorf("%d bytes still reserved after every call returned", p)
			}
		})
	}
}

func mustCreate(t *testing.T, b *Backend, name string, size int64) string {
	t.Helper()
	v, err := b.CreateVolume(context.Background(), backend.VolumeRequest{Name: name, RequiredBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	return v.ID
}

// fillFile writes size random bytes over a data file, allocating them.
func fillFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, backend.MiB)
	for written := int64(0); written < size; written += int64(len(buf)) {
		_, _ = rand.Read(buf)
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
