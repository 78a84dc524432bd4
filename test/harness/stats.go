package harness

import "github.com/container-storage-interface/spec/lib/go/csi"

// Usage picks the BYTES and INODES entries out of a NodeGetVolumeStats
// answer; either is nil when the answer has none (a block volume has no
// inodes).
func Usage(r *csi.NodeGetVolumeStatsResponse) (bytes, inodes *csi.VolumeUsage) {
	for _, u := range r.GetUsage() {
		switch u.GetUnit() {
		case csi.VolumeUsage_BYTES:
			bytes = u
		case csi.VolumeUsage_INODES:
			inodes = u
		}
	}
	return bytes, inodes
}
