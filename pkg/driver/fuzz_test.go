package driver

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// FuzzPaginate: any token and page size gives a page inside the list or a
// spec code, never a panic.
func FuzzPaginate(f *testing.F) {
	f.Add("", int32(0), 5)
	f.Add(backend.VolumeIDFor("x"), int32(2), 5)
	f.Add("invalid-token", int32(1), 0)
	f.Add("vol-ffffffffffffffffffffffffffffffff", int32(-3), 3)
	f.Fuzz(func(t *testing.T, token string, maxEntries int32, n int) {
		if n < 0 || n > 1000 {
			return
		}
		keys := make([]string, n)
		for i := range keys {
			keys[i] = backend.VolumeIDFor(strings.Repeat("k", i+1))
		}
		slices.Sort(keys)
		start, end, next, err := paginate(n, func(i int) string { return keys[i] }, token, maxEntries, backend.ValidVolumeID)
		if err != nil {
			if c := status.Code(err); c != codes.Aborted && c != codes.InvalidArgument {
				t.Fatalf("code %v", c)
			}
			return
		}
		if start < 0 || end > n || start > end {
			t.Fatalf("page [%d,%d) of %d", start, end, n)
		}
		if next != "" && (end >= n || next != keys[end]) {
			t.Fatalf("next %q after [%d,%d) of %d", next, start, end, n)
		}
	})
}

// FuzzRequestPaths: a path from the CO is accepted only when absolute and
// free of '..' and NUL.
func FuzzRequestPaths(f *testing.F) {
	for _, s := range []string{"/var/lib/kubelet/pods/x", "", "rel", "/a/../b", "/a/\x00", "/./a", "//a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if validatePath("path", p) != nil {
			return
		}
		if !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
			t.Fatalf("accepted %q", p)
		}
		for _, part := range strings.Split(p, "/") {
			if part == ".." {
				t.Fatalf("accepted %q", p)
			}
		}
	})
}

// FuzzParameters: StorageClass parameters either validate or give
// InvalidArgument; an accepted fsType is one Tarn can make.
func FuzzParameters(f *testing.F) {
	f.Add("fsType", "xfs")
	f.Add("fsType", "ntfs")
	f.Add("csi.storage.k8s.io/fstype", "ext4")
	f.Add("type", "thin")
	f.Fuzz(func(t *testing.T, k, v string) {
		out, err := volumeParameters(map[string]string{k: v})
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("code %v", status.Code(err))
			}
			return
		}
		if fs, ok := out[ParamFsType]; ok && !supportedFsTypes[fs] {
			t.Fatalf("accepted fsType %q", fs)
		}
	})
}
