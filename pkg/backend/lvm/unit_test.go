package lvm

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

func TestTagsRoundTrip(t *testing.T) {
	created := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	for _, o := range []object{
		{ID: backend.VolumeIDFor("pvc-1"), Name: "pvc-1", Type: typeThin, FsType: "ext4",
			Params:           map[string]string{"type": "thin", "overprovisionRatio": "2.5", "fsType": "ext4"},
			SourceSnapshotID: backend.SnapshotIDFor("s")},
		// Names may hold anything CSI allows, including what LVM tags
		// cannot: commas (the tag separator), spaces, non-ASCII.
		{ID: backend.VolumeIDFor("x"), Name: "a, b/c=d é\x00" + strings.Repeat("z", 200), Type: typeThick,
			SourceVolumeID: backend.VolumeIDFor("y")},
		{ID: backend.SnapshotIDFor("s"), Name: strings.Repeat("\xff", backend.MaxNameLength), Type: typeThin,
			SourceVolumeID: backend.VolumeIDFor("v"), SourceMode: modeBlock, Method: methodThin},
		{ID: backend.SnapshotIDFor("t"), Name: "t", Type: typeThick,
			SourceVolumeID: backend.VolumeIDFor("w"), SourceMode: modeFilesystem, Method: methodCopy},
	} {
		tags, err := creationTags(o)
		if err != nil {
			t.Fatalf("%q: %v", o.Name, err)
		}
		for _, tag := range tags {
			if !lvmcmd.ValidTag(tag) {
				t.Errorf("tag %q is not valid for LVM", tag)
			}
		}
		lv := lvmcmd.LV{Name: o.ID, VG: "vg", Tags: tags}
		got, err := decodeTags(lv)
		if err != nil {
			t.Fatal(err)
		}
		if got.Complete {
			t.Errorf("creation tags already mark %q complete", o.Name)
		}
		// LVM keeps tags sorted and adds an administrator's own.
		lv.Tags = append(append([]string{"admin-tag"}, tags...), completionTags(created)...)
		got, err = decodeTags(lv)
		if err != nil {
			t.Fatal(err)
		}
		want := o
		want.Complete, want.CreatedAt, want.lv = true, created, lv
		if !reflect.DeepEqual(got, want) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
		}
	}
}

func TestDecodeTagsRejects(t *testing.T) {
	good, err := creationTags(object{Name: "n", Type: typeThin})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		tags []string
		want error
	}{
		"not owned":     {[]string{"tarn.name=bg"}, errForeign},
		"no tags":       {nil, errForeign},
		"newer version": {replace(good, "tarn.v=1", "tarn.v=2"), nil},
		"unknown key":   {append(good, "tarn.future=x"), nil},
		"bad name":      {replace(good, "tarn.name=bg", "tarn.name=!!"), nil},
		"bad type":      {replace(good, "tarn.type=thin", "tarn.type=fat"), nil},
		"bad source":    {append(good, "tarn.source.volume=../etc"), nil},
		"bad mode":      {append(good, "tarn.source.mode=raw"), nil},
		"bad time":      {append(good, "tarn.created=yesterday"), nil},
		"no name":       {[]string{tagOwner, "tarn.v=1"}, nil},
		"bad zero-from": {append(good, "tarn.zero-from=-4"), nil},
		"zero-from 0":   {append(good, "tarn.zero-from=0"), nil},
	} {
		_, err := decodeTags(lvmcmd.LV{Name: "vol-x", VG: "vg", Tags: tc.tags})
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || (tc.want == nil && errors.Is(err, errForeign)) {
			t.Errorf("%s: decodeTags(%q) = %v", name, tc.tags, err)
		}
	}
}

func replace(tags []string, old, new string) []string {
	out := append([]string(nil), tags...)
	for i, t := range out {
		if t == old {
			out[i] = new
			return out
		}
	}
	panic("no tag " + old)
}

