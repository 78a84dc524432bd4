package lvm

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

const (
	volSize  = 64 * mib
	poolSize = 256 * mib
)

func TestVolumeLifecycle(t *testing.T) {
	for _, typ := range []string{typeThick, typeThin} {
		t.Run(typ, func(t *testing.T) {
			e := newEnv(t, poolSize)
			req := backend.VolumeRequest{Name: e.name("v"), RequiredBytes: volSize, FsType: "ext4", Parameters: e.params(typ)}
			v, err := e.b.CreateVolume(e.ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if v.ID != backend.VolumeIDFor(req.Name) || v.Name != req.Name || v.SizeBytes != volSize || v.FsType != "ext4" || v.CreatedAt.IsZero() {
				t.Errorf("CreateVolume = %+v", v)
			}
			lv := e.lv(v.ID)
			if lv.Active || lv.SkipActivation || lv.IsThin() != (typ == typeThin) || !lv.HasTag(tagComplete) {
				t.Errorf("new LV %+v: want inactive, complete, no activation skip, of type %s", lv, typ)
			}

			// Retries converge; incompatible requests do not.
			if again, err := e.b.CreateVolume(e.ctx, req); err != nil || again.ID != v.ID || !again.CreatedAt.Equal(v.CreatedAt) {
				t.Errorf("retried CreateVolume = %+v, %v", again, err)
			}
			bigger := req
			bigger.RequiredBytes = 2 * volSize
			if _, err := e.b.CreateVolume(e.ctx, bigger); !errors.Is(err, backend.ErrAlreadyExists) {
				t.Errorf("CreateVolume with another size: %v, want ErrAlreadyExists", err)
			}
			other := req
			other.Parameters = map[string]string{ParamType: typeThick}
			if _, err := e.b.CreateVolume(e.ctx, other); !errors.Is(err, backend.ErrAlreadyExists) {
				t.Errorf("CreateVolume with other parameters: %v, want ErrAlreadyExists", err)
			}
			bad := backend.VolumeRequest{Name: e.name("bad"), Parameters: map[string]string{"stripes": "2"}}
			if _, err := e.b.CreateVolume(e.ctx, bad); !errors.Is(err, backend.ErrInvalid) {
				t.Errorf("unknown parameter: %v, want ErrInvalid", err)
			}
			e.assertNoLV(backend.VolumeIDFor(bad.Name))

			// Sizes are whole extents.
			small := e.createVolume("small", typ, 5*mib, backend.Source{})
			if small.SizeBytes != 16*mib { // ext4's minimum, already whole extents
				t.Errorf("5 MiB ext4 volume is %d bytes, want 16 MiB", small.SizeBytes)
			}
			raw, err := e.b.CreateVolume(e.ctx, backend.VolumeRequest{Name: e.name("raw"), RequiredBytes: 5 * mib, Parameters: e.params(typ)})
			if err != nil || raw.SizeBytes != 8*mib {
				t.Errorf("5 MiB block volume = %+v, %v; want 8 MiB (two 4 MiB extents)", raw, err)
			}

			if got, err := e.b.GetVolume(e.ctx, v.ID); err != nil || got.Name != v.Name || got.SizeBytes != v.SizeBytes {
				t.Errorf("GetVolume = %+v, %v", got, err)
			}
			list, err := e.b.ListVolumes(e.ctx)
			if err != nil || !slices.ContainsFunc(list, func(x backend.Volume) bool { return x.ID == v.ID }) ||
				!slices.IsSortedFunc(list, func(a, b backend.Volume) int { return compare(a.ID, b.ID) }) {
				t.Errorf("ListVolumes = %v, %v: want sorted, with %s", list, err, v.ID)
			}

			// Node side: attach is activation, idempotent.
			if dev, err := e.b.DevicePath(e.ctx, v.ID); err != nil || dev != "" {
				t.Errorf("DevicePath before attach = %q, %v", dev, err)
			}
			dev := e.attach(v.ID)
			if dev != lvmcmd.DevicePath(e.vg, v.ID) || deviceSizeT(t, dev) != volSize {
				t.Errorf("attached %s of %d bytes", dev, deviceSizeT(t, dev))
			}
			if again := e.attach(v.ID); again != dev {
				t.Errorf("second attach = %s, want %s", again, dev)
			}
			if got, err := e.b.DevicePath(e.ctx, v.ID); err != nil || got != dev {
				t.Errorf("DevicePath = %q, %v; want %s", got, err, dev)
			}
			if p := e.b.Health(e.ctx, v.ID); len(p) != 0 {
				t.Errorf("Health of a fresh volume = %+v", p)
			}

			// An open device can be neither detached nor deleted.
			f, err := os.Open(dev)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.b.DeleteVolume(e.ctx, v.ID); !errors.Is(err, backend.ErrInUse) {
				t.Errorf("DeleteVolume of an open volume: %v, want ErrInUse", err)
			}
			if err := e.b.DetachVolume(e.ctx, v.ID); !errors.Is(err, backend.ErrInUse) {
				t.Errorf("DetachVolume of an open volume: %v, want ErrInUse", err)
			}
			f.Close()
			e.detach(v.ID)
			e.detach(v.ID)
			if dev, err := e.b.DevicePath(e.ctx, v.ID); err != nil || dev != "" {
				t.Errorf("DevicePath after detach = %q, %v", dev, err)
			}

			for i := 0; i < 2; i++ {
				if err := e.b.DeleteVolume(e.ctx, v.ID); err != nil {
					t.Fatalf("DeleteVolume #%d: %v", i+1, err)
				}
			}
			e.assertNoLV(v.ID)
			if _, err := e.b.GetVolume(e.ctx, v.ID); !errors.Is(err, backend.ErrNotFound) {
				t.Errorf("GetVolume after delete: %v", err)
			}
			if p := e.b.Health(e.ctx, v.ID); len(p) != 1 || p[0].Reason != "VolumeNotFound" {
				t.Errorf("Health of a deleted volume = %+v", p)
			}
		})
	}
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestExpand(t *testing.T) {
	for _, typ := range []string{typeThick, typeThin} {
		t.Run(typ, func(t *testing.T) {
			e := newEnv(t, poolSize)
			v := e.createVolume("v", typ, volSize, backend.Source{})
			dev := e.attach(v.ID)
			writePattern(t, dev, "before")
			size, err := e.b.ExpandVolume(e.ctx, v.ID, 100*mib, 0)
			if err != nil || size != 100*mib {
				t.Fatalf("ExpandVolume = %d, %v; want 100 MiB", size, err)
			}
			// Device-mapper sees lvextend at once; RefreshDevice only checks.
			if n := deviceSizeT(t, dev); n != size {
				t.Errorf("attached device is %d bytes after expansion, want %d", n, size)
			}
			if err := e.b.RefreshDevice(e.ctx, v.ID); err != nil {
				t.Errorf("RefreshDevice: %v", err)
			}
			checkPattern(t, dev, "before", volSize)
			for _, ask := range []int64{100 * mib, 97 * mib, volSize} {
				if got, err := e.b.ExpandVolume(e.ctx, v.ID, ask, 0); err != nil || got != 100*mib {
					t.Errorf("ExpandVolume(%d) = %d, %v; want it left at 100 MiB", ask, got, err)
				}
			}
			if _, err := e.b.ExpandVolume(e.ctx, v.ID, 101*mib, 102*mib); !errors.Is(err, backend.ErrOutOfRange) {
				t.Errorf("ExpandVolume to [101, 102] MiB: %v, want ErrOutOfRange (no whole 4 MiB extent fits)", err)
			}
			if _, err := e.b.ExpandVolume(e.ctx, v.ID, 64*backend.GiB, 0); !errors.Is(err, backend.ErrNoSpace) {
				t.Errorf("ExpandVolume past the free space: %v, want ErrNoSpace", err)
			}
			if got := e.lv(v.ID).Size; got != 100*mib {
				t.Errorf("LV is %d bytes after the failed expansions", got)
			}
			e.detach(v.ID)
		})
	}
}

// The thick case fills the VG; the thin one fills the pool; neither may
// leave anything behind when asked for more.
func TestCapacity(t *testing.T) {
	t.Run(typeThick, func(t *testing.T) {
		e := newEnv(t, 0)
		c, err := e.b.Capacity(e.ctx, map[string]string{ParamType: typeThick})
		if err != nil {
			t.Fatal(err)
		}
		vg, err := e.client.VG(e.ctx, e.vg)
		if err != nil {
			t.Fatal(err)
		}
		if c.AvailableBytes != vg.FreeCount*vg.ExtentSize || c.MaximumVolumeSize != c.AvailableBytes || c.TotalBytes != vg.Size {
			t.Errorf("Capacity = %+v for VG %+v", c, vg)
		}
		e.fillAndOverflow(typeThick, c.AvailableBytes)
	})
	t.Run(typeThin, func(t *testing.T) {
		e := newEnv(t, poolSize)
		c, err := e.b.Capacity(e.ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		pool := e.lv(e.pool)
		// The formula, from LVM's own numbers for an empty pool.
		want := min(pool.Size, scale(pool.Size, 1-pool.DataPercent/100), scale(pool.Size, 1-pool.MetadataPercent/100)) / (4 * mib) * (4 * mib)
		t.Logf("empty %d MiB pool: data %.2f%%, metadata %.2f%%: %d MiB available", pool.Size/mib, pool.DataPercent, pool.MetadataPercent, c.AvailableBytes/mib)
		if c.AvailableBytes != want || c.TotalBytes != pool.Size {
			t.Errorf("Capacity = %+v, want %d available of %d", c, want, pool.Size)
		}
		v := e.fillAndOverflow(typeThin, c.AvailableBytes)

		// A thin snapshot counts its virtual size at the origin's ratio.
		_, err = e.b.CreateSnapshot(e.ctx, backend.SnapshotRequest{Name: e.name("snap"), SourceVolumeID: v.ID})
		if !errors.Is(err, backend.ErrNoSpace) {
			t.Errorf("snapshot in a full pool: %v, want ErrNoSpace", err)
		}
		e.assertNoLV(backend.SnapshotIDFor(e.name("snap")))

		// Over-commit admits more virtual size, never more than the real
		// free space of the pool.
		ratio := map[string]string{ParamOverprovisionRatio: "2"}
		c2, err := e.b.Capacity(e.ctx, ratio)
		if err != nil {
			t.Fatal(err)
		}
		if c2.AvailableBytes <= 0 || c2.AvailableBytes > scale(pool.Size, 1-e.lv(e.pool).DataPercent/100) || c2.TotalBytes != 2*pool.Size {
			t.Errorf("Capacity at ratio 2 = %+v", c2)
		}
		if _, err := e.b.CreateVolume(e.ctx, backend.VolumeRequest{Name: e.name("over"), RequiredBytes: c2.AvailableBytes, Parameters: ratio}); err != nil {
			t.Errorf("over-committed volume of %d bytes: %v", c2.AvailableBytes, err)
		}
	})
}

// fillAndOverflow asks for one extent more than avail, which must fail
// with ErrNoSpace before anything is made, then creates volumes of exactly
// what is available, which must succeed, until nothing is left (a thin
// pool's metadata bound can leave virtual room after the first), and then
// one more extent must fail again.
func (e *env) fillAndOverflow(typ string, avail int64) backend.Volume {
	e.t.Helper()
	if avail < 8*mib {
		e.t.Fatalf("only %d bytes available", avail)
	}
	params := map[string]string{ParamType: typ}
	tooBig := backend.VolumeRequest{Name: e.name("too-big"), RequiredBytes: avail + 4*mib, Parameters: params}
	if _, err := e.b.CreateVolume(e.ctx, tooBig); !errors.Is(err, backend.ErrNoSpace) {
		e.t.Errorf("volume one extent over the available %d bytes: %v, want ErrNoSpace", avail, err)
	}
	e.assertNoLV(backend.VolumeIDFor(tooBig.Name))
	var first backend.Volume
	for i := 0; avail >= 4*mib; i++ {
		if i == 3 {
			e.t.Fatalf("%d bytes still available after %d volumes", avail, i)
		}
		v, err := e.b.CreateVolume(e.ctx, backend.VolumeRequest{Name: e.name(fmt.Sprint("all", i)), RequiredBytes: avail, Parameters: params})
		if err != nil {
			e.t.Fatalf("volume of exactly the available %d bytes: %v", avail, err)
		}
		if i == 0 {
			first = v
		}
		c, err := e.b.Capacity(e.ctx, params)
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Logf("after a %d MiB volume: %d MiB available", v.SizeBytes/mib, c.AvailableBytes/mib)
		avail = c.AvailableBytes
	}
	more := backend.VolumeRequest{Name: e.name("more"), RequiredBytes: 4 * mib, Parameters: map[string]string{ParamType: typ}}
	if _, err := e.b.CreateVolume(e.ctx, more); !errors.Is(err, backend.ErrNoSpace) {
		e.t.Errorf("volume after filling: %v, want ErrNoSpace", err)
	}
	e.assertNoLV(backend.VolumeIDFor(more.Name))
	return first
}
