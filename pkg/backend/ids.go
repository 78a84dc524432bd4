package backend

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
)

// IDs are derived from the CSI name so that a retried CreateVolume or
// CreateSnapshot finds its earlier result without any name index, and so
// that an ID can always be used as a file or LV name: a fixed prefix and 32
// lowercase hex digits, nothing that could climb out of a pool.
const (
	VolumeIDPrefix   = "vol-"
	SnapshotIDPrefix = "snap-"
	// MaxNameLength bounds CSI names; Kubernetes uses far shorter ones.
	MaxNameLength = 256
)

var (
	volumeIDPattern   = regexp.MustCompile(`^vol-[0-9a-f]{32}$`)
	snapshotIDPattern = regexp.MustCompile(`^snap-[0-9a-f]{32}$`)
)

// VolumeIDFor returns the volume ID for a CSI volume name.
func VolumeIDFor(name string) string { return VolumeIDPrefix + hashName(name) }

// SnapshotIDFor returns the snapshot ID for a CSI snapshot name.
func SnapshotIDFor(name string) string { return SnapshotIDPrefix + hashName(name) }

// ValidVolumeID says whether id could have been made by VolumeIDFor; any
// other string cannot name a volume and must never reach the filesystem.
func ValidVolumeID(id string) bool { return volumeIDPattern.MatchString(id) }

// ValidSnapshotID is ValidVolumeID for snapshots.
func ValidSnapshotID(id string) bool { return snapshotIDPattern.MatchString(id) }

// ValidateName checks a CSI name: names are hashed, so any bytes are safe,
// but an empty or huge name is a caller's mistake.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: name is empty", ErrInvalid)
	}
	if len(name) > MaxNameLength {
		return fmt.Errorf("%w: name is %d bytes, more than %d", ErrInvalid, len(name), MaxNameLength)
	}
	return nil
}

func hashName(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:16])
}
