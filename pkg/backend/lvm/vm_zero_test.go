package lvm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// dirtSize is how much of the VG's free space each case fills with a
// recognisable pattern before its volume is made there.
const dirtSize = 128 * mib

var dirtByte = []byte{0xa5}

// dirtyFreeExtents writes dirtByte over an LV of dirtSize that is not
// Tarn's and removes it, as an earlier tenant's volume would, and returns
// the physical extents it held.
func (e *env) dirtyFreeExtents() map[string]bool {
	e.t.Helper()
	name := "dirt_" + strconv.Itoa(os.Getpid())
	e.lvm("lvcreate", "--yes", "--size", strconv.FormatInt(dirtSize, 10)+"b", "--name", name, e.vg)
	dev := "/dev/" + e.vg + "/" + name
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	chunk := bytes.Repeat(dirtByte, int(mib))
	for off := int64(0); off < dirtSize; off += mib {
		if _, err := f.WriteAt(chunk, off); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		e.t.Fatal(err)
	}
	f.Close()
	extents := e.physicalExtents(name)
	e.lvm("lvremove", "--yes", e.vg+"/"+name)
	return extents
}

// physicalExtents lists an LV's extents as "pv:pe" (linear LVs only).
func (e *env) physicalExtents(lv string) map[string]bool {
	e.t.Helper()
	out := e.lvm("lvs", "--noheadings", "-o", "seg_pe_ranges", e.vg+"/"+lv)
	set := map[string]bool{}
	for _, r := range strings.Fields(out) {
		pv, span, ok := strings.Cut(r, ":")
		from, to, ok2 := strings.Cut(span, "-")
		a, err1 := strconv.Atoi(from)
		z, err2 := strconv.Atoi(to)
		if !ok || !ok2 || err1 != nil || err2 != nil {
			e.t.Fatalf("seg_pe_ranges of %s: cannot read %q", lv, r)
		}
		for pe := a; pe <= z; pe++ {
			set[pv+":"+strconv.Itoa(pe)] = true
		}
	}
	return set
}

// requireOnDirt fails the test unless the thick LV id took extents that
// dirtyFreeExtents wrote: otherwise reading zeros would prove nothing.
func (e *env) requireOnDirt(id string, dirt map[string]bool) {
	e.t.Helper()
	for pe := range e.physicalExtents(id) {
		if dirt[pe] {
			return
		}
	}
	e.t.Fatalf("%s took none of the extents written with the pattern; the test cannot tell", id)
}

// assertZeros fails at the first non-zero byte of dev in [from, to).
func assertZeros(t *testing.T, what, dev string, from, to int64) {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, mib)
	for off := from; off < to; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), to-off)], off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if i := bytes.IndexFunc(buf[:n], func(r rune) bool { return r != 0 }); i >= 0 {
			t.Fatalf("%s: byte %d of %s is not zero: another volume's old data shows", what, off+int64(i), dev)
		}
		if n == 0 {
			t.Fatalf("%s: %s ends at %d, before %d", what, dev, off, to)
		}
		off += int64(n)
	}
}

// written writes the pattern "source" onto v, the source of copies that
// checkPattern then reads back.
func written(e *env, v backend.Volume) backend.Volume {
	e.t.Helper()
	writePattern(e.t, e.attach(v.ID), "source")
	e.detach(v.ID)
	return v
}

// cutShort leaves thick volume v as a driver killed between lvextend and
// the zeroing of an expansion to size would.
func cutShort(e *env, v backend.Volume, size int64, dirt map[string]bool) backend.Volume {
	e.t.Helper()
	e.lvm("lvchange", "--addtag", zeroFromTag(v.SizeBytes), e.vg+"/"+v.ID)
	e.lvm("lvextend", "--size", strconv.FormatInt(size, 10)+"b", e.vg+"/"+v.ID)
	e.requireOnDirt(v.ID, dirt)
	return v
}

