package loop

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/loopdev"
)

// deviceBlockSize is every loop device's logical block size. It must never
// change over a volume's life, or the filesystem made on it stops mounting;
// left to the kernel it follows the backing file's direct I/O alignment,
// which grows from 512 to 4096 bytes on XFS once a reflink shares the
// file's extents. 4096 is what every pool filesystem can serve directly.
const deviceBlockSize = 4096

// AttachVolume implements backend.Backend. The loop device is looked up in
// the kernel first, so a restarted driver reuses what is already attached.
func (b *Backend) AttachVolume(ctx context.Context, id string) (string, error) {
	m, err := b.readVolume(id)
	if err != nil {
		return "", err
	}
	path := filepath.Join(b.volumeDir(id), dataFile)
	b.attachMu.Lock()
	defer b.attachMu.Unlock()
	if dev, err := b.devicePath(path); err != nil || dev != "" {
		return dev, err
	}
	// A file shorter than its record (an expansion cut short) is grown
	// before the device is sized from it.
	if err := b.ensureFileSize(id, m.SizeBytes); err != nil {
		return "", b.full(err)
	}
	dev, err := b.loop.Attach(path, loopdev.Options{DirectIO: b.cfg.DirectIO, BlockSize: deviceBlockSize})
	if err != nil {
		return "", fmt.Errorf("attach %s: %w", id, err)
	}
	klog.V(2).InfoS("Attached loop device", "volumeID", id, "device", dev.Path, "directIO", dev.DirectIO)
	return dev.Path, nil
}

// DetachVolume implements backend.Backend.
func (b *Backend) DetachVolume(ctx context.Context, id string) error {
	if !backend.ValidVolumeID(id) {
		return fmt.Errorf("%w: volume %q", backend.ErrNotFound, id)
	}
	b.attachMu.Lock()
	defer b.attachMu.Unlock()
	devs, err := b.loop.FindByBackingFile(filepath.Join(b.volumeDir(id), dataFile))
	if err != nil {
		return fmt.Errorf("look up loop devices of %s: %w", id, err)
	}
	for _, d := range devs {
		if err := b.loop.Detach(d.Path); err != nil {
			return fmt.Errorf("detach %s from %s: %w", d.Path, id, err)
		}
		klog.V(2).InfoS("Detached loop device", "volumeID", id, "device", d.Path)
	}
	return nil
}

// DevicePath implements backend.Backend.
func (b *Backend) DevicePath(ctx context.Context, id string) (string, error) {
	if !backend.ValidVolumeID(id) {
		return "", fmt.Errorf("%w: volume %q", backend.ErrNotFound, id)
	}
	return b.devicePath(filepath.Join(b.volumeDir(id), dataFile))
}

func (b *Backend) devicePath(file string) (string, error) {
	devs, err := b.loop.FindByBackingFile(file)
	if err != nil {
		return "", fmt.Errorf("look up loop device of %s: %w", file, err)
	}
	if len(devs) == 0 {
		return "", nil
	}
	return devs[0].Path, nil
}

// RefreshDevice implements backend.Backend: the file is grown to the
// recorded size if an expansion did not reach it, then the loop device is
// told to re-read its size.
func (b *Backend) RefreshDevice(ctx context.Context, id string) error {
	m, err := b.readVolume(id)
	if err != nil {
		return err
	}
	if err := b.ensureFileSize(id, m.SizeBytes); err != nil {
		return b.full(err)
	}
	dev, err := b.DevicePath(ctx, id)
	if err != nil {
		return err
	}
	if dev == "" {
		return nil
	}
	if err := b.loop.RefreshSize(dev); err != nil {
		return fmt.Errorf("refresh size of %s: %w", dev, err)
	}
	return nil
}

// Health implements backend.Backend.
func (b *Backend) Health(ctx context.Context, id string) []backend.Problem {
	m, err := b.readVolume(id)
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return []backend.Problem{{Kind: backend.Inaccessible, Reason: "VolumeNotFound", Message: err.Error()}}
		}
		return []backend.Problem{{Kind: backend.Inaccessible, Reason: "MetadataUnreadable", Message: err.Error()}}
	}
	fi, err := os.Stat(filepath.Join(b.volumeDir(id), dataFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return []backend.Problem{{Kind: backend.DataLoss, Reason: "BackingFileMissing",
			Message: "the volume's backing file is missing from the pool"}}
	case err != nil:
		return []backend.Problem{{Kind: backend.Inaccessible, Reason: "BackingFileUnreadable",
			Message: fmt.Sprintf("cannot inspect the backing file: %v", err)}}
	case fi.Size() < m.SizeBytes:
		return []backend.Problem{{Kind: backend.Degraded, Reason: "BackingFileShort",
			Message: fmt.Sprintf("the backing file is %d bytes, smaller than the volume's %d; the next stage or expansion grows it", fi.Size(), m.SizeBytes)}}
	}
	return nil
}
