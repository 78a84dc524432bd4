// Package fsuuid gives the filesystem on a device or image a new UUID, so
// that a clone or restored snapshot can be mounted beside its origin.
package fsuuid

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/faults"
	"github.com/tarn-csi/tarn/pkg/loopdev"
)

// replayPoint is the fault point reached while an XFS log replay has the
// image mounted; the loop backend regenerates UUIDs only in CreateVolume.
const replayPoint = "create-volume.during-log-replay"

// Tool regenerates UUIDs with the filesystems' own tools. It implements the
// backends' UUID regenerator seam.
type Tool struct {
	// Loop attaches image files when an XFS log must be replayed; nil
	// means the real kernel.
	Loop loopdev.Interface
	// BlockSize is the logical block size images are attached with; it
	// must match what the volume is served with.
	BlockSize uint32
	// Faults is told when a log replay has the image mounted
	// (replayPoint); nil means faults.Nop.
	Faults faults.Injector
}

// Regenerate detects the filesystem in path (a block device or an image
// file) and gives it a fresh UUID, checking that it really changed. Paths
// with no filesystem are left alone.
func (t Tool) Regenerate(ctx context.Context, path string) error {
	// A blkid run costs milliseconds, most of a reflink restore; reading
	// the two superblock magics spares it for every clone that holds
	// neither filesystem whose UUID is changed here (a raw block volume).
	if ok, err := mayHoldExtOrXFS(path); err != nil || !ok {
		return err
	}
	fsType, err := Detect(ctx, path)
	if err != nil || fsType == "" {
		return err
	}
	switch fsType {
	case "ext4", "ext3", "ext2":
		// No -f: tune2fs refuses a filesystem whose journal needs
		// recovery, and forcing it would let a later replay write blocks
		// checksummed with the old UUID. Snapshots of mounted volumes are
		// taken frozen, which leaves an ext4 journal clean.
		return changed(ctx, path, "tune2fs", "-U", "random", path)
	case "xfs":
		err := changed(ctx, path, "xfs_admin", "-U", "generate", path)
		if !errors.Is(err, errUnchanged) {
			return err
		}
		// A frozen XFS still has a log to replay, and xfs_admin then
		// declines (while exiting 0). Mounting once replays it.
		if err := t.replayLog(ctx, path); err != nil {
			return fmt.Errorf("replay XFS log of %s: %w", path, err)
		}
		return changed(ctx, path, "xfs_admin", "-U", "generate", path)
	}
	return nil
}

var errUnchanged = errors.New("filesystem UUID did not change")

// Where the superblock magics of the filesystems Regenerate handles sit.
const (
	xfsMagic       = "XFSB" // at offset 0
	extMagicOffset = 1024 + 0x38
	extMagic       = 0xEF53 // little-endian
)

// mayHoldExtOrXFS says whether path starts with an ext2/3/4 or XFS
// superblock magic. It only rules out: blkid has the final word on what a
// match really is.
func mayHoldExtOrXFS(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	head := make([]byte, extMagicOffset+2)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read superblock of %s: %w", path, err)
	}
	head = head[:n]
	if len(head) >= len(xfsMagic) && string(head[:len(xfsMagic)]) == xfsMagic {
		return true, nil
	}
	return len(head) == extMagicOffset+2 && binary.LittleEndian.Uint16(head[extMagicOffset:]) == extMagic, nil
}

// changed runs a UUID tool and confirms its effect, since xfs_admin can
// refuse and still succeed.
func changed(ctx context.Context, path string, argv ...string) error {
	before, err := uuidOf(ctx, path)
	if err != nil {
		return err
	}
	if out, err := command(ctx, argv...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s on %s: %w: %s", argv[0], path, err, strings.TrimSpace(string(out)))
	}
	after, err := uuidOf(ctx, path)
	if err != nil {
		return err
	}
	if after == before {
		return fmt.Errorf("%s on %s: %w", argv[0], path, errUnchanged)
	}
	return nil
}

func (t Tool) replayLog(ctx context.Context, path string) error {
	device := path
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().IsRegular() {
		loop := t.Loop
		if loop == nil {
			loop = loopdev.Manager{}
		}
		dev, err := loop.Attach(path, loopdev.Options{BlockSize: t.BlockSize})
		if err != nil {
			return err
		}
		defer func() {
			if err := loop.Detach(dev.Path); err != nil {
				klog.ErrorS(err, "Cannot detach loop device used for log replay", "device", dev.Path)
			}
		}()
		device = dev.Path
	}
	// The mount point sits beside the image so that an interrupted replay
	// is swept with the half-made object it belongs to.
	dir, err := os.MkdirTemp(filepath.Dir(path), "replay-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := unix.Mount(device, dir, "xfs", 0, "nouuid"); err != nil {
		return fmt.Errorf("mount %s: %w", device, err)
	}
	faults.OrNop(t.Faults).Point(replayPoint)
	if err := unix.Unmount(dir, 0); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// Detect returns the filesystem type found in path, "" when there is none.
func Detect(ctx context.Context, path string) (string, error) {
	return probe(ctx, path, "TYPE")
}

func uuidOf(ctx context.Context, path string) (string, error) {
	return probe(ctx, path, "UUID")
}

func probe(ctx context.Context, path, tag string) (string, error) {
	out, err := command(ctx, "blkid", "-p", "-s", tag, "-o", "value", path).Output()
	if err != nil {
		// blkid exits 2 when it finds nothing to report.
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 2 {
			return "", nil
		}
		return "", fmt.Errorf("blkid %s: %w", path, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}