// TestNoOldDataInNewVolumes writes a pattern over free extents and then
// makes each kind of volume there: every byte the new volume did not get
// from its source must read as zero.
func TestNoOldDataInNewVolumes(t *testing.T) {
	raw := func(e *env, short, typ string, size int64, src backend.Source) backend.Volume {
		e.t.Helper()
		v, err := e.b.CreateVolume(e.ctx, backend.VolumeRequest{
			Name: e.name(short), RequiredBytes: size, Parameters: map[string]string{ParamType: typ}, Source: src,
		})
		if err != nil {
			e.t.Fatalf("CreateVolume %s: %v", short, err)
		}
		return v
	}
	const small, big = 16 * mib, 64 * mib
	cases := []struct {
		name string
		// make returns the new volume and how many of its first bytes
		// came from a source.
		make func(e *env, dirt map[string]bool) (backend.Volume, int64)
	}{
		{"thick blank", func(e *env, dirt map[string]bool) (backend.Volume, int64) {
			v := raw(e, "v", typeThick, big, backend.Source{})
			e.requireOnDirt(v.ID, dirt)
			return v, 0
		}},
		{"thin blank", func(e *env, _ map[string]bool) (backend.Volume, int64) {
			return raw(e, "v", typeThin, big, backend.Source{}), 0
		}},
		{"thick expanded offline", func(e *env, dirt map[string]bool) (backend.Volume, int64) {
			v := raw(e, "v", typeThick, small, backend.Source{})
			if _, err := e.b.ExpandVolume(e.ctx, v.ID, big, 0); err != nil {
				e.t.Fatal(err)
			}
			e.requireOnDirt(v.ID, dirt)
			return v, 0
		}},
		{"thick expanded while attached", func(e *env, dirt map[string]bool) (backend.Volume, int64) {
			v := raw(e, "v", typeThick, small, backend.Source{})
			e.attach(v.ID)
			if _, err := e.b.ExpandVolume(e.ctx, v.ID, big, 0); err != nil {
				e.t.Fatal(err)
			}
			e.requireOnDirt(v.ID, dirt)
			e.detach(v.ID)
			return v, 0
		}},
		{"thick expansion cut short after lvextend, finished when attached after a restart", func(e *env, dirt map[string]bool) (backend.Volume, int64) {
			v := cutShort(e, raw(e, "v", typeThick, small, backend.Source{}), big, dirt)
			e.b = e.open()
			// Before the stage could grow a filesystem into the range.
			e.attach(v.ID)
			if lv := e.lv(v.ID); lv.HasTag(zeroFromTag(small)) {
				e.t.Errorf("tag %s still on %s after it was attached", zeroFromTag(small), v.ID)
			}
			e.detach(v.ID)
			return v, 0
		}},
		{"thick clone of a volume whose expansion was cut short", func(e *env, dirt map[string]bool) (backend.Volume, int64) {
			src := cutShort(e, raw(e, "src", typeThick, small, backend.Source{}), big, dirt)
			return raw(e, "v", typeThick, big, backend.Source{VolumeID: src.ID}), 0
		}},
		{"thick expansion cut short after lvextend, finished by the retry", func(e *env, dirt map[string]bool) (backend.Volume, int64) {
			v := cutShort(e, raw(e, "v", typeThick, small, backend.Source{}), big, dirt)
			if got, err := e.b.ExpandVolume(e.ctx, v.ID, big, 0); err != nil || got != big {
				e.t.Fatalf("retried ExpandVolume = %d, %v", got, err)
			}
			return v, 0
		}},
		{"thick restored into a larger volume", func(e *env, dirt map[string]bool) (backend.Volume, int64) {
			src := written(e, raw(e, "src", typeThick, small, backend.Source{}))
			snap, err := e.b.CreateSnapshot(e.ctx, backend.SnapshotRequest{Name: e.name("snap"), SourceVolumeID: src.ID})
			if err != nil {
				e.t.Fatal(err)
			}
			v := raw(e, "v", typeThick, big, backend.Source{SnapshotID: snap.ID})
			e.requireOnDirt(v.ID, dirt)
			return v, small
		}},
		{"thick cloned into a larger volume", func(e *env, dirt map[string]bool) (backend.Volume, int64) {
			src := written(e, raw(e, "src", typeThin, small, backend.Source{}))
			v := raw(e, "v", typeThick, big, backend.Source{VolumeID: src.ID})
			e.requireOnDirt(v.ID, dirt)
			return v, small
		}},
		{"thin restored from thick into a larger volume", func(e *env, _ map[string]bool) (backend.Volume, int64) {
			src := written(e, raw(e, "src", typeThick, small, backend.Source{}))
			return raw(e, "v", typeThin, big, backend.Source{VolumeID: src.ID}), small
		}},
	}
	shared := newEnv(t, poolSize)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// One pool for all cases, each with names of its own; the
			// test's cleanup removes them all.
			e := *shared
			e.t, e.prefix = t, shared.prefix+c.name+"/"
			dirt := e.dirtyFreeExtents()
			v, fromSource := c.make(&e, dirt)
			dev := e.attach(v.ID)
			defer e.detach(v.ID)
			if fromSource > 0 {
				checkPattern(t, dev, "source", fromSource)
			}
			assertZeros(t, c.name, dev, fromSource, deviceSizeT(t, dev))
		})
	}
}

// TestThinPoolThatDoesNotZero: a pool made with --zero n hands a partly
// written chunk out with the rest of it as an earlier LV left it, which no
// volume Tarn makes may show; the backend refuses such a pool and says how
// to fix it.
func TestThinPoolThatDoesNotZero(t *testing.T) {
	e := newEnv(t, 0)
	pool := "pool_nozero"
	e.lvm("lvcreate", "--yes", "--type", "thin-pool", "--zero", "n", "--size", strconv.FormatInt(poolSize, 10)+"b", "--name", pool, e.vg)
	t.Cleanup(func() { e.lvm("lvremove", "--yes", e.vg+"/"+pool) })
	// The backend still opens: volumes already in the pool must remain
	// usable and deletable.
	b, err := New(context.Background(), Config{VolumeGroup: e.vg, ThinPool: pool})
	if err != nil {
		t.Fatalf("New on a thin pool without zeroing: %v", err)
	}
	fix := "lvchange --zero y " + e.vg + "/" + pool
	if err := b.Ready(e.ctx); err == nil || !strings.Contains(err.Error(), fix) {
		t.Errorf("Ready on a thin pool without zeroing: %v; want not ready, saying to run %s", err, fix)
	}
	req := backend.VolumeRequest{Name: e.name("v"), RequiredBytes: volSize, Parameters: map[string]string{ParamType: typeThin}}
	if _, err := b.CreateVolume(e.ctx, req); !errors.Is(err, backend.ErrNotReady) || !strings.Contains(err.Error(), fix) {
		t.Errorf("thin CreateVolume in a pool without zeroing: %v; want ErrNotReady saying to run %s", err, fix)
	}
	e.assertNoLV(backend.VolumeIDFor(req.Name))
	e.lvm("lvchange", "--zero", "y", e.vg+"/"+pool)
	if err := b.Ready(e.ctx); err != nil {
		t.Errorf("Ready once the pool zeroes: %v", err)
	}
	if _, err := b.CreateVolume(e.ctx, req); err != nil {
		t.Errorf("thin CreateVolume once the pool zeroes: %v", err)
	}
}
