package filecopy

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tarn-csi/tarn/test/testpool"
	"golang.org/x/sys/unix"
)

const (
	poolSize = 512 << 20
	mib      = 1 << 20
)

// extent is a range of data in a fixture; everything else is a hole.
type extent struct{ off, len int64 }

type fixture struct {
	name    string
	size    int64
	extents []extent
}

// fixtures cover the shapes volume files take. Sizes are kept small enough
// that hashing them stays cheap.
func fixtures() []fixture {
	return []fixture{
		{"data hole data trailing hole", 82 * mib, []extent{{0, mib}, {65 * mib, mib}}},
		{"leading hole", 8 * mib, []extent{{4 * mib, mib}}},
		{"dense", 3 * mib, []extent{{0, 3 * mib}}},
		{"unaligned tail", 8*mib + 123, []extent{{0, 4096}, {8 * mib, 123}}},
		{"all hole", 32 * mib, nil},
		{"empty", 0, nil},
	}
}

// create writes f into dir with seeded random data, without syncing, so that
// the copy also has to find data that is still only in the page cache.
func (f fixture) create(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "src-"+f.name)
	file, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	rng := rand.New(rand.NewChaCha8([32]byte{byte(len(f.name))}))
	for _, e := range f.extents {
		buf := make([]byte, e.len)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := file.WriteAt(buf, e.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := file.Truncate(f.size); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestClone(t *testing.T) {
	pools := map[testpool.Kind]string{}
	for _, kind := range []testpool.Kind{testpool.XFSReflink, testpool.Btrfs, testpool.Ext4} {
		pools[kind] = testpool.New(t, kind, poolSize)
	}
	for _, tc := range []struct {
		kind         testpool.Kind
		allowReflink bool
		want         Method
	}{
		{testpool.XFSReflink, true, Reflink},
		{testpool.Btrfs, true, Reflink},
		{testpool.Ext4, true, SparseCopy},
		{testpool.XFSReflink, false, SparseCopy},
		{testpool.Btrfs, false, SparseCopy},
		{testpool.Ext4, false, SparseCopy},
	} {
		name := string(tc.kind)
		if !tc.allowReflink {
			name += "/no-reflink"
		}
		t.Run(name, func(t *testing.T) {
			dir, err := os.MkdirTemp(pools[tc.kind], "case-")
			if err != nil {
				t.Fatal(err)
			}
			for _, fx := range fixtures() {
				t.Run(fx.name, func(t *testing.T) {
					src := fx.create(t, dir)
					dst := filepath.Join(dir, "dst-"+fx.name)
					method := cloneFile(t, dst, src, tc.allowReflink)
					if method != tc.want {
						t.Errorf("method = %q, want %q", method, tc.want)
					}
					assertSameContent(t, dst, src)
					if len(fx.extents) > 0 {
						assertShared(t, dst, method == Reflink)
					}
					if method == SparseCopy {
						assertAsSparse(t, dst, src)
					}
				})
			}
		})
	}
}

// Across filesystems both FICLONE and copy_file_range refuse, so this takes
// the read/write path after two fallbacks.
func TestCloneAcrossFilesystems(t *testing.T) {
	from := testpool.New(t, testpool.Ext4, poolSize)
	to := testpool.New(t, testpool.XFSReflink, poolSize)
	fx := fixtures()[0]
	src := fx.create(t, from)
	dst := filepath.Join(to, "dst")
	if method := cloneFile(t, dst, src, true); method != SparseCopy {
		t.Errorf("method = %q, want %q", method, SparseCopy)
	}
	assertSameContent(t, dst, src)
	assertAsSparse(t, dst, src)
}

func TestCloneKeepsSourceOffset(t *testing.T) {
	dir := testpool.New(t, testpool.Ext4, poolSize)
	srcPath := fixtures()[0].create(t, dir)
	src, err := os.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const at = 12345
	if _, err := src.Seek(at, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	dst, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := Clone(dst, src); err != nil {
		t.Fatal(err)
	}
	if got, err := src.Seek(0, io.SeekCurrent); err != nil || got != at {
		t.Errorf("source offset after Clone = %d, %v; want %d", got, err, at)
	}
}

func TestCloneRefusesNonEmptyDestination(t *testing.T) {
	dir := t.TempDir()
	srcPath := filepath.Join(dir, "src")
	dstPath := filepath.Join(dir, "dst")
	for _, p := range []string{srcPath, dstPath} {
		if err := os.WriteFile(p, []byte("content"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src, err := os.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(dstPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if method, err := Clone(dst, src); err == nil {
		t.Errorf("Clone into a non-empty file = %q, nil; want an error", method)
	}
}

func TestSupportsReflink(t *testing.T) {
	for _, tc := range []struct {
		kind testpool.Kind
		want bool
	}{
		{testpool.XFSReflink, true},
		{testpool.Btrfs, true},
		{testpool.Ext4, false},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			dir := testpool.New(t, tc.kind, poolSize)
			before := listDir(t, dir)
			got, err := SupportsReflink(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("SupportsReflink = %v, want %v", got, tc.want)
			}
			if after := listDir(t, dir); !slices.Equal(after, before) {
				t.Errorf("probe left files behind: %v, before %v", after, before)
			}
		})
	}
}

func cloneFile(t *testing.T, dstPath, srcPath string, allowReflink bool) Method {
	t.Helper()
	src, err := os.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(dstPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	method, err := CloneWith(dst, src, allowReflink)
	if err != nil {
		t.Fatal(err)
	}
	return method
}

func assertSameContent(t *testing.T, dst, src string) {
	t.Helper()
	ds, dh := sizeAndHash(t, dst)
	ss, sh := sizeAndHash(t, src)
	if ds != ss || dh != sh {
		t.Errorf("copy differs: %d bytes sha256 %x, source %d bytes sha256 %x", ds, dh, ss, sh)
	}
}

func sizeAndHash(t *testing.T, path string) (int64, [sha256.Size]byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return n, [sha256.Size]byte(h.Sum(nil))
}

func assertShared(t *testing.T, path string, want bool) {
	t.Helper()
	got, err := testpool.SharedExtents(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("SharedExtents(%s) = %v, want %v", path, got, want)
	}
}

// assertAsSparse checks that dst takes about as much space as src rather than
// its full size. The slack allows for metadata blocks and for allocation
// granularity differing between filesystems.
func assertAsSparse(t *testing.T, dst, src string) {
	t.Helper()
	const slack = 256 << 10
	d, s := allocated(t, dst), allocated(t, src)
	if d > s+slack {
		t.Errorf("copy allocates %d bytes, source %d: holes were filled", d, s)
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
