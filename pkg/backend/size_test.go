package backend

import (
	"errors"
	"testing"
)

func TestRoundSize(t *testing.T) {
	tests := []struct {
		name            string
		required, limit int64
		fsType          string
		want            int64
		wantErr         error
	}{
		{"default when unset", 0, 0, "ext4", GiB, nil},
		{"default capped by limit", 0, 100 * MiB, "ext4", 100 * MiB, nil},
		{"rounded up to MiB", MiB + 1, 0, "", 2 * MiB, nil},
		{"xfs minimum", 10 * MiB, 0, "xfs", 300 * MiB, nil},
		{"xfs minimum within limit", 10 * MiB, 400 * MiB, "xfs", 300 * MiB, nil},
		{"xfs minimum beyond limit", 10 * MiB, 100 * MiB, "xfs", 0, ErrOutOfRange},
		{"rounding beyond limit falls back", MiB + 1, MiB + 100, "", 0, ErrOutOfRange},
		{"exact limit", 5 * MiB, 5 * MiB, "", 5 * MiB, nil},
		{"required above limit", 10 * MiB, 5 * MiB, "", 0, ErrOutOfRange},
		{"negative", -1, 0, "", 0, ErrOutOfRange},
		{"block minimum", 1, 0, "", MiB, nil},
		{"ext4 minimum", 1, 0, "ext4", 16 * MiB, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RoundSize(tt.required, tt.limit, tt.fsType)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("size = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestIDs(t *testing.T) {
	id := VolumeIDFor("pvc-1")
	if !ValidVolumeID(id) || ValidSnapshotID(id) {
		t.Fatalf("volume ID %q misclassified", id)
	}
	if VolumeIDFor("pvc-1") != id || VolumeIDFor("pvc-2") == id {
		t.Error("volume IDs must be deterministic and distinct")
	}
	if s := SnapshotIDFor("pvc-1"); !ValidSnapshotID(s) || ValidVolumeID(s) {
		t.Errorf("snapshot ID %q misclassified", s)
	}
	for _, bad := range []string{"", "vol-", "vol-../../etc", "vol-" + "A0000000000000000000000000000000",
		"vol-0000000000000000000000000000000/", "snap-00", "../vol-00000000000000000000000000000000"} {
		if ValidVolumeID(bad) || ValidSnapshotID(bad) {
			t.Errorf("%q accepted as an ID", bad)
		}
	}
	if err := ValidateName(""); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty name: %v", err)
	}
	if err := ValidateName(string(make([]byte, MaxNameLength+1))); !errors.Is(err, ErrInvalid) {
		t.Errorf("long name: %v", err)
	}
	if err := ValidateName("../../x"); err != nil {
		t.Errorf("names are hashed, any bytes are fine: %v", err)
	}
}
