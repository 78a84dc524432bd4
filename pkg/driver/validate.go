package driver

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Parameters Tarn understands in StorageClasses and VolumeSnapshotClasses.
// Keys the external-provisioner adds (csi.storage.k8s.io/...) are accepted
// and ignored.
const (
	// ParamFsType picks the filesystem when the capability names none.
	ParamFsType = "fsType"
)

var supportedFsTypes = map[string]bool{"ext4": true, "xfs": true}

const defaultFsType = "ext4"

// volumeParameters drops Kubernetes' bookkeeping from StorageClass
// parameters and checks the ones the driver itself reads; the rest belong
// to the backend, which refuses what it does not know.
func volumeParameters(params map[string]string) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range params {
		switch {
		case strings.HasPrefix(k, "csi.storage.k8s.io/"):
			continue
		case k == ParamFsType:
			if !supportedFsTypes[strings.ToLower(v)] {
				return nil, errInvalid("parameter %s=%q: supported filesystems are ext4 and xfs", k, v)
			}
			out[k] = strings.ToLower(v)
		default:
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// snapshotParameters validates VolumeSnapshotClass parameters: none are
// defined yet, so anything but Kubernetes' bookkeeping is a mistake.
func snapshotParameters(params map[string]string) (map[string]string, error) {
	for k := range params {
		if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			return nil, errInvalid("unknown snapshot parameter %q", k)
		}
	}
	return nil, nil
}

// validateCapabilities accepts only what a node-local volume can honour:
// mount (ext4, xfs) or block, accessed from one node.
func validateCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return errInvalid("volume capabilities are missing")
	}
	for _, c := range caps {
		if err := validateCapability(c); err != nil {
			return err
		}
	}
	return nil
}

func validateCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return errInvalid("volume capability is missing")
	}
	if c.GetAccessMode() == nil {
		return errInvalid("volume capability has no access mode")
	}
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	default:
		return errInvalid("access mode %s is not supported: Tarn volumes are node-local", c.GetAccessMode().GetMode())
	}
	switch {
	case c.GetBlock() != nil:
	case c.GetMount() != nil:
		fs := strings.ToLower(c.GetMount().GetFsType())
		if fs != "" && !supportedFsTypes[fs] {
			return errInvalid("filesystem %q is not supported: use ext4 or xfs", c.GetMount().GetFsType())
		}
		if err := checkMountFlags(c.GetMount().GetMountFlags()); err != nil {
			return err
		}
	default:
		return errInvalid("volume capability has neither block nor mount access")
	}
	return nil
}

// fsTypeFor picks the filesystem of a volume: the capability's, else the
// StorageClass's, else ext4; "" for a volume only ever used as a block
// device.
func fsTypeFor(caps []*csi.VolumeCapability, params map[string]string) string {
	mount := false
	for _, c := range caps {
		if m := c.GetMount(); m != nil {
			mount = true
			if fs := m.GetFsType(); fs != "" {
				return strings.ToLower(fs)
			}
		}
	}
	if !mount {
		return ""
	}
	if fs := params[ParamFsType]; fs != "" {
		return fs
	}
	return defaultFsType
}

// validatePath checks a path given by the CO: absolute, clean, no NUL, and
// within the kernel's limits, so that a call cannot succeed with a path
// its undoing call will then fail on.
func validatePath(what, p string) error {
	if p == "" {
		return errInvalid("%s is missing", what)
	}
	if !filepath.IsAbs(p) || strings.ContainsRune(p, 0) || filepath.Clean(p) != p {
		return errInvalid("%s %q must be a clean absolute path", what, p)
	}
	if len(p) >= maxPathLength {
		return errInvalid("%s is %d bytes long, more than %d", what, len(p), maxPathLength-1)
	}
	for _, part := range strings.Split(p, "/") {
		if len(part) > maxNameLength {
			return errInvalid("%s has a component of %d bytes, more than %d", what, len(part), maxNameLength)
		}
	}
	return nil
}

// Linux's PATH_MAX (with its NUL) and NAME_MAX.
const (
	maxPathLength = 4096
	maxNameLength = 255
)

// topologyAllows says whether this node satisfies the accessibility
// requirements of a CreateVolume. Only requisite is binding; preferred only
// orders requisite, and Tarn has one candidate.
func (d *Driver) topologyAllows(req *csi.TopologyRequirement) error {
	if req == nil || len(req.GetRequisite()) == 0 {
		return nil
	}
	var allowed []string
	for _, t := range req.GetRequisite() {
		node, ok := t.GetSegments()[TopologyKey]
		if !ok {
			continue
		}
		if node == d.cfg.NodeID {
			return nil
		}
		allowed = append(allowed, node)
	}
	return fmt.Errorf("this driver serves node %q, which is not among the requisite topologies (%s=%v)",
		d.cfg.NodeID, TopologyKey, allowed)
}

func (d *Driver) topology() []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{TopologyKey: d.cfg.NodeID}}}
}
