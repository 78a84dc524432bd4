package lvm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
	"github.com/tarn-csi/tarn/pkg/metrics"
)

// recorder is a metrics.Recorder that counts reconciler actions.
type recorder struct{ actions map[string]int }

func (r *recorder) ReconcilerAction(a string)    { r.actions[a]++ }
func (r *recorder) FreezeDuration(time.Duration) {}

// failingRemove is scripted, except that lvremove of the LVs in fail
// fails as LVM does for an LV in use.
type failingRemove struct {
	*scripted
	fail []string
}

func (f failingRemove) Run(ctx context.Context, args []string) (lvmcmd.Output, error) {
	if args[0] == "lvremove" && slices.ContainsFunc(f.fail, func(lv string) bool { return strings.HasSuffix(args[len(args)-1], "/"+lv) }) {
		f.ran = append(f.ran, strings.Join(args, " "))
		return lvmcmd.Output{ExitCode: 5, Stderr: []byte("  Logical volume vg/x contains a filesystem in use.")}, nil
	}
	return f.scripted.Run(ctx, args)
}

// The start-up sweep counts each incomplete LV it removes, and nothing
// else: not complete objects, not LVs that are not Tarn's, not a removal
// that failed (it is retried, and counted, at the next start).
func TestSweepCountsRemovedLeftovers(t *testing.T) {
	lv := func(name, tags string) string {
		return fmt.Sprintf(`{"lv_name":%q,"vg_name":"vg","lv_size":"16777216","lv_attr":"-wi-------","lv_tags":%q,"segtype":"linear","pool_lv":"","origin":"","data_percent":"","metadata_percent":"","lv_active_locally":"0","lv_device_open":"0","lv_skip_activation":"0"}`, name, tags)
	}
	complete, incompleteVol, incompleteSnap, stuck := backend.VolumeIDFor("a"), backend.VolumeIDFor("b"), backend.SnapshotIDFor("c"), backend.VolumeIDFor("d")
	s := &scripted{lvs: `{"report":[{"lv":[` + strings.Join([]string{
		lv(complete, tagOwner+","+tagComplete),
		lv(incompleteVol, tagOwner),
		lv(incompleteSnap, tagOwner),
		lv(stuck, tagOwner),
		lv("data", ""),                   // someone else's
		lv("notours", tagOwner),          // a stray tag on someone else's LV
		lv(backend.VolumeIDFor("e"), ""), // a Tarn-like name without the owner tag
	}, ",") + `]}]}`}
	rec := &recorder{actions: map[string]int{}}
	b := &Backend{cfg: Config{VolumeGroup: "vg"}, client: lvmcmd.NewClient(failingRemove{s, []string{stuck}}, time.Minute), metrics: rec}
	lvs, err := b.client.LVs(context.Background(), "vg")
	if err != nil {
		t.Fatal(err)
	}
	b.sweep(context.Background(), lvs)

	var removed []string
	for _, cmd := range s.ran {
		if strings.HasPrefix(cmd, "lvremove ") {
			removed = append(removed, cmd[strings.LastIndex(cmd, "/")+1:])
		}
	}
	slices.Sort(removed)
	want := []string{incompleteVol, incompleteSnap, stuck}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("lvremove ran for %v, want %v", removed, want)
	}
	if want := map[string]int{metrics.ActionIncompleteRemoved: 2}; !maps.Equal(rec.actions, want) {
		t.Errorf("reconciler actions = %v, want %v", rec.actions, want)
	}
}

// The sweep deactivates a complete snapshot a killed copy left active,
// unless something holds it open, and leaves every other LV's activation
// alone.
func TestSweepDeactivatesSnapshotsLeftActive(t *testing.T) {
	lv := func(name, active, open string) string {
		return fmt.Sprintf(`{"lv_name":%q,"vg_name":"vg","lv_size":"16777216","lv_attr":"-wi-a-----","lv_tags":%q,"segtype":"linear","pool_lv":"","origin":"","data_percent":"","metadata_percent":"","lv_active_locally":%q,"lv_device_open":%q,"lv_skip_activation":"1"}`,
			name, tagOwner+","+tagComplete, active, open)
	}
	left, open, inactive := backend.SnapshotIDFor("left"), backend.SnapshotIDFor("open"), backend.SnapshotIDFor("inactive")
	s := &scripted{lvs: `{"report":[{"lv":[` + strings.Join([]string{
		lv(left, "1", "0"), lv(open, "1", "1"), lv(inactive, "0", "0"),
	}, ",") + `]}]}`}
	b := &Backend{cfg: Config{VolumeGroup: "vg"}, client: lvmcmd.NewClient(s, time.Minute), metrics: metrics.Nop{}}
	lvs, err := b.client.LVs(context.Background(), "vg")
	if err != nil {
		t.Fatal(err)
	}
	b.sweep(context.Background(), lvs)
	var changed []string
	for _, cmd := range s.ran {
		if !strings.HasPrefix(cmd, "lvs ") {
			changed = append(changed, cmd)
		}
	}
	if want := []string{"lvchange --activate n vg/" + left}; !slices.Equal(changed, want) {
		t.Errorf("sweep ran %q, want %q", changed, want)
	}
}
