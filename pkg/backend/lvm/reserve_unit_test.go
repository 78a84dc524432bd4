package lvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/backend/reserve/reservetest"
	"github.com/tarn-csi/tarn/pkg/faults"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
	"github.com/tarn-csi/tarn/pkg/metrics"
)

// fakeVG is a volume group in memory that answers the LVM commands the
// backend runs, so that capacity races can be played without a VM. Like
// LVM, it over-commits a thin pool without complaint: refusing is Tarn's
// job.
type fakeVG struct {
	mu       sync.Mutex
	size     int64
	extent   int64
	lvs      map[string]*fakeLV
	cmdDelay time.Duration
}

type fakeLV struct {
	size     int64
	segtype  string
	pool     string
	tags     []string
	active   bool
	skipActv bool
}

const fakePool = "pool"

func newFakeVG(vgSize, poolSize int64) *fakeVG {
	return &fakeVG{size: vgSize, extent: 4 * mib, cmdDelay: time.Millisecond,
		lvs: map[string]*fakeLV{fakePool: {size: poolSize, segtype: "thin-pool", active: true}}}
}

func (f *fakeVG) Run(ctx context.Context, args []string) (lvmcmd.Output, error) {
	// Every LVM command takes a while, changes longer than reports (they
	// commit metadata); the races live in that while.
	if args[0] == "lvs" || args[0] == "vgs" {
		time.Sleep(f.cmdDelay)
	} else {
		time.Sleep(10 * f.cmdDelay)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	opts, target := parseArgs(args[1:])
	name := target[strings.IndexByte(target, '/')+1:]
	lv := f.lvs[name]
	missing := lvmcmd.Output{ExitCode: 5, Stderr: []byte(`  Failed to find logical volume "` + target + `"`)}
	switch args[0] {
	case "vgs":
		return f.vgReport(), nil
	case "lvs":
		if !strings.Contains(target, "/") {
			return f.lvReport(nil), nil
		}
		if lv == nil {
			return missing, nil
		}
		return f.lvReport(&name), nil
	case "lvcreate":
		name = opts["--name"][0]
		n := &fakeLV{tags: opts["--addtag"], active: true}
		switch {
		case opts["--snapshot"] != nil:
			if lv == nil {
				return missing, nil
			}
			n.size, n.segtype, n.pool = lv.size, "thin", lv.pool
		case opts["--thinpool"] != nil:
			n.size, n.segtype, n.pool = f.bytes(opts["--virtualsize"][0]), "thin", fakePool
		default:
			n.size, n.segtype = f.bytes(opts["--size"][0]), "linear"
			if n.size > f.free() {
				return lvmcmd.Output{ExitCode: 5, Stderr: []byte("  Insufficient free space")}, nil
			}
		}
		f.lvs[name] = n
	case "lvextend":
		if lv == nil {
			return missing, nil
		}
		lv.size = f.bytes(opts["--size"][0])
	case "lvchange":
		if lv == nil {
			return missing, nil
		}
		lv.tags = append(slices.DeleteFunc(lv.tags, func(t string) bool { return slices.Contains(opts["--deltag"], t) }), opts["--addtag"]...)
		if a := opts["--activate"]; a != nil {
			lv.active = a[0] == "y"
		}
		if s := opts["--setactivationskip"]; s != nil {
			lv.skipActv = s[0] == "y"
		}
	case "lvremove":
		delete(f.lvs, name)
	default:
		return lvmcmd.Output{ExitCode: 3, Stderr: []byte("fakeVG: no " + args[0])}, nil
	}
	return lvmcmd.Output{}, nil
}

// parseArgs splits "--flag value" pairs (repeatable) from the last
// positional argument; --yes and friends take no value.
func parseArgs(args []string) (map[string][]string, string) {
	opts := map[string][]string{}
	target := ""
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--yes" || a == "--snapshot" || a == "--nosuffix" || a == "--binary" ||
			a == "--refresh" || a == "--ignoreactivationskip":
			opts[a] = append(opts[a], "")
		case strings.HasPrefix(a, "--") && i+1 < len(args):
			opts[a] = append(opts[a], args[i+1])
			i++
		default:
			target = a
		}
	}
	return opts, target
}

func (f *fakeVG) bytes(arg string) int64 {
	n, err := strconv.ParseInt(strings.TrimSuffix(arg, "b"), 10, 64)
	if err != nil {
		panic(err)
	}
	return (n + f.extent - 1) / f.extent * f.extent
}

func (f *fakeVG) free() int64 {
	free := f.size
	for _, lv := range f.lvs {
		if lv.segtype != "thin" {
			free -= lv.size
		}
	}
	return free
}

