// Package fsuuid gives the filesystem on a device or image a new UUID, so
// that a clone or restored snapshot can be mounted beside its origin.
package fsuuid

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Tool regenerates UUIDs with the filesystems' own tools. It implements the
// backends' UUID regenerator seam.
type Tool struct{}

// Regenerate detects the filesystem in path (a block device or an image
// file) and gives it a fresh UUID. Paths with no filesystem are left alone.
func (Tool) Regenerate(ctx context.Context, path string) error {
	fsType, err := Detect(ctx, path)
	if err != nil || fsType == "" {
		return err
	}
	var cmd *exec.Cmd
	switch fsType {
	case "ext4", "ext3", "ext2":
		// No -f: tune2fs refuses a filesystem whose journal needs
		// recovery, and forcing it would let a later replay write blocks
		// checksummed with the old UUID. Snapshots of mounted volumes are
		// taken frozen, which leaves the journal clean.
		cmd = exec.CommandContext(ctx, "tune2fs", "-U", "random", path)
	case "xfs":
		cmd = exec.CommandContext(ctx, "xfs_admin", "-U", "generate", path)
	default:
		return nil
	}
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s on %s: %w: %s", cmd.Args[0], path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Detect returns the filesystem type found in path, "" when there is none.
func Detect(ctx context.Context, path string) (string, error) {
	cmd := exec.CommandContext(ctx, "blkid", "-p", "-s", "TYPE", "-o", "value", path)
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := cmd.Output()
	if err != nil {
		// blkid exits 2 when it finds nothing to report.
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 2 {
			return "", nil
		}
		return "", fmt.Errorf("blkid %s: %w", path, err)
	}
	return strings.TrimSpace(string(out)), nil
}