func TestCreationTagsRefuseWhatLVMCannotStore(t *testing.T) {
	if _, err := creationTags(object{Name: "n", FsType: "ext 4"}); !errors.Is(err, backend.ErrInvalid) {
		t.Errorf("fsType with a space: %v, want ErrInvalid", err)
	}
	huge := map[string]string{"overprovisionRatio": strings.Repeat("1", 1000)}
	if _, err := creationTags(object{Name: "n", Params: huge}); !errors.Is(err, backend.ErrInvalid) {
		t.Errorf("parameters over 1024 characters: %v, want ErrInvalid", err)
	}
}

func TestParseClass(t *testing.T) {
	thin := &Backend{cfg: Config{ThinPool: "pool"}, defaultType: typeThin}
	thick := &Backend{defaultType: typeThick}
	for _, tc := range []struct {
		b      *Backend
		params map[string]string
		want   class
		ok     bool
	}{
		{thin, nil, class{typeThin, 1}, true},
		{thick, nil, class{typeThick, 1}, true},
		{thin, map[string]string{"type": "thick", "fsType": "xfs"}, class{typeThick, 1}, true},
		{thin, map[string]string{"overprovisionRatio": "2.5"}, class{typeThin, 2.5}, true},
		{thin, map[string]string{"type": "thin", "overprovisionRatio": "1"}, class{typeThin, 1}, true},
		{thin, map[string]string{"overprovisionRatio": "0.5"}, class{}, false},
		{thin, map[string]string{"overprovisionRatio": "NaN"}, class{}, false},
		{thin, map[string]string{"overprovisionRatio": "Inf"}, class{}, false},
		{thin, map[string]string{"overprovisionRatio": "two"}, class{}, false},
		{thin, map[string]string{"type": "thick", "overprovisionRatio": "2"}, class{}, false},
		{thin, map[string]string{"type": "striped"}, class{}, false},
		{thin, map[string]string{"poolDir": "/x"}, class{}, false},
		{thick, map[string]string{"type": "thin"}, class{}, false},
	} {
		got, err := tc.b.parseClass(tc.params)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("parseClass(%v) = %+v, %v; want %+v", tc.params, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, backend.ErrInvalid) {
			t.Errorf("parseClass(%v) = %v, want ErrInvalid", tc.params, err)
		}
	}
}

const mib = backend.MiB

func testState(dataPct, metaPct float64, thinSizes ...int64) vgState {
	st := vgState{
		vg: lvmcmd.VG{Name: "vg", Size: 8192 * mib, Free: 4096 * mib, ExtentSize: 4 * mib, ExtentCount: 2048, FreeCount: 1024},
		lvs: []lvmcmd.LV{
			{Name: "pool", VG: "vg", Size: 1024 * mib, Segtype: "thin-pool", Active: true, UsageKnown: true,
				DataPercent: dataPct, MetadataPercent: metaPct},
			{Name: "other", VG: "vg", Size: 512 * mib, Segtype: "linear"},
			// A thin LV of another pool does not count.
			{Name: "elsewhere", VG: "vg", Size: 4096 * mib, Segtype: "thin", Pool: "pool2"},
		},
	}
	for i, s := range thinSizes {
		st.lvs = append(st.lvs, lvmcmd.LV{Name: fmt.Sprint("t", i), VG: "vg", Size: s, Segtype: "thin", Pool: "pool"})
	}
	return st
}

