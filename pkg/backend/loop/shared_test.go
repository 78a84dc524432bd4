package loop

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/test/testpool"
)

// A reflink clone or snapshot makes its origin's blocks shared, which only
// the origin's record tells capacity (an overwrite of them needs new
// blocks). When that record cannot be written the call must fail and make
// nothing: a clone that succeeded would leave capacity counting the
// origin's allocated blocks as already paid for.
func TestUnrecordedSharingFailsTheClone(t *testing.T) {
	const data = 8 * backend.MiB
	for _, tc := range []struct {
		name string
		// refuse makes writing the origin's record fail.
		refuse func(t *testing.T, b *Backend, originDir string)
		// noSpace: the failure is the pool's lack of space, which the
		// caller must be told as ErrNoSpace.
		noSpace bool
		call    func(ctx context.Context, b *Backend, origin string) (newDir string, err error)
	}{
		{name: "clone, record refused by the filesystem", refuse: immutable, call: cloneOf},
		{name: "snapshot, record refused by the filesystem", refuse: immutable, call: snapshotOf},
		{name: "clone, no space for the record", refuse: replaceFailsWith(unix.ENOSPC), noSpace: true, call: cloneOf},
		{name: "snapshot, no space for the record", refuse: replaceFailsWith(unix.ENOSPC), noSpace: true, call: snapshotOf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testpool.New(t, testpool.XFSReflink, 512*backend.MiB)
			b, err := New(ctx, Config{PoolDir: pool, Loop: &fakeLoop{}})
			if err != nil {
				t.Fatal(err)
			}
			if !b.Reflink() {
				t.Fatal("an XFS pool made with reflink=1 does not reflink")
			}
			origin := mustCreate(t, b, "origin", 32*backend.MiB)
			fillFile(t, filepath.Join(b.volumeDir(origin), dataFile), data)
			before, err := b.Capacity(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			tc.refuse(t, b, b.volumeDir(origin))

			newDir, err := tc.call(ctx, b, origin)
			if err == nil {
				after, _ := b.Capacity(ctx, nil)
				t.Fatalf("succeeded although the origin's record of shared extents could not be written; "+
					"capacity went from %d to %d bytes, not counting the origin's %d shared bytes", before.AvailableBytes, after.AvailableBytes, data)
			}
			if got := errors.Is(err, backend.ErrNoSpace); got != tc.noSpace {
				t.Errorf("%v: ErrNoSpace %v, want %v", err, got, tc.noSpace)
			}
			if _, err := os.Stat(newDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the failed call left %s (%v)", newDir, err)
			}
			if left, err := os.ReadDir(filepath.Join(pool, stagingDir)); err != nil || len(left) > 0 {
				t.Errorf("staging after the failed call: %v, %v; want it empty", left, err)
			}
			if m, err := b.readVolume(origin); err != nil || m.Shared {
				t.Errorf("origin's record after the failed call: %+v, %v; want it unchanged, not shared", m, err)
			}
			if after, err := b.Capacity(ctx, nil); err != nil || after.AvailableBytes != before.AvailableBytes {
				t.Errorf("capacity after the failed call: %+v, %v; want %d bytes as before", after, err, before.AvailableBytes)
			}
		})
	}
}

func cloneOf(ctx context.Context, b *Backend, origin string) (string, error) {
	_, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "clone", RequiredBytes: 32 * backend.MiB, Source: backend.Source{VolumeID: origin}})
	return b.volumeDir(backend.VolumeIDFor("clone")), err
}

func snapshotOf(ctx context.Context, b *Backend, origin string) (string, error) {
	_, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: "snap", SourceVolumeID: origin})
	return b.snapshotDir(backend.SnapshotIDFor("snap")), err
}

// immutable makes the real filesystem refuse any change to the origin's
// directory, its xattrs included, while its data file stays readable.
func immutable(t *testing.T, _ *Backend, dir string) {
	t.Helper()
	if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
		t.Fatalf("chattr +i %s: %v\n%s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("chattr", "-i", dir).CombinedOutput(); err != nil {
			t.Errorf("chattr -i %s: %v\n%s", dir, err, out)
		}
	})
}

// replaceFailsWith makes replacing a published record fail with errno, as
// a full pool can, while new objects' records are still written.
func replaceFailsWith(errno unix.Errno) func(*testing.T, *Backend, string) {
	return func(_ *testing.T, b *Backend, _ string) {
		b.setxattr = func(path, attr string, data []byte, flags int) error {
			if flags == unix.XATTR_REPLACE {
				return errno
			}
			return unix.Setxattr(path, attr, data, flags)
		}
	}
}
