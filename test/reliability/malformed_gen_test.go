package reliability

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// fuzzer makes well-typed CSI requests whose fields are often malformed:
// empty, huge, full of NUL bytes or path traversal, negative or absurd
// numbers, nil messages where one is required. Valid values are mixed in
// often enough that requests also get past validation and reach the
// backend and the kernel. Strings are always valid UTF-8, which protobuf
// itself requires, so that every request really reaches the driver.
type fuzzer struct {
	r *rand.Rand
	// sandbox is where staging and target paths go; accepted paths are
	// always one level below it, so that no two can nest.
	sandbox string
	// volumes and snapshots are IDs that existed at some point.
	volumes, snapshots []string
	// staged and published are volume ID and path pairs that were
	// accepted at some point, for the node calls that need one.
	staged, published [][2]string
	// sane is set for about half the requests: each of their fields is
	// then valid nine times in ten, so that many requests get past
	// validation to the backend, the kernel and the mount table, with
	// one field wrong now and then.
	sane bool
}

func (f *fuzzer) chance(p float64) bool { return f.r.Float64() < p }

// valid says whether the next field should be a valid one.
func (f *fuzzer) valid() bool { return f.sane && f.chance(0.9) }

func (f *fuzzer) pick(s []string) string { return s[f.r.IntN(len(s))] }

// str is a string that no field should accept as it is.
func (f *fuzzer) str() string {
	switch f.r.IntN(12) {
	case 0:
		return ""
	case 1:
		return " "
	case 2:
		return "a\x00b"
	case 3:
		return "../../../../etc/passwd"
	case 4:
		return ".."
	case 5:
		return strings.Repeat("x", 200+f.r.IntN(70000))
	case 6:
		return "日本語\u202e\U0001F4A9"
	case 7:
		return "%s%n%x\n\t\r"
	case 8:
		return "/"
	case 9:
		return strings.Repeat("../", 1+f.r.IntN(20))
	case 10:
		return "vol-../../x"
	}
	var b strings.Builder
	for range 1 + f.r.IntN(40) {
		b.WriteRune(rune(1 + f.r.IntN(0x2FFF)))
	}
	return strings.ToValidUTF8(b.String(), "?")
}

// name is a CSI name: mostly one of a few valid names (so that some
// requests repeat a name with different parameters), sometimes garbage.
func (f *fuzzer) name() string {
	if f.valid() || f.chance(0.55) {
		return fmt.Sprintf("fuzz-%d", f.r.IntN(20))
	}
	return f.str()
}

func (f *fuzzer) hexID(prefix string) string {
	const digits = "0123456789abcdef"
	b := []byte(prefix)
	for range 32 {
		b = append(b, digits[f.r.IntN(16)])
	}
	return string(b)
}

func (f *fuzzer) volumeID() string {
	if f.valid() && len(f.volumes) > 0 {
		return f.pick(f.volumes)
	}
	switch n := f.r.IntN(20); {
	case n < 7 && len(f.volumes) > 0:
		return f.pick(f.volumes)
	case n < 9 && len(f.snapshots) > 0:
		return f.pick(f.snapshots)
	case n < 12:
		return f.hexID("vol-")
	case n < 13:
		return f.hexID("vol-")[:35]
	case n < 14:
		return strings.ToUpper(f.hexID("vol-"))
	case n < 15:
		return f.hexID("vol-") + "/../" + f.hexID("vol-")
	}
	return f.str()
}

func (f *fuzzer) snapshotID() string {
	if f.valid() && len(f.snapshots) > 0 {
		return f.pick(f.snapshots)
	}
	switch n := f.r.IntN(20); {
	case n < 7 && len(f.snapshots) > 0:
		return f.pick(f.snapshots)
	case n < 9 && len(f.volumes) > 0:
		return f.pick(f.volumes)
	case n < 12:
		return f.hexID("snap-")
	case n < 13:
		return "snap-" + strings.Repeat("0", 31)
	}
	return f.str()
}

