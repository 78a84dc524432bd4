package lvm

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// Every piece of Tarn state lives in the tags of its LV, so the VG is the
// only record and an LV is self-describing wherever the VG goes.
//
// Tags are key=value with keys under "tarn.". LVM allows only
// [A-Za-z0-9_+.-/=!:&#] in a tag, so free-form values (the CSI name, the
// parameters) are base64url without padding, whose alphabet is inside that
// set; a 256-byte name takes 342 characters, well under LVM's 1024.
const (
	// tagOwner marks an LV as Tarn's; only such LVs are ever listed or
	// swept.
	tagOwner = "tarn.owner"
	// tagComplete is added, with tagCreated in the same metadata commit,
	// when an object is fully built; an owned LV without it is the
	// leftover of an interrupted call.
	tagComplete = "tarn.complete"

	keyVersion    = "tarn.v"
	keyName       = "tarn.name"
	keyType       = "tarn.type"
	keyFsType     = "tarn.fstype"
	keyParams     = "tarn.params"
	keySourceSnap = "tarn.source.snapshot"
	keySourceVol  = "tarn.source.volume"
	// keySourceMode is a snapshot's origin's volume mode, modeBlock or
	// modeFilesystem; snapshots of a Tarn that did not note it lack it.
	keySourceMode = "tarn.source.mode"
	keyMethod     = "tarn.method"
	keyCreated    = "tarn.created"
	// keyZeroFrom is set on a thick volume, before it grows, to its old
	// size: from there on its extents may hold an earlier LV's data until
	// they are zeroed, and an interrupted expansion is finished from it.
	keyZeroFrom = "tarn.zero-from"

	// tagVersion is bumped when the meaning of the tags changes
	// incompatibly.
	tagVersion = "1"
)

// Volume types, the "type" StorageClass parameter.
const (
	typeThin  = "thin"
	typeThick = "thick"
)

// Values of keySourceMode. A raw block volume's content is only ever
// restored as raw block.
const (
	modeBlock      = "block"
	modeFilesystem = "filesystem"
)

// volumeMode is the mode of a volume made for fsType.
func volumeMode(fsType string) string {
	if fsType == "" {
		return modeBlock
	}
	return modeFilesystem
}

// Snapshot methods, reported in backend.Snapshot.Method.
const (
	// methodThin is an LVM thin snapshot: O(1), blocks shared in the pool.
	methodThin = "thin"
	// methodCopy is a full copy into an independent linear LV: O(data).
	methodCopy = "copy"
)

// errForeign means an LV has a name Tarn would use but is not Tarn's.
var errForeign = errors.New("LV is not managed by Tarn")

// object is a Tarn volume or snapshot as decoded from its LV. The LV's name
// is the object's ID.
type object struct {
	ID     string
	Name   string
	Type   string
	FsType string
	Params map[string]string
	// SourceSnapshotID and SourceVolumeID: a volume's content source; a
	// snapshot's origin volume is SourceVolumeID.
	SourceSnapshotID string
	SourceVolumeID   string
	// SourceMode is a snapshot's origin's volume mode (keySourceMode).
	SourceMode string
	Method     string
	CreatedAt  time.Time
	// ZeroFrom is where a thick volume's unzeroed growth starts; 0 when
	// it has none.
	ZeroFrom int64
	Complete bool
	lv       lvmcmd.LV
}

// creationTags are the tags an object's LV is created with: everything but
// completeness, so that a crash at any later point leaves an LV the next
// start recognises as a leftover.
func creationTags(o object) ([]string, error) {
	tags := []string{tagOwner, keyVersion + "=" + tagVersion, keyName + "=" + base64.RawURLEncoding.EncodeToString([]byte(o.Name))}
	if o.Type != "" {
		tags = append(tags, keyType+"="+o.Type)
	}
	if o.FsType != "" {
		tags = append(tags, keyFsType+"="+o.FsType)
	}
	if len(o.Params) > 0 {
		data, err := json.Marshal(o.Params)
		if err != nil {
			return nil, fmt.Errorf("encode parameters: %w", err)
		}
		tags = append(tags, keyParams+"="+base64.RawURLEncoding.EncodeToString(data))
	}
	if o.SourceSnapshotID != "" {
		tags = append(tags, keySourceSnap+"="+o.SourceSnapshotID)
	}
	if o.SourceVolumeID != "" {
		tags = append(tags, keySourceVol+"="+o.SourceVolumeID)
	}
	if o.SourceMode != "" {
		tags = append(tags, keySourceMode+"="+o.SourceMode)
	}
	if o.Method != "" {
		tags = append(tags, keyMethod+"="+o.Method)
	}
	for _, t := range tags {
		if !lvmcmd.ValidTag(t) {
			return nil, fmt.Errorf("%w: cannot record %.40q... in an LVM tag (too long or a character LVM refuses)", backend.ErrInvalid, t)
		}
	}
	return tags, nil
}

