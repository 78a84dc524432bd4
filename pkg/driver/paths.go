package driver

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// confinePath refuses a staging or target path that does not lie strictly
// under the kubelet directory, or that reaches it through a symbolic link:
// the node service runs as root, and a path is the one thing in a node call
// that names something on the host. The path must already be clean and
// absolute (validatePath).
//
// Only the part of the path that exists is resolved; what a call creates
// below it is created by the call itself. The kubelet directory may itself
// be a symbolic link (some distributions move it), so it is opened
// normally and everything under it is resolved by the kernel beneath it,
// with no symbolic link followed.
func (d *Driver) confinePath(what, p string) error {
	rel, err := filepath.Rel(d.cfg.KubeletDir, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return errInvalid("%s %q is not under the kubelet directory %s", what, p, d.cfg.KubeletDir)
	}
	root, err := unix.Open(d.cfg.KubeletDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		// Nothing under a missing kubelet directory can be touched
		// either; the call fails on its own path.
		return nil
	} else if err != nil {
		return status.Errorf(codes.Internal, "open the kubelet directory %s: %v", d.cfg.KubeletDir, err)
	}
	defer unix.Close(root)
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	for retries := 0; ; retries++ {
		fd, err := d.openat2(root, rel, how)
		switch {
		case err == nil:
			unix.Close(fd)
			return nil
		case (errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR)) && retries < maxResolveRetries:
			// A rename elsewhere under the directory raced the lookup.
			continue
		case errors.Is(err, unix.ENOENT):
			if rel = filepath.Dir(rel); rel == "." {
				return nil
			}
		case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
			return errInvalid("%s %q goes through a symbolic link; paths under the kubelet directory %s must not", what, p, d.cfg.KubeletDir)
		case errors.Is(err, unix.ENOTDIR):
			return errInvalid("%s %q goes through something that is not a directory", what, p)
		case errors.Is(err, unix.ENOTCONN), errors.Is(err, unix.ESTALE), errors.Is(err, unix.EIO):
			// A stale mount at the last component is for the call to
			// report, or for an unpublish to clean up; above it, nothing
			// can be said about where the path leads.
			if parent := filepath.Dir(rel); parent == "." || d.resolvesBeneath(root, parent, how) {
				return nil
			}
			return errInvalid("%s %q lies below a mount that does not answer", what, p)
		default:
			return status.Errorf(codes.Internal, "cannot check that %s %q stays under the kubelet directory %s: %v", what, p, d.cfg.KubeletDir, err)
		}
	}
}

func (d *Driver) resolvesBeneath(root int, rel string, how *unix.OpenHow) bool {
	fd, err := d.openat2(root, rel, how)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// checkOpenat2 fails the start on a kernel that cannot resolve a path
// beneath a directory (openat2 came with Linux 5.6): every node call
// would be refused.
func checkOpenat2() error {
	fd, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if err != nil {
		return fmt.Errorf("the kernel cannot resolve paths with openat2 (Linux 5.6 or later is needed to confine node paths to the kubelet directory): %w", err)
	}
	unix.Close(fd)
	return nil
}

// maxResolveRetries bounds the lookups a stream of renames can force.
const maxResolveRetries = 16

// nodePath validates a staging or target path: syntax, then confinement.
func (d *Driver) nodePath(what, p string) error {
	if err := validatePath(what, p); err != nil {
		return err
	}
	return d.confinePath(what, p)
}