func (f *fuzzer) bytes() int64 {
	switch f.r.IntN(14) {
	case 0:
		return 0
	case 1:
		return -1
	case 2:
		return math.MinInt64
	case 3:
		return math.MaxInt64
	case 4:
		return math.MaxInt64 - f.r.Int64N(1<<20)
	case 5:
		return 1 + f.r.Int64N(4096)
	case 6:
		return int64(1)<<40 + f.r.Int64N(1<<40)
	case 7:
		return 300 * MiB
	}
	return 16*MiB + f.r.Int64N(700*MiB)
}

func (f *fuzzer) capacityRange() *csi.CapacityRange {
	if f.valid() {
		return &csi.CapacityRange{RequiredBytes: 16*MiB + f.r.Int64N(700*MiB)}
	}
	if f.chance(0.2) {
		return nil
	}
	r := &csi.CapacityRange{RequiredBytes: f.bytes()}
	if f.chance(0.4) {
		r.LimitBytes = f.bytes()
	}
	return r
}

// safeMountFlags are VFS options every filesystem accepts; a mount refused
// because of any other option is the kernel's answer, not the driver's.
var safeMountFlags = []string{"noatime", "nodiratime", "relatime", "nosuid", "nodev", "noexec", "sync", "dirsync"}

var otherMountFlags = []string{"ro", "nouuid", "bind", "remount", "defaults,rw", "context=\"system_u:object_r:x\"", "size=1g", "nonsense"}

func (f *fuzzer) capability() *csi.VolumeCapability {
	if f.valid() {
		c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{
			Mode: csi.VolumeCapability_AccessMode_Mode(1 + f.r.IntN(2)*6 + f.r.IntN(2))}}
		if f.chance(0.3) {
			c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		} else {
			c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{
				FsType: f.pick([]string{"", "ext4", "xfs"})}}
		}
		return c
	}
	if f.chance(0.08) {
		return nil
	}
	c := &csi.VolumeCapability{}
	switch n := f.r.IntN(10); {
	case n < 6:
		m := &csi.VolumeCapability_MountVolume{FsType: f.pick([]string{"", "ext4", "xfs", "XFS", "btrfs", "../../x", "ext4\x00"})}
		for range f.r.IntN(3) {
			if f.chance(0.8) {
				m.MountFlags = append(m.MountFlags, f.pick(safeMountFlags))
			} else if f.chance(0.7) {
				m.MountFlags = append(m.MountFlags, f.pick(otherMountFlags))
			} else {
				m.MountFlags = append(m.MountFlags, f.str())
			}
		}
		if f.chance(0.05) {
			m.VolumeMountGroup = f.str()
		}
		c.AccessType = &csi.VolumeCapability_Mount{Mount: m}
	case n < 9:
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	}
	if !f.chance(0.08) {
		mode := csi.VolumeCapability_AccessMode_Mode(f.r.IntN(9) - 1)
		if f.chance(0.5) {
			mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
		}
		c.AccessMode = &csi.VolumeCapability_AccessMode{Mode: mode}
	}
	return c
}

func (f *fuzzer) capabilities() []*csi.VolumeCapability {
	n := f.r.IntN(3)
	if f.chance(0.7) {
		n = 1
	}
	out := make([]*csi.VolumeCapability, n)
	for i := range out {
		out[i] = f.capability()
	}
	return out
}

// unsafeFlags says whether a request's capabilities carry mount options the
// kernel may refuse.
func unsafeFlags(caps ...*csi.VolumeCapability) bool {
	for _, c := range caps {
		for _, fl := range c.GetMount().GetMountFlags() {
			safe := false
			for _, s := range safeMountFlags {
				safe = safe || fl == s
			}
			if !safe {
				return true
			}
		}
	}
	return false
}

func (f *fuzzer) strMap() map[string]string {
	if f.valid() {
		return nil
	}
	switch f.r.IntN(8) {
	case 0, 1, 2:
		return nil
	case 3:
		return map[string]string{"fsType": f.pick([]string{"ext4", "xfs", "XFS", "ntfs", ""})}
	case 4:
		return map[string]string{"csi.storage.k8s.io/pvc/name": f.str()}
	case 5:
		return map[string]string{"unknown": "1"}
	}
	m := map[string]string{}
	for range 1 + f.r.IntN(4) {
		m[f.str()] = f.str()
	}
	return m
}

