package driver

import (
	"regexp"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Mount flags come from StorageClasses and PersistentVolumes, which people
// other than the node's administrator write, and reach mount(8) as root.
// Only flags that change how this one filesystem is accessed are taken:
// anything that names another device (XFS logdev=, rtdev=), changes what
// happens on an error (errors=panic takes the node down), or relabels or
// remaps the filesystem (context=, uid=) is refused.
var allowedMountFlags = map[string]bool{
	"ro": true, "rw": true, "defaults": true,
	"sync": true, "async": true, "dirsync": true,
	"atime": true, "noatime": true, "diratime": true, "nodiratime": true,
	"relatime": true, "norelatime": true, "strictatime": true, "lazytime": true, "nolazytime": true,
	"exec": true, "noexec": true, "suid": true, "nosuid": true, "dev": true, "nodev": true,
	"symfollow": true, "nosymfollow": true,
	"discard": true, "nodiscard": true,
	// XFS: the node adds nouuid to every XFS mount itself.
	"nouuid": true, "inode64": true, "largeio": true, "nolargeio": true,
	// ext4: journalling behaviour of this filesystem only.
	"data=ordered": true, "data=writeback": true, "data=journal": true,
	"auto_da_alloc": true, "noauto_da_alloc": true,
}

// commitFlag is ext4's journal commit interval, in seconds.
var commitFlag = regexp.MustCompile(`^commit=[0-9]{1,4}$`)

// splitFlags splits each entry at its commas, as mount(8) would, so that
// one entry cannot carry an option past a check of whole entries.
func splitFlags(flags []string) []string {
	var out []string
	for _, entry := range flags {
		out = append(out, strings.Split(entry, ",")...)
	}
	return out
}

// checkMountFlags refuses a flag outside the allowlist.
func checkMountFlags(flags []string) error {
	for _, f := range splitFlags(flags) {
		if !allowedMountFlags[f] && !commitFlag.MatchString(f) {
			return errInvalid("mount flag %q is not allowed; Tarn accepts only flags that change how its own filesystem is accessed (for example noatime, nodiratime, lazytime, discard, nosuid, nodev, noexec, sync, data=journal, commit=N)", f)
		}
	}
	return nil
}

// readerOnly says whether an access mode grants no writes.
func readerOnly(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return false
}

// mountOptions are the options a stage or publish mounts with: the
// request's flags split into single options, then ro last whenever the
// call must be read-only, so that no rw among the flags can undo it
// (mount(8) lets the last of ro and rw win).
func mountOptions(flags []string, readonly bool) []string {
	var out []string
	for _, f := range splitFlags(flags) {
		if readonly && f == "rw" || f == "" {
			continue
		}
		out = append(out, f)
	}
	if readonly && !slices.Contains(out, "ro") {
		out = append(out, "ro")
	}
	return out
}