func TestCapacityFormula(t *testing.T) {
	for _, tc := range []struct {
		name  string
		st    vgState
		typ   string
		ratio float64
		avail int64
		total int64
	}{
		{"thick is VG free", testState(0, 0), typeThick, 1, 4096 * mib, 8192 * mib},
		{"empty pool", testState(0, 0), typeThin, 1, 1024 * mib, 1024 * mib},
		{"virtual sizes count", testState(0, 0, 256*mib, 512*mib), typeThin, 1, 256 * mib, 1024 * mib},
		{"over-commit", testState(0, 0, 1024*mib), typeThin, 2.5, 1024 * mib, 2560 * mib},
		{"full virtually", testState(0, 0, 1024*mib, 64*mib), typeThin, 1, 0, 1024 * mib},
		// 50% of data used: whatever the ratio allows, only 512 MiB are
		// left for real.
		{"bounded by data", testState(50, 5, 256*mib), typeThin, 4, 512 * mib, 4096 * mib},
		// 75.3% metadata used leaves 252.9 MiB, rounded down to extents.
		{"bounded by metadata", testState(10, 75.3), typeThin, 1, 252 * mib, 1024 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := capacityOf(tc.st, tc.typ, "pool", tc.ratio)
			if err != nil {
				t.Fatal(err)
			}
			if c.AvailableBytes != tc.avail || c.MaximumVolumeSize != tc.avail || c.TotalBytes != tc.total {
				t.Errorf("capacity = %+v, want available %d total %d", c, tc.avail, tc.total)
			}
		})
	}
	st := testState(0, 0)
	if _, err := capacityOf(st, typeThin, "nopool", 1); !errors.Is(err, backend.ErrNotReady) {
		t.Errorf("missing pool: %v, want ErrNotReady", err)
	}
	st.lvs[0].UsageKnown, st.lvs[0].Active = false, false
	if _, err := capacityOf(st, typeThin, "pool", 1); !errors.Is(err, backend.ErrNotReady) {
		t.Errorf("inactive pool: %v, want ErrNotReady", err)
	}
}

func TestExtentSize(t *testing.T) {
	for _, tc := range []struct {
		size, required, limit int64
		want                  int64
		ok                    bool
	}{
		{5 * mib, 5 * mib, 0, 8 * mib, true},
		{8 * mib, 8 * mib, 0, 8 * mib, true},
		// Rounding up would pass the limit; down still satisfies.
		{5 * mib, 3 * mib, 6 * mib, 4 * mib, true},
		{5 * mib, 5 * mib, 6 * mib, 0, false},
		{16 * mib, 16 * mib, 18 * mib, 16 * mib, true},
		{math.MaxInt64 - mib + 1, 0, 0, 0, false},
	} {
		got, err := extentSize(tc.size, tc.required, tc.limit, 4*mib, "")
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("extentSize(%d, %d, %d) = %d, %v; want %d", tc.size, tc.required, tc.limit, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, backend.ErrOutOfRange) {
			t.Errorf("extentSize(%d, %d, %d) = %d, %v; want ErrOutOfRange", tc.size, tc.required, tc.limit, got, err)
		}
	}
}

func TestPoolProblems(t *testing.T) {
	healthy := lvmcmd.LV{Name: "pool", VG: "vg", Attr: "twi-aotz--", Segtype: "thin-pool", Active: true, UsageKnown: true,
		DataPercent: 89.99, MetadataPercent: 10}
	reasons := func(lv lvmcmd.LV) []string {
		var out []string
		for _, p := range poolProblems(lv) {
			out = append(out, p.Reason)
		}
		return out
	}
	if got := reasons(healthy); got != nil {
		t.Errorf("healthy pool: %v", got)
	}
	full := healthy
	full.DataPercent, full.MetadataPercent = 90, 95.5
	if got := reasons(full); !reflect.DeepEqual(got, []string{"ThinPoolDataNearlyFull", "ThinPoolMetadataNearlyFull"}) {
		t.Errorf("full pool: %v", got)
	}
	for _, p := range poolProblems(full) {
		if p.Kind != backend.Degraded || !strings.Contains(p.Message, "vg/pool") {
			t.Errorf("problem %+v: want Degraded naming the pool", p)
		}
	}
	inactive := lvmcmd.LV{Name: "pool", VG: "vg", Attr: "twi---tz--", Segtype: "thin-pool"}
	if got := reasons(inactive); !reflect.DeepEqual(got, []string{"ThinPoolInactive"}) {
		t.Errorf("inactive pool: %v", got)
	}
	outOfData := healthy
	outOfData.Attr, outOfData.DataPercent = "twi-aotzD-", 100
	if got := reasons(outOfData); !reflect.DeepEqual(got, []string{"ThinPoolOutOfDataSpace", "ThinPoolDataNearlyFull"}) {
		t.Errorf("pool out of data: %v", got)
	}
	if got := lvProblems(lvmcmd.LV{Attr: "-wi-a---p-"}); len(got) != 1 || got[0].Reason != "PhysicalVolumeMissing" {
		t.Errorf("partial LV: %+v", got)
	}
}