func (f *fuzzer) topology() *csi.TopologyRequirement {
	seg := func() *csi.Topology {
		switch f.r.IntN(4) {
		case 0:
			return &csi.Topology{Segments: map[string]string{"topology.tarn.csi.dev/node": nodeID}}
		case 1:
			return &csi.Topology{Segments: map[string]string{"topology.tarn.csi.dev/node": f.str()}}
		case 2:
			return &csi.Topology{}
		}
		return &csi.Topology{Segments: map[string]string{f.str(): f.str()}}
	}
	if f.valid() || f.chance(0.6) {
		return nil
	}
	t := &csi.TopologyRequirement{}
	for range f.r.IntN(3) {
		t.Requisite = append(t.Requisite, seg())
	}
	for range f.r.IntN(3) {
		t.Preferred = append(t.Preferred, seg())
	}
	return t
}

func (f *fuzzer) contentSource() *csi.VolumeContentSource {
	if f.valid() && (len(f.snapshots) == 0 || f.chance(0.7)) {
		return nil
	}
	switch f.r.IntN(10) {
	case 0, 1:
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: f.snapshotID()}}}
	case 2:
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: f.volumeID()}}}
	case 3:
		return &csi.VolumeContentSource{}
	}
	return nil
}

// Kinds of path: each has its own names, so that a directory made for one
// (a staging path, a mount target) is never asked to be the other (a file
// a block device is bound onto).
const (
	stagingPath = "s"
	mountTarget = "t"
	blockTarget = "b"
)

// path returns a path under the sandbox, often malformed: relative (to the
// driver's working directory, inside the watched tree), climbing out with
// '..' (at most up to the watched tree's root), with NUL bytes, too long.
func (f *fuzzer) path(kind string) string {
	base := fmt.Sprintf("%s%d", kind, f.r.IntN(6))
	if f.valid() {
		return filepath.Join(f.sandbox, base)
	}
	switch f.r.IntN(24) {
	case 0:
		return ""
	case 1:
		return base
	case 2:
		return "../" + base
	case 3:
		return filepath.Join(f.sandbox, base) + "/../" + base
	case 4:
		return f.sandbox + "/../../../escaped-" + base
	case 5:
		return f.sandbox + "/" + base + "\x00/../../x"
	case 6:
		return f.sandbox + "/" + strings.Repeat("x", 256+f.r.IntN(64))
	case 7:
		return f.sandbox + strings.Repeat("/d", 2100)
	case 8:
		return f.sandbox + "//" + base
	case 9:
		return f.sandbox + "/./" + base + "/"
	case 10:
		return "./" + base
	}
	return filepath.Join(f.sandbox, base)
}

// targetFor picks the kind of target path a capability needs.
func targetFor(c *csi.VolumeCapability) string {
	if c.GetBlock() != nil {
		return blockTarget
	}
	return mountTarget
}

func (f *fuzzer) token(valid func() string) string {
	if f.valid() {
		return ""
	}
	switch f.r.IntN(4) {
	case 0:
		return ""
	case 1:
		return valid()
	}
	return f.str()
}

func (f *fuzzer) maxEntries() int32 {
	if f.valid() {
		return int32(f.r.IntN(3))
	}
	return f.pick32([]int32{0, -1, 1, 2, math.MaxInt32, math.MinInt32})
}

func (f *fuzzer) pick32(s []int32) int32 { return s[f.r.IntN(len(s))] }

// usePublished replaces a sane request's volume and path, most of the
// time, with a pair that was published, so that the node calls needing a
// real volume path get one.
func (f *fuzzer) usePublished(id, path *string) {
	if f.valid() && len(f.published) > 0 && f.chance(0.8) {
		pair := f.published[f.r.IntN(len(f.published))]
		*id, *path = pair[0], pair[1]
	}
}