// completionTags mark an object complete; created is when its data was
// captured.
func completionTags(created time.Time) []string {
	return []string{keyCreated + "=" + created.UTC().Format(time.RFC3339Nano), tagComplete}
}

func zeroFromTag(offset int64) string { return keyZeroFrom + "=" + strconv.FormatInt(offset, 10) }

// decodeTags reads an LV's tags. An LV without the owner tag is errForeign;
// an owned LV whose tags cannot be read is an error, so that it is neither
// shown nor swept.
func decodeTags(lv lvmcmd.LV) (object, error) {
	o := object{ID: lv.Name, lv: lv}
	owned, version := false, ""
	for _, tag := range lv.Tags {
		if !strings.HasPrefix(tag, "tarn.") {
			// An administrator's own tags are theirs.
			continue
		}
		key, value, _ := strings.Cut(tag, "=")
		var err error
		switch key {
		case tagOwner:
			owned = true
		case tagComplete:
			o.Complete = true
		case keyVersion:
			version = value
		case keyName:
			var name []byte
			name, err = base64.RawURLEncoding.DecodeString(value)
			o.Name = string(name)
		case keyType:
			o.Type = value
			if value != typeThin && value != typeThick {
				err = fmt.Errorf("unknown type %q", value)
			}
		case keyFsType:
			o.FsType = value
		case keyParams:
			var data []byte
			if data, err = base64.RawURLEncoding.DecodeString(value); err == nil {
				err = json.Unmarshal(data, &o.Params)
			}
		case keySourceSnap:
			o.SourceSnapshotID = value
			if !backend.ValidSnapshotID(value) {
				err = fmt.Errorf("bad source snapshot %q", value)
			}
		case keySourceVol:
			o.SourceVolumeID = value
			if !backend.ValidVolumeID(value) {
				err = fmt.Errorf("bad source volume %q", value)
			}
		case keySourceMode:
			o.SourceMode = value
			if value != modeBlock && value != modeFilesystem {
				err = fmt.Errorf("unknown source mode %q", value)
			}
		case keyMethod:
			o.Method = value
		case keyCreated:
			o.CreatedAt, err = time.Parse(time.RFC3339Nano, value)
		case keyZeroFrom:
			o.ZeroFrom, err = strconv.ParseInt(value, 10, 64)
			if err == nil && o.ZeroFrom <= 0 {
				err = errors.New("not a positive offset")
			}
		default:
			err = errors.New("unknown tag")
		}
		if err != nil {
			return o, fmt.Errorf("LV %s/%s: tag %q: %v", lv.VG, lv.Name, tag, err)
		}
	}
	switch {
	case !owned:
		return o, fmt.Errorf("%w: %s/%s", errForeign, lv.VG, lv.Name)
	case version != tagVersion:
		return o, fmt.Errorf("LV %s/%s has Tarn tags of version %q; this Tarn reads %s", lv.VG, lv.Name, version, tagVersion)
	case o.Name == "":
		return o, fmt.Errorf("LV %s/%s has no %s tag", lv.VG, lv.Name, keyName)
	}
	return o, nil
}

func (o object) volume() backend.Volume {
	return backend.Volume{
		ID:         o.ID,
		Name:       o.Name,
		SizeBytes:  o.lv.Size,
		FsType:     o.FsType,
		Parameters: o.Params,
		Source:     backend.Source{SnapshotID: o.SourceSnapshotID, VolumeID: o.SourceVolumeID},
		CreatedAt:  o.CreatedAt,
	}
}

func (o object) snapshot() backend.Snapshot {
	return backend.Snapshot{
		ID:             o.ID,
		Name:           o.Name,
		SourceVolumeID: o.SourceVolumeID,
		SizeBytes:      o.lv.Size,
		CreatedAt:      o.CreatedAt,
		ReadyToUse:     true,
		Method:         o.Method,
	}
}