// virtual is what the thin pool's volumes may come to.
func (f *fakeVG) virtual() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sum int64
	for _, lv := range f.lvs {
		if lv.segtype == "thin" {
			sum += lv.size
		}
	}
	return sum
}

func (f *fakeVG) vgReport() lvmcmd.Output {
	vg := map[string]string{
		"vg_name": "vg", "vg_size": fmt.Sprint(f.size), "vg_free": fmt.Sprint(f.free()),
		"vg_extent_size": fmt.Sprint(f.extent), "vg_extent_count": fmt.Sprint(f.size / f.extent),
		"vg_free_count": fmt.Sprint(f.free() / f.extent),
	}
	return report("vg", []map[string]string{vg})
}

func (f *fakeVG) lvReport(only *string) lvmcmd.Output {
	var rows []map[string]string
	for name, lv := range f.lvs {
		if only != nil && name != *only {
			continue
		}
		row := map[string]string{
			"lv_name": name, "vg_name": "vg", "lv_size": fmt.Sprint(lv.size), "lv_attr": "-wi-------",
			"lv_tags": strings.Join(lv.tags, ","), "segtype": lv.segtype, "pool_lv": lv.pool,
			"lv_active_locally": flag(lv.active), "lv_device_open": "0", "lv_skip_activation": flag(lv.skipActv),
		}
		if lv.segtype == "thin-pool" {
			row["lv_attr"], row["data_percent"], row["metadata_percent"] = "twi-aotz--", "0.00", "0.00"
			row["zero"], row["chunk_size"] = "1", "65536"
		}
		rows = append(rows, row)
	}
	return report("lv", rows)
}

func report(kind string, rows []map[string]string) lvmcmd.Output {
	out, err := json.Marshal(map[string]any{"report": []map[string]any{{kind: rows}}})
	if err != nil {
		panic(err)
	}
	return lvmcmd.Output{Stdout: out}
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func fakeBackend(f *fakeVG, inj faults.Injector) *Backend {
	return &Backend{cfg: Config{VolumeGroup: "vg", ThinPool: fakePool}, client: lvmcmd.NewClient(f, time.Minute),
		defaultType: typeThin, metrics: metrics.Nop{}, faults: faults.OrNop(inj),
		zero: func(context.Context, string, int64, int64) error { return nil }}
}

// gate holds the first call that reaches point until open is closed; later
// arrivals pass.
type gate struct {
	point         string
	reached, open chan struct{}
	taken         atomic.Bool
}

func newGate(point string) *gate {
	return &gate{point: point, reached: make(chan struct{}), open: make(chan struct{})}
}

func (g *gate) Point(name string) {
	if name != g.point {
		return
	}
	if g.taken.CompareAndSwap(false, true) {
		close(g.reached)
		<-g.open
	}
}

// A thin clone larger than its source is a snapshot at the source's size,
// extended afterwards: while it waits for the extension, LVM shows only
// part of it, and a volume created meanwhile must still be refused the
// rest.
func TestGrowingCloneKeepsItsPromise(t *testing.T) {
	ctx := context.Background()
	f := newFakeVG(4096*mib, 1024*mib)
	b := fakeBackend(f, nil)
	src, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "src", RequiredBytes: 100 * mib})
	if err != nil {
		t.Fatal(err)
	}
	g := newGate("create-volume.after-lvcreate")
	b.faults = g

	cloned := make(chan error)
	go func() {
		_, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "clone", RequiredBytes: 600 * mib,
			Source: backend.Source{VolumeID: src.ID}})
		cloned <- err
	}()
	<-g.reached
	// The pool has 1024 MiB; src (100) and the clone (600) are promised,
	// and the clone's first 100 MiB, which LVM already shows, count twice
	// until it is extended: on the safe side, and only for a moment.
	if c, err := b.Capacity(ctx, nil); err != nil || c.AvailableBytes != 224*mib {
		t.Errorf("capacity while the clone is being built = %+v, %v; want 224 MiB", c, err)
	}
	_, err = b.CreateVolume(ctx, backend.VolumeRequest{Name: "other", RequiredBytes: 600 * mib})
	close(g.open)
	if !errors.Is(err, backend.ErrNoSpace) {
		t.Errorf("CreateVolume of 600 MiB beside a growing 600 MiB clone in a 1024 MiB pool = %v, want ErrNoSpace", err)
	}
	if err := <-cloned; err != nil {
		t.Errorf("clone: %v", err)
	}
	if v := f.virtual(); v > 1024*mib {
		t.Errorf("thin volumes add up to %d MiB in a 1024 MiB pool at ratio 1", v/mib)
	}
	if p := b.thinLedger.Pending(); p != 0 {
		t.Errorf("%d bytes still reserved after every call returned", p)
	}
}

