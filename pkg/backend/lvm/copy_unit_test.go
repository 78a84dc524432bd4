package lvm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// lvLookup answers `lvs vg/name` from a table of LVs; other commands fail.
type lvLookup map[string]string

func (l lvLookup) Run(ctx context.Context, args []string) (lvmcmd.Output, error) {
	name := args[len(args)-1]
	if args[0] != "lvs" {
		return lvmcmd.Output{ExitCode: 5}, nil
	}
	lv, ok := l[strings.TrimPrefix(name, "vg/")]
	if !ok {
		return lvmcmd.Output{ExitCode: 5, Stderr: []byte(`  Failed to find logical volume "` + name + `"`)}, nil
	}
	return lvmcmd.Output{Stdout: []byte(`{"report":[{"lv":[` + lv + `]}]}`)}, nil
}

func lvJSON(name, pool, data, metadata string) string {
	return fmt.Sprintf(`{"lv_name":%q,"vg_name":"vg","lv_size":"16777216","lv_attr":"Vwi-a-tz--","lv_tags":"","segtype":"thin","pool_lv":%q,"origin":"","data_percent":%q,"metadata_percent":%q,"lv_active_locally":"1","lv_device_open":"0","lv_skip_activation":"0"}`,
		name, pool, data, metadata)
}

// A copy onto a thin LV whose pool filled up is a full pool
// (ResourceExhausted), whichever error dm-thin gave the writes; any other
// failed copy stays what it was.
func TestCopyErrorNamesAFullPool(t *testing.T) {
	thinDst, thickDst := backend.VolumeIDFor("thin"), backend.VolumeIDFor("thick")
	eio := fmt.Errorf("write /dev/vg/x at 0: %w", unix.EIO)
	for _, tc := range []struct {
		name     string
		dst      string
		pool     string // the pool's data and metadata percent
		err      error
		wantFull bool
	}{
		{"ENOSPC from the device", thinDst, "50.00/10.00", fmt.Errorf("write: %w", unix.ENOSPC), true},
		{"EIO and the pool's data full", thinDst, "100.00/10.00", eio, true},
		{"EIO and the pool's metadata full", thinDst, "60.00/100.00", eio, true},
		{"EIO with room in the pool", thinDst, "60.00/10.00", eio, false},
		{"EIO on a thick LV", thickDst, "", eio, false},
		{"destination gone", backend.VolumeIDFor("gone"), "", eio, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, metadata, _ := strings.Cut(tc.pool, "/")
			runner := lvLookup{
				"tpool":  lvJSON("tpool", "", data, metadata),
				thinDst:  lvJSON(thinDst, "tpool", "1.00", ""),
				thickDst: lvJSON(thickDst, "", "", ""),
			}
			b := &Backend{cfg: Config{VolumeGroup: "vg", ThinPool: "tpool"}, client: lvmcmd.NewClient(runner, time.Minute)}
			err := b.copyError(context.Background(), backend.SnapshotIDFor("s"), tc.dst, tc.err)
			if got := errors.Is(err, backend.ErrNoSpace); got != tc.wantFull {
				t.Errorf("copyError = %v; ErrNoSpace %v, want %v", err, got, tc.wantFull)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("copyError = %v, lost the cause %v", err, tc.err)
			}
		})
	}
}
