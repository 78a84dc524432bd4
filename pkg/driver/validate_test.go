package driver

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func mountCap(fs string, mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

const rwo = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER

func TestValidateCapabilities(t *testing.T) {
	tests := []struct {
		name string
		caps []*csi.VolumeCapability
		ok   bool
	}{
		{"ext4 mount", []*csi.VolumeCapability{mountCap("ext4", rwo)}, true},
		{"xfs mount", []*csi.VolumeCapability{mountCap("xfs", rwo)}, true},
		{"default fs", []*csi.VolumeCapability{mountCap("", rwo)}, true},
		{"block", []*csi.VolumeCapability{blockCap(rwo)}, true},
		{"single node multi writer", []*csi.VolumeCapability{blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)}, true},
		{"reader only", []*csi.VolumeCapability{mountCap("", csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)}, true},
		{"none", nil, false},
		{"nil entry", []*csi.VolumeCapability{nil}, false},
		{"no access mode", []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}}, false},
		{"no access type", []*csi.VolumeCapability{{AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo}}}, false},
		{"multi node", []*csi.VolumeCapability{mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}, false},
		{"multi node reader", []*csi.VolumeCapability{blockCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)}, false},
		{"unknown mode", []*csi.VolumeCapability{mountCap("", csi.VolumeCapability_AccessMode_UNKNOWN)}, false},
		{"btrfs", []*csi.VolumeCapability{mountCap("btrfs", rwo)}, false},
		{"one bad among good", []*csi.VolumeCapability{mountCap("ext4", rwo), mountCap("zfs", rwo)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateCapabilities(tt.caps)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && status.Code(err) != codes.InvalidArgument {
				t.Errorf("code = %v, want InvalidArgument", status.Code(err))
			}
		})
	}
}

func TestVolumeParameters(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]string
		want   map[string]string
		ok     bool
	}{
		{"none", nil, nil, true},
		{"fsType", map[string]string{"fsType": "XFS"}, map[string]string{"fsType": "xfs"}, true},
		{"kubernetes bookkeeping ignored", map[string]string{"csi.storage.k8s.io/pvc/name": "x"}, nil, true},
		{"bad fsType", map[string]string{"fsType": "ntfs"}, nil, false},
		{"backend key passed on", map[string]string{"speed": "fast"}, map[string]string{"speed": "fast"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := volumeParameters(tt.params)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if len(got) != len(tt.want) || got["fsType"] != tt.want["fsType"] || got["speed"] != tt.want["speed"] {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFsTypeFor(t *testing.T) {
	tests := []struct {
		name   string
		caps   []*csi.VolumeCapability
		params map[string]string
		want   string
	}{
		{"capability wins", []*csi.VolumeCapability{mountCap("xfs", rwo)}, map[string]string{"fsType": "ext4"}, "xfs"},
		{"class default", []*csi.VolumeCapability{mountCap("", rwo)}, map[string]string{"fsType": "xfs"}, "xfs"},
		{"ext4 default", []*csi.VolumeCapability{mountCap("", rwo)}, nil, "ext4"},
		{"block only", []*csi.VolumeCapability{blockCap(rwo)}, map[string]string{"fsType": "xfs"}, ""},
	}
	for _, tt := range tests {
		if got := fsTypeFor(tt.caps, tt.params); got != tt.want {
			t.Errorf("%s: fsTypeFor = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestValidatePath(t *testing.T) {
	for p, ok := range map[string]bool{
		"/var/lib/kubelet/x":             true,
		"":                               false,
		"relative/path":                  false,
		"/a/../etc":                      false,
		"/a/b\x00c":                      false,
		"/a/b/":                          false,
		"/a//b":                          false,
		"/" + strings.Repeat("x", 256):   false,
		"/" + strings.Repeat("x/", 2048): false,
	} {
		if err := validatePath("path", p); (err == nil) != ok {
			t.Errorf("validatePath(%q) = %v, want ok=%v", p, err, ok)
		}
	}
}

func TestTopologyAllows(t *testing.T) {
	d := &Driver{cfg: Config{NodeID: "n1"}}
	seg := func(node string) *csi.Topology {
		return &csi.Topology{Segments: map[string]string{TopologyKey: node}}
	}
	tests := []struct {
		name string
		req  *csi.TopologyRequirement
		ok   bool
	}{
		{"none", nil, true},
		{"preferred only elsewhere", &csi.TopologyRequirement{Preferred: []*csi.Topology{seg("n2")}}, true},
		{"requisite here", &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n2"), seg("n1")}}, true},
		{"requisite elsewhere", &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n2")}}, false},
		{"requisite without our key", &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{"zone": "a"}}}}, false},
	}
	for _, tt := range tests {
		if err := d.topologyAllows(tt.req); (err == nil) != tt.ok {
			t.Errorf("%s: %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
