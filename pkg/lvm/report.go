package lvm

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// LV is one logical volume as lvs reports it.
type LV struct {
	Name string
	VG   string
	// Size is the LV's size in bytes: the virtual size of a thin volume,
	// the data size of a thin pool.
	Size int64
	// Attr is lvs' lv_attr, ten characters (see lvs(8)).
	Attr string
	Tags []string
	// Segtype is "linear", "striped", "thin", "thin-pool", ...
	Segtype string
	// Pool is the thin pool of a thin volume.
	Pool string
	// Origin is what a snapshot was taken of; LVM clears it when the origin
	// is removed.
	Origin string
	// DataPercent and MetadataPercent are how full a thin pool is (data
	// only for a thin volume). LVM knows them only while the LV is active,
	// which UsageKnown says.
	DataPercent     float64
	MetadataPercent float64
	UsageKnown      bool
	// Active says the LV is active on this node.
	Active bool
	// DeviceOpen says something holds the LV's device open (a mount, a
	// process); false when inactive.
	DeviceOpen bool
	// SkipActivation is set on thin snapshots by default: plain
	// "lvchange -ay" and boot-time activation leave them alone.
	SkipActivation bool
	// Zeroing and ChunkSize are a thin pool's: whether it zeroes the rest
	// of a chunk it provisions for a partial write, and its chunk size.
	// Only ThinPool reports them.
	Zeroing   bool
	ChunkSize int64
}

// IsThin says whether the LV is a thin volume (or thin snapshot).
func (lv LV) IsThin() bool { return lv.Segtype == "thin" }

// IsThinPool says whether the LV is a thin pool.
func (lv LV) IsThinPool() bool { return lv.Segtype == "thin-pool" }

// HasTag says whether the LV carries tag.
func (lv LV) HasTag(tag string) bool {
	for _, t := range lv.Tags {
		if t == tag {
			return true
		}
	}
	return false
}

// AttrHealth returns the volume health character of lv_attr (index 8):
// 'p' partial, 'r' refresh needed, 'm' mismatches; for thin pools 'F'
// failed, 'D' out of data space, 'M' metadata read only; '-' when healthy.
func (lv LV) AttrHealth() byte { return lv.attrAt(8) }

// AttrState returns the state character of lv_attr (index 4): 'a' active,
// 's' suspended, 'c' thin pool check needed, ...
func (lv LV) AttrState() byte { return lv.attrAt(4) }

func (lv LV) attrAt(i int) byte {
	if i < len(lv.Attr) {
		return lv.Attr[i]
	}
	return '-'
}

// VG is one volume group as vgs reports it.
type VG struct {
	Name        string
	Size        int64
	Free        int64
	ExtentSize  int64
	ExtentCount int64
	FreeCount   int64
}

// The report columns. lvs is always run with --binary, which makes the
// flag columns 0/1 (lv_device_open is -1 when unknown).
const (
	lvColumns = "lv_name,vg_name,lv_size,lv_attr,lv_tags,segtype,pool_lv,origin," +
		"data_percent,metadata_percent,lv_active_locally,lv_device_open,lv_skip_activation"
	poolColumns = lvColumns + ",zero,chunk_size"
	vgColumns   = "vg_name,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count"
)

// reportArgs are the options every report command takes: JSON, sizes in
// plain bytes with no unit suffix, flags as 0/1.
func reportArgs(columns string) []string {
	return []string{"--reportformat", "json", "--units", "b", "--nosuffix", "--binary", "-o", columns}
}

type rawLV struct {
	Name            string `json:"lv_name"`
	VG              string `json:"vg_name"`
	Size            string `json:"lv_size"`
	Attr            string `json:"lv_attr"`
	Tags            string `json:"lv_tags"`
	Segtype         string `json:"segtype"`
	Pool            string `json:"pool_lv"`
	Origin          string `json:"origin"`
	DataPercent     string `json:"data_percent"`
	MetadataPercent string `json:"metadata_percent"`
	Active          string `json:"lv_active_locally"`
	DeviceOpen      string `json:"lv_device_open"`
	SkipActivation  string `json:"lv_skip_activation"`
	Zeroing         string `json:"zero"`
	ChunkSize       string `json:"chunk_size"`
}