// scripted answers LVM commands from canned reports and records every
// command, so that a test can assert what was (not) run.
type scripted struct {
	lvs, vgs string
	ran      []string
}

func (s *scripted) Run(ctx context.Context, args []string) (lvmcmd.Output, error) {
	s.ran = append(s.ran, strings.Join(args, " "))
	last := args[len(args)-1]
	switch args[0] {
	case "vgs":
		return lvmcmd.Output{Stdout: []byte(s.vgs)}, nil
	case "lvs":
		// Only the pool is there to be asked for by name.
		if strings.Contains(last, "/") && last != "vg/pool" {
			return lvmcmd.Output{ExitCode: 5, Stderr: []byte(`  Failed to find logical volume "` + last + `"`)}, nil
		}
		return lvmcmd.Output{Stdout: []byte(s.lvs)}, nil
	}
	return lvmcmd.Output{}, nil
}

func TestNoSpaceBeforeAnyLVCreate(t *testing.T) {
	s := &scripted{
		vgs: `{"report":[{"vg":[{"vg_name":"vg","vg_size":"1073741824","vg_free":"104857600","vg_extent_size":"4194304","vg_extent_count":"256","vg_free_count":"25"}]}]}`,
		lvs: `{"report":[{"lv":[{"lv_name":"pool","vg_name":"vg","lv_size":"536870912","lv_attr":"twi-aotz--","lv_tags":"","segtype":"thin-pool","pool_lv":"","origin":"","data_percent":"0.00","metadata_percent":"10.00","lv_active_locally":"1","lv_device_open":"1","lv_skip_activation":"0","zero":"1","chunk_size":"65536"}]}]}`,
	}
	b := &Backend{cfg: Config{VolumeGroup: "vg", ThinPool: "pool"}, client: lvmcmd.NewClient(s, time.Minute), defaultType: typeThin}
	ctx := context.Background()
	for _, tc := range []struct {
		params map[string]string
		size   int64
	}{
		{map[string]string{"type": "thick"}, 104*mib + 1}, // VG has 100 MiB free
		{nil, 480 * mib}, // pool: 90% metadata free of 512 MiB = 460.8 MiB
		{map[string]string{"overprovisionRatio": "3"}, 480 * mib}, // over-commit does not create data space
	} {
		s.ran = nil
		_, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "v", RequiredBytes: tc.size, Parameters: tc.params})
		if !errors.Is(err, backend.ErrNoSpace) {
			t.Errorf("%v: CreateVolume(%d) = %v, want ErrNoSpace", tc.params, tc.size, err)
		}
		for _, cmd := range s.ran {
			if !strings.HasPrefix(cmd, "lvs ") && !strings.HasPrefix(cmd, "vgs ") {
				t.Errorf("%v: ran %q before failing for space", tc.params, cmd)
			}
		}
	}
	c, err := b.Capacity(ctx, map[string]string{"type": "thick"})
	if err != nil || c.AvailableBytes != 100*mib {
		t.Errorf("thick capacity = %+v, %v; want 100 MiB", c, err)
	}
	if _, err := b.Capacity(ctx, map[string]string{"size": "1"}); !errors.Is(err, backend.ErrInvalid) {
		t.Errorf("unknown parameter: %v, want ErrInvalid", err)
	}
}
