package loop

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/atomicfile"
	"github.com/tarn-csi/tarn/pkg/backend"
)

// metaVersion is bumped when the on-disk format changes incompatibly.
const metaVersion = 1

// volumeMeta is the on-disk record of a volume, one per volume (see
// recordXattr) so that a damaged record can only ever cost that one volume.
type volumeMeta struct {
	Version          int               `json:"version"`
	ID               string            `json:"id"`
	Name             string            `json:"name"`
	SizeBytes        int64             `json:"sizeBytes"`
	FsType           string            `json:"fsType,omitempty"`
	Parameters       map[string]string `json:"parameters,omitempty"`
	SourceSnapshotID string            `json:"sourceSnapshotID,omitempty"`
	SourceVolumeID   string            `json:"sourceVolumeID,omitempty"`
	// Shared records that the data file may share extents with a snapshot
	// or clone, so overwriting it can need its full size in new blocks.
	Shared    bool      `json:"shared,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

type snapshotMeta struct {
	Version        int    `json:"version"`
	ID             string `json:"id"`
	Name           string `json:"name"`
	SourceVolumeID string `json:"sourceVolumeID"`
	// SourceVolumeMode is modeBlock when the origin was a raw block
	// volume, whose content is only ever restored as raw block, and
	// modeFilesystem otherwise; "" in the records of a Tarn that did not
	// note it.
	SourceVolumeMode string            `json:"sourceVolumeMode,omitempty"`
	SizeBytes        int64             `json:"sizeBytes"`
	Parameters       map[string]string `json:"parameters,omitempty"`
	Method           string            `json:"method"`
	CreatedAt        time.Time         `json:"createdAt"`
}

// Values of snapshotMeta.SourceVolumeMode, as Kubernetes names them in a
// VolumeSnapshotContent.
const (
	modeBlock      = "Block"
	modeFilesystem = "Filesystem"
)

// volumeMode is the mode of a volume made for fsType.
func volumeMode(fsType string) string {
	if fsType == "" {
		return modeBlock
	}
	return modeFilesystem
}

func (m volumeMeta) volume() backend.Volume {
	return backend.Volume{
		ID:         m.ID,
		Name:       m.Name,
		SizeBytes:  m.SizeBytes,
		FsType:     m.FsType,
		Parameters: m.Parameters,
		Source:     backend.Source{SnapshotID: m.SourceSnapshotID, VolumeID: m.SourceVolumeID},
		CreatedAt:  m.CreatedAt,
	}
}

func (m snapshotMeta) snapshot() backend.Snapshot {
	return backend.Snapshot{
		ID:             m.ID,
		Name:           m.Name,
		SourceVolumeID: m.SourceVolumeID,
		SizeBytes:      m.SizeBytes,
		CreatedAt:      m.CreatedAt,
		ReadyToUse:     true,
		Method:         m.Method,
	}
}

// recordXattr names the extended attribute of an object's directory that
// holds its record. Setting an xattr is one journaled update of the
// directory's inode, with no data block to write and flush first: on XFS,
// whose log commits in order, the fsync of the parent after the publishing
// rename makes the record durable together with the rename (one flush per
// CreateVolume, where meta.json needed three fsyncs). meta.json remains the
// fallback where the pool cannot hold the xattr, and is read from pools
// that an older Tarn made.
const recordXattr = "user.tarn.record"

// writeMeta replaces the record of a published object durably: in place
// where it is an xattr (a replace is atomic), else by a new meta.json
// renamed over the old one.
func (b *Backend) writeMeta(dir string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode metadata: %w", err)
	}
	switch err := b.setxattr(dir, recordXattr, data, unix.XATTR_REPLACE); {
	case err == nil:
		// An fsync of the directory persists its inode, xattrs included.
		return atomicfile.SyncDir(dir)
	case !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.ENOTSUP):
		// No fallback to meta.json here: the xattr, which reads prefer,
		// would still hold the old record.
		return fmt.Errorf("replace record of %s: %w", filepath.Base(dir), err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, metaFile), indent(data), 0o600)
}

// writeNewMeta writes the record of an object still in its staging
// directory: nothing can see it yet, so it needs no temporary file and
// rename. buildObject makes it durable before publishing, or with the
// publishing rename where the pool's log is ordered.
func (b *Backend) writeNewMeta(dir string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode metadata: %w", err)
	}
	err = b.setxattr(dir, recordXattr, data, unix.XATTR_CREATE)
	if err == nil {
		return nil
	}
	if !xattrRefused(err) {
		return fmt.Errorf("set record of %s: %w", filepath.Base(dir), err)
	}
	klog.V(4).InfoS("Pool cannot hold the record as an xattr, writing meta.json", "dir", dir, "err", err)
	f, err := os.OpenFile(filepath.Join(dir, metaFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create metadata: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(indent(data)); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync metadata: %w", err)
	}
	return f.Close()
}

// xattrRefused tells the errors of a filesystem that cannot hold the record
// as an xattr (none at all, or not one this large) from real failures.
func xattrRefused(err error) bool {
	for _, e := range []error{unix.ENOTSUP, unix.E2BIG, unix.ERANGE, unix.ENOSPC, unix.EPERM, unix.EACCES} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// indent makes meta.json readable by a person; the xattr stays compact.
func indent(data []byte) []byte {
	var out bytes.Buffer
	if json.Indent(&out, data, "", "  ") != nil {
		return data
	}
	return out.Bytes()
}

// readMeta decodes an object's record, from its xattr or else its
// meta.json; a missing directory is ErrNotFound.
func readMeta(dir string, v any) error {
	data, err := readRecordXattr(dir)
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %s", backend.ErrNotFound, filepath.Base(dir))
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
		data, err = os.ReadFile(filepath.Join(dir, metaFile))
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %s", backend.ErrNotFound, filepath.Base(dir))
		}
	}
	if err != nil {
		return fmt.Errorf("read metadata of %s: %w", filepath.Base(dir), err)
	}
	return decodeMeta(data, v)
}

// readRecordXattr reads the record xattr whatever its size; a replace
// between asking the size and reading (ERANGE) is read again.
func readRecordXattr(dir string) ([]byte, error) {
	for range 3 {
		size, err := unix.Getxattr(dir, recordXattr, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, size)
		n, err := unix.Getxattr(dir, recordXattr, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	return nil, fmt.Errorf("record xattr of %s keeps changing size", filepath.Base(dir))
}

// decodeMeta parses a record strictly: an unknown field or version means the
// file is not ours to interpret.
func decodeMeta(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("corrupt metadata: %w", err)
	}
	var version int
	var id string
	switch m := v.(type) {
	case *volumeMeta:
		version, id = m.Version, m.ID
		if !backend.ValidVolumeID(id) || m.SizeBytes <= 0 {
			return fmt.Errorf("corrupt volume metadata: id %q size %d", id, m.SizeBytes)
		}
	case *snapshotMeta:
		version, id = m.Version, m.ID
		if !backend.ValidSnapshotID(id) || m.SizeBytes <= 0 {
			return fmt.Errorf("corrupt snapshot metadata: id %q size %d", id, m.SizeBytes)
		}
	}
	if version != metaVersion {
		return fmt.Errorf("metadata of %s has version %d, this Tarn reads %d", id, version, metaVersion)
	}
	return nil
}

func syncParent(path string) error {
	return atomicfile.SyncDir(filepath.Dir(path))
}

// record is what both metadata kinds share, so that reading and listing
// them is written once.
type record interface {
	volumeMeta | snapshotMeta
}

func recordID[T record](m T) string {
	switch v := any(m).(type) {
	case volumeMeta:
		return v.ID
	case snapshotMeta:
		return v.ID
	}
	return ""
}

// readRecord reads the record of id from parent; an ID that could not have
// been made by Tarn is NotFound without touching the filesystem.
func readRecord[T record](parent, kind, id string, valid func(string) bool) (T, error) {
	var m T
	if !valid(id) {
		return m, fmt.Errorf("%w: %s %q", backend.ErrNotFound, kind, id)
	}
	err := readMeta(filepath.Join(parent, id), &m)
	if err == nil && recordID(m) != id {
		err = fmt.Errorf("metadata of %s %s names %s", kind, id, recordID(m))
	}
	return m, err
}

// listRecords reads every record under parent, sorted by ID, skipping (and
// logging) damaged ones so that one bad file cannot hide the rest of the
// pool.
func listRecords[T record](parent, kind string, valid func(string) bool) ([]T, error) {
	ids, err := listIDs(parent, valid)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(ids))
	for _, id := range ids {
		m, err := readRecord[T](parent, kind, id, valid)
		if err != nil {
			if !errors.Is(err, backend.ErrNotFound) {
				klog.ErrorS(err, "Skipping unreadable record", "kind", kind, "id", id)
			}
			continue
		}
		out = append(out, m)
	}
	return out, nil
}