type rawVG struct {
	Name        string `json:"vg_name"`
	Size        string `json:"vg_size"`
	Free        string `json:"vg_free"`
	ExtentSize  string `json:"vg_extent_size"`
	ExtentCount string `json:"vg_extent_count"`
	FreeCount   string `json:"vg_free_count"`
}

type report struct {
	Report []struct {
		LV []rawLV `json:"lv"`
		VG []rawVG `json:"vg"`
	} `json:"report"`
}

func decodeReport(data []byte) (report, error) {
	var r report
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("decode LVM report: %w", err)
	}
	return r, nil
}

// ParseLVs decodes the JSON of "lvs --reportformat json --units b --nosuffix
// --binary -o <lvColumns>".
func ParseLVs(data []byte) ([]LV, error) {
	r, err := decodeReport(data)
	if err != nil {
		return nil, err
	}
	var out []LV
	for _, part := range r.Report {
		for _, raw := range part.LV {
			lv, err := raw.parse()
			if err != nil {
				return nil, err
			}
			out = append(out, lv)
		}
	}
	return out, nil
}

// ParseVGs decodes the JSON of "vgs --reportformat json --units b --nosuffix
// -o <vgColumns>".
func ParseVGs(data []byte) ([]VG, error) {
	r, err := decodeReport(data)
	if err != nil {
		return nil, err
	}
	var out []VG
	for _, part := range r.Report {
		for _, raw := range part.VG {
			vg, err := raw.parse()
			if err != nil {
				return nil, err
			}
			out = append(out, vg)
		}
	}
	return out, nil
}

func (r rawLV) parse() (LV, error) {
	p := fieldParser{what: "LV " + r.VG + "/" + r.Name}
	lv := LV{
		Name:           r.Name,
		VG:             r.VG,
		Size:           p.bytes("lv_size", r.Size),
		Attr:           r.Attr,
		Segtype:        r.Segtype,
		Pool:           r.Pool,
		Origin:         r.Origin,
		Active:         p.flag("lv_active_locally", r.Active),
		DeviceOpen:     p.flag("lv_device_open", r.DeviceOpen),
		SkipActivation: p.flag("lv_skip_activation", r.SkipActivation),
		Zeroing:        p.flag("zero", r.Zeroing),
	}
	if r.ChunkSize != "" {
		lv.ChunkSize = p.bytes("chunk_size", r.ChunkSize)
	}
	if r.Tags != "" {
		lv.Tags = strings.Split(r.Tags, ",")
	}
	if r.DataPercent != "" {
		lv.UsageKnown = true
		lv.DataPercent = p.percent("data_percent", r.DataPercent)
		if r.MetadataPercent != "" {
			lv.MetadataPercent = p.percent("metadata_percent", r.MetadataPercent)
		}
	}
	return lv, p.err
}

func (r rawVG) parse() (VG, error) {
	p := fieldParser{what: "VG " + r.Name}
	vg := VG{
		Name:        r.Name,
		Size:        p.bytes("vg_size", r.Size),
		Free:        p.bytes("vg_free", r.Free),
		ExtentSize:  p.bytes("vg_extent_size", r.ExtentSize),
		ExtentCount: p.bytes("vg_extent_count", r.ExtentCount),
		FreeCount:   p.bytes("vg_free_count", r.FreeCount),
	}
	if p.err == nil && vg.ExtentSize <= 0 {
		p.err = fmt.Errorf("VG %s reports extent size %d", r.Name, vg.ExtentSize)
	}
	return vg, p.err
}

// fieldParser parses report fields, keeping the first error so that a
// record is decoded in one expression.
type fieldParser struct {
	what string
	err  error
}

func (p *fieldParser) fail(field, value string) {
	if p.err == nil {
		p.err = fmt.Errorf("%s: unexpected %s %q in LVM report", p.what, field, value)
	}
}

func (p *fieldParser) bytes(field, v string) int64 {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		p.fail(field, v)
	}
	return n
}

// flag reads a --binary column: "1" set, "0" unset, "-1" (or "" from an
// LVM that ignores --binary for the column) unknown, taken as unset.
func (p *fieldParser) flag(field, v string) bool {
	switch v {
	case "1":
		return true
	case "0", "-1", "":
		return false
	}
	p.fail(field, v)
	return false
}

func (p *fieldParser) percent(field, v string) float64 {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 100 {
		p.fail(field, v)
	}
	return f
}