// Calls under different names run side by side; those that succeed must
// never together be promised more than Capacity reported, and the others
// must fail with ErrNoSpace before any LV is made.
func TestParallelCallsNeverPromiseMoreThanCapacity(t *testing.T) {
	const callers = 10
	overcommit := map[string]string{ParamOverprovisionRatio: "2.5"}
	thick := map[string]string{ParamType: typeThick}
	quarter := func(avail int64) int64 { return avail * 2 / 9 / (4 * mib) * (4 * mib) }
	for _, tc := range []struct {
		name   string
		params map[string]string
		// prepare makes what the calls work on.
		prepare func(t *testing.T, b *Backend)
		// need is what each call asks for, given what is available.
		need func(avail int64) int64
		call func(ctx context.Context, b *Backend, i int, need int64) error
		// used is what LVM shows as taken, to compare with the promise.
		used func(f *fakeVG) int64
	}{
		{name: "thin create", need: quarter, call: createCall(nil), used: (*fakeVG).virtual},
		{
			name: "thin create, over-committed", params: overcommit,
			// Virtual sizes of 2000 MiB leave 560 MiB of the 2560 the
			// ratio allows, less than the pool's free data space.
			prepare: func(t *testing.T, b *Backend) {
				mustCreate(t, b, "filler1", 1000*mib, overcommit)
				mustCreate(t, b, "filler2", 1000*mib, overcommit)
			},
			need: quarter, call: createCall(overcommit), used: (*fakeVG).virtual,
		},
		{name: "thick create", params: thick, need: quarter, call: createCall(thick), used: thickUsed},
		{
			name: "thin snapshot",
			prepare: func(t *testing.T, b *Backend) {
				mustCreate(t, b, "src", 64*mib, nil)
				c, err := b.Capacity(context.Background(), nil)
				if err != nil {
					t.Fatal(err)
				}
				// Room for two snapshots and a half.
				mustCreate(t, b, "filler", c.AvailableBytes-160*mib, nil)
			},
			need: func(int64) int64 { return 64 * mib },
			call: func(ctx context.Context, b *Backend, i int, _ int64) error {
				_, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: fmt.Sprint("s", i), SourceVolumeID: backend.VolumeIDFor("src")})
				return err
			},
			used: (*fakeVG).virtual,
		},
		{
			name: "thin expand",
			prepare: func(t *testing.T, b *Backend) {
				for i := range callers {
					mustCreate(t, b, fmt.Sprint("e", i), 4*mib, nil)
				}
			},
			need: quarter,
			call: func(ctx context.Context, b *Backend, i int, need int64) error {
				_, err := b.ExpandVolume(ctx, backend.VolumeIDFor(fmt.Sprint("e", i)), 4*mib+need, 0)
				return err
			},
			used: (*fakeVG).virtual,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFakeVG(2048*mib, 1024*mib)
			b := fakeBackend(f, nil)
			if tc.prepare != nil {
				tc.prepare(t, b)
			}
			before, err := b.Capacity(ctx, tc.params)
			if err != nil {
				t.Fatal(err)
			}
			usedBefore := tc.used(f)
			need := tc.need(before.AvailableBytes)
			succeeded := reservetest.ParallelPromises(t, callers, need, before.AvailableBytes,
				func(i int) error { return tc.call(ctx, b, i, need) })
			if got, want := tc.used(f)-usedBefore, int64(succeeded)*need; got != want {
				t.Errorf("LVM shows %d more bytes taken for %d successes of %d bytes, want %d", got, succeeded, need, want)
			}
			if p := b.thinLedger.Pending() + b.thickLedger.Pending(); p != 0 {
				t.Errorf("%d bytes still reserved after every call returned", p)
			}
		})
	}
}

func createCall(params map[string]string) func(context.Context, *Backend, int, int64) error {
	return func(ctx context.Context, b *Backend, i int, need int64) error {
		_, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: fmt.Sprint("v", i), RequiredBytes: need, Parameters: params})
		return err
	}
}

func thickUsed(f *fakeVG) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size - f.free()
}

func mustCreate(t *testing.T, b *Backend, name string, size int64, params map[string]string) {
	t.Helper()
	if _, err := b.CreateVolume(context.Background(), backend.VolumeRequest{Name: name, RequiredBytes: size, Parameters: params}); err != nil {
		t.Fatal(err)
	}
}
