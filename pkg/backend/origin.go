package backend

import "fmt"

// FilesystemFromBlockError is the refusal of a filesystem volume whose
// content source, a snapshot or a volume, holds what a raw block volume
// held. Those bytes are whatever the volume's user wrote, and the node
// would mount them: a crafted image then attacks the kernel's filesystem
// code, which is why Kubernetes refuses such volume mode conversion too.
// The bytes stay usable as raw block.
func FilesystemFromBlockError(src Source) error {
	if src.VolumeID != "" {
		return fmt.Errorf("%w: volume %s is a raw block volume; it can only be cloned as a raw block volume: its bytes were written by a tenant and are never mounted as a filesystem",
			ErrInvalid, src.VolumeID)
	}
	return fmt.Errorf("%w: snapshot %s is of a raw block volume; it can only be restored as a raw block volume: its bytes were written by a tenant and are never mounted as a filesystem",
		ErrInvalid, src.SnapshotID)
}
