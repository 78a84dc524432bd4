package lvm

import (
	"strings"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// classify returns the backend sentinel for an LVM error message, nil when
// none applies. It is the one place where LVM's wording becomes meaning: LVM
// has no machine-readable error codes (nearly every failure exits 5), so the
// text is all there is. The messages are LVM 2.03's, run with LC_ALL=C.
//
// Warnings are skipped: LVM prints them on success and failure alike
// ("WARNING: Device for PV ... not found"), and they must not decide what a
// failure means. The first line that maps to something wins.
func classify(stderr string) error {
	for _, line := range strings.Split(stderr, "\n") {
		l := strings.ToLower(strings.TrimSpace(line))
		if l == "" || strings.HasPrefix(l, "warning:") {
			continue
		}
		if err := classifyLine(l); err != nil {
			return err
		}
	}
	return nil
}

// classifyLine maps one lower-cased message line. Order matters: specific
// cases come before the generic "not found".
func classifyLine(l string) error {
	has := func(words ...string) bool {
		for _, w := range words {
			if !strings.Contains(l, w) {
				return false
			}
		}
		return true
	}
	switch {
	// Volume group "vg" has insufficient free space (N extents): M required.
	// Insufficient free space: N extents needed, but only M available
	case has("insufficient free space"),
		has("not enough free"),
		has("insufficient suitable allocatable extents"),
		// Cannot create new thin volume, free space in thin pool vg/pool
		// reached threshold.
		has("free space in thin pool", "threshold"):
		return backend.ErrNoSpace
	// Volume group "vg" not found: the backend's storage is missing, not
	// the object the call named. Anchored, because "Snapshot origin LV lv
	// not found in Volume group vg." is about an LV.
	case strings.HasPrefix(l, `volume group "`) && has("not found"):
		return backend.ErrNotReady
	// Failed to find logical volume "vg/lv"
	// Snapshot origin LV lv not found in Volume group vg.
	case has("failed to find logical volume"), has("not found"):
		return backend.ErrNotFound
	// Logical Volume "lv" already exists in volume group "vg"
	case has("already exists"):
		return backend.ErrAlreadyExists
	// Logical volume vg/lv in use.
	// Logical volume vg/lv contains a filesystem in use.
	// Can't remove open logical volume "lv"
	// device-mapper: remove ioctl on vg-lv failed: Device or resource busy
	// A *suspend* failing with EBUSY is not "in use" (it is a frozen
	// filesystem on older kernels), so only remove is matched.
	case has(" in use"), has("open logical volume"), has("remove ioctl", "busy"):
		return backend.ErrInUse
	}
	return nil
}
