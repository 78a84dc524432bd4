package loop

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/atomicfile"
	"github.com/tarn-csi/tarn/pkg/backend"
)

// metaVersion is bumped when the on-disk format changes incompatibly.
const metaVersion = 1

// volumeMeta is the on-disk record of a volume, one small file per volume
// so that a damaged record can only ever cost that one volume.
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
	Version        int               `json:"version"`
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	SourceVolumeID string            `json:"sourceVolumeID"`
	SizeBytes      int64             `json:"sizeBytes"`
	Parameters     map[string]string `json:"parameters,omitempty"`
	Method         string            `json:"method"`
	CreatedAt      time.Time         `json:"createdAt"`
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

func writeMeta(dir string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode metadata: %w", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, metaFile), data, 0o600)
}

// writeNewMeta writes the record of an object still in its staging
// directory: nothing can see it yet, so it needs no temporary file and
// rename, only an fsync; buildObject syncs the directory before publishing.
func writeNewMeta(dir string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode metadata: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, metaFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create metadata: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync metadata: %w", err)
	}
	return f.Close()
}

// readMeta decodes an object's record; a missing directory is ErrNotFound.
func readMeta(dir string, v any) error {
	data, err := os.ReadFile(filepath.Join(dir, metaFile))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s", backend.ErrNotFound, filepath.Base(dir))
	}
	if err != nil {
		return fmt.Errorf("read metadata of %s: %w", filepath.Base(dir), err)
	}
	return decodeMeta(data, v)
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
