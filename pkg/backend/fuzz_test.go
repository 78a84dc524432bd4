package backend

import (
	"math"
	"strings"
	"testing"
)

// FuzzIDs checks that nothing but an ID Tarn made is accepted, so that an
// outside string can never become a path or an LV name.
func FuzzIDs(f *testing.F) {
	for _, s := range []string{"", "vol-", VolumeIDFor("pvc-1"), SnapshotIDFor("s"), "vol-../../etc/passwd",
		"vol-0123456789abcdef0123456789abcdef/x", "snap-" + strings.Repeat("0", 32), "VOL-" + strings.Repeat("a", 32)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, valid := range []func(string) bool{ValidVolumeID, ValidSnapshotID} {
			if !valid(s) {
				continue
			}
			if strings.ContainsAny(s, "/\\.\x00 ") || len(s) > 40 {
				t.Fatalf("accepted %q", s)
			}
		}
		if err := ValidateName(s); err == nil {
			id := VolumeIDFor(s)
			if !ValidVolumeID(id) || ValidSnapshotID(id) {
				t.Fatalf("name %q gave id %q", s, id)
			}
		}
	})
}

func FuzzRoundSize(f *testing.F) {
	f.Add(int64(0), int64(0), "ext4")
	f.Add(int64(1), int64(300<<20), "xfs")
	f.Add(int64(-5), int64(7), "")
	f.Add(int64(1<<62), int64(0), "")
	f.Add(int64(math.MaxInt64), int64(0), "")
	f.Fuzz(func(t *testing.T, required, limit int64, fsType string) {
		size, err := RoundSize(required, limit, fsType)
		if err != nil {
			return
		}
		if size < required || size < MinSize(fsType) || size%SizeGranularity != 0 {
			t.Fatalf("RoundSize(%d, %d, %q) = %d", required, limit, fsType, size)
		}
		if limit > 0 && size > limit {
			t.Fatalf("RoundSize(%d, %d, %q) = %d exceeds the limit", required, limit, fsType, size)
		}
	})
}
