package harness

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// FillFilesystem takes every block that the filesystem holding dir will
// still give, as other data sharing a pool's filesystem can, and gives them
// back at cleanup. It allocates with fallocate, which fails at once where a
// buffered write would only fail at writeback, and goes on in ever smaller
// steps until even one block is refused: statfs does not say exactly what
// root may still take (ext4's reserves, XFS's set-aside).
func FillFilesystem(t testing.TB, dir string) {
	t.Helper()
	f, err := os.CreateTemp(dir, "filler-")
	if err != nil {
		t.Fatalf("fill %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = os.Remove(f.Name()) })
	defer f.Close()
	var off int64
	for step := int64(64 << 20); step >= 4096; step /= 2 {
		for {
			err := unix.Fallocate(int(f.Fd()), 0, off, step)
			if errors.Is(err, unix.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatalf("fill %s: fallocate %d bytes at %d: %v", dir, step, off, err)
			}
			off += step
		}
	}
	if err := f.Sync(); err != nil && !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("fill %s: %v", dir, err)
	}
	t.Logf("filled %s with %d bytes", dir, off)
}
