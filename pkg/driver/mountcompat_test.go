package driver

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMountIncompatibilities(t *testing.T) {
	ext4 := mountState{fsType: "ext4", mountOptions: []string{"rw", "relatime"}, superOptions: []string{"rw"}}
	ext4RO := mountState{fsType: "ext4", mountOptions: []string{"ro", "relatime"}, superOptions: []string{"ro"}}
	xfsFlags := mountState{fsType: "xfs",
		mountOptions: []string{"rw", "nosuid", "nodev", "noexec", "noatime"},
		superOptions: []string{"rw", "sync", "attr2", "inode64", "nouuid"}}
	device := mountState{block: true, fsType: "devtmpfs", mountOptions: []string{"rw", "nosuid", "relatime"}}
	deviceRO := mountState{block: true, fsType: "devtmpfs", mountOptions: []string{"ro", "nosuid", "relatime"}}

	tests := []struct {
		name string
		have mountState
		want mountWant
		diff []string // substrings, one per expected difference; none when compatible
	}{
		{"stage identical", ext4, mountWant{fsType: "ext4"}, nil},
		{"stage fsType case", ext4, mountWant{fsType: "EXT4"}, nil},
		// An empty fsType names nothing: whatever the volume was formatted
		// with is what the CO gets, now as on the first stage.
		{"stage no fsType", ext4, mountWant{}, nil},
		{"stage other fsType", ext4, mountWant{fsType: "xfs"}, []string{"filesystem xfs is asked but ext4 is mounted"}},
		{"stage block on filesystem", ext4, mountWant{block: true}, []string{"raw block access is asked"}},
		{"stage flags present", xfsFlags, mountWant{fsType: "xfs", flags: []string{"noexec", "nodev", "sync", "noatime"}}, nil},
		{"stage flags the kernel does not show", ext4, mountWant{flags: []string{"defaults", "discard", "data=ordered", "relatime", "async"}}, nil},
		{"stage flag missing", ext4, mountWant{flags: []string{"noexec"}}, []string{"mount flag noexec is asked but the mount has rw,relatime"}},
		{"stage superblock flag missing", ext4, mountWant{flags: []string{"sync"}}, []string{"mount flag sync is asked but the filesystem has rw"}},
		{"stage undone flag present", xfsFlags, mountWant{flags: []string{"exec"}}, []string{"mount flag exec is asked"}},
		{"stage last of flag and undoing wins", ext4, mountWant{flags: []string{"noexec", "exec"}}, nil},
		{"stage flag unmentioned but present", xfsFlags, mountWant{}, nil},
		{"stage ro asked", ext4, stageWant(&csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{
			Mount: &csi.VolumeCapability_MountVolume{MountFlags: []string{"ro"}}}}), []string{"read-only is asked but it is mounted read-write"}},
		{"stage ro identical", ext4RO, mountWant{readonly: true}, nil},
		{"stage rw on ro", ext4RO, mountWant{}, []string{"read-write is asked but it is mounted read-only"}},
		{"several at once", ext4, mountWant{fsType: "xfs", readonly: true, flags: []string{"nodev"}}, []string{"xfs", "read-only", "nodev"}},

		{"publish identical", ext4, mountWant{publish: true, fsType: "ext4"}, nil},
		{"publish readonly on rw", ext4, mountWant{publish: true, readonly: true}, []string{"read-only is asked but it is mounted read-write"}},
		{"publish rw on readonly", ext4RO, mountWant{publish: true}, []string{"read-write is asked"}},
		{"publish restriction missing", ext4, mountWant{publish: true, flags: []string{"nosuid"}}, []string{"mount flag nosuid"}},
		// A bind has its filesystem's flags and the staging mount's
		// restrictions and atime mode, whatever it asks.
		{"publish superblock flag", ext4, mountWant{publish: true, flags: []string{"sync"}}, nil},
		{"publish undoing an inherited restriction", xfsFlags, mountWant{publish: true, flags: []string{"exec"}}, nil},
		{"publish atime mode", ext4, mountWant{publish: true, flags: []string{"noatime"}}, nil},
		{"publish block identical", device, mountWant{publish: true, block: true}, nil},
		{"publish block readonly on rw", device, mountWant{publish: true, block: true, readonly: true}, []string{"read-only is asked"}},
		{"publish block readonly identical", deviceRO, mountWant{publish: true, block: true, readonly: true}, nil},
		{"publish block on filesystem", ext4, mountWant{publish: true, block: true}, []string{"raw block access is asked"}},
		{"publish filesystem on block", device, mountWant{publish: true, fsType: "ext4"}, []string{"a filesystem is asked but the raw block device is bound"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.have.incompatibilities(tt.want)
			if len(got) != len(tt.diff) {
				t.Fatalf("incompatibilities = %q, want %d matching %q", got, len(tt.diff), tt.diff)
			}
			for i, sub := range tt.diff {
				if !strings.Contains(got[i], sub) {
					t.Errorf("difference %d = %q, want it to contain %q", i, got[i], sub)
				}
			}
		})
	}
}

func TestLastReadonly(t *testing.T) {
	tests := []struct {
		readonly bool
		flags    []string
		want     bool
	}{
		{false, nil, false},
		{true, nil, true},
		{false, []string{"noexec", "ro"}, true},
		{true, []string{"rw"}, false},
		{false, []string{"ro", "rw"}, false},
	}
	for _, tt := range tests {
		if got := lastReadonly(tt.readonly, tt.flags); got != tt.want {
			t.Errorf("lastReadonly(%v, %q) = %v, want %v", tt.readonly, tt.flags, got, tt.want)
		}
	}
}

func TestErrIncompatible(t *testing.T) {
	err := errIncompatible("vol-1", "published", "/t", []string{"a", "b"})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("code = %v, want AlreadyExists", status.Code(err))
	}
	if want := "volume vol-1 is already published at /t, incompatibly: a; b"; status.Convert(err).Message() != want {
		t.Errorf("message = %q, want %q", status.Convert(err).Message(), want)
	}
}
