package lvm

import (
	"context"
	"fmt"
	"math"
	"strconv"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/backend/reserve"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
)

// StorageClass parameters of the LVM backend.
const (
	// ParamType is "thin" or "thick".
	ParamType = "type"
	// ParamOverprovisionRatio lets the virtual sizes of a thin pool's
	// volumes add up to that many times the pool (a float, at least 1;
	// 1, the default, is no over-commit).
	ParamOverprovisionRatio = "overprovisionRatio"
	// paramFsType belongs to the driver; it is accepted and recorded.
	paramFsType = "fsType"

	// maxOverprovisionRatio guards the arithmetic; more is surely a typo.
	maxOverprovisionRatio = 1000
)

// class is what a volume's StorageClass parameters ask for.
type class struct {
	Type  string
	Ratio float64
}

// parseClass reads StorageClass parameters; unknown keys are ErrInvalid.
func (b *Backend) parseClass(params map[string]string) (class, error) {
	c := class{Type: b.defaultType, Ratio: 1}
	ratioSet := false
	for k, v := range params {
		switch k {
		case paramFsType:
		case ParamType:
			if v != typeThin && v != typeThick {
				return c, fmt.Errorf("%w: parameter %s=%q: use %q or %q", backend.ErrInvalid, k, v, typeThin, typeThick)
			}
			c.Type = v
		case ParamOverprovisionRatio:
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || math.IsNaN(f) || f < 1 || f > maxOverprovisionRatio {
				return c, fmt.Errorf("%w: parameter %s=%q: want a number from 1 to %d", backend.ErrInvalid, k, v, maxOverprovisionRatio)
			}
			c.Ratio, ratioSet = f, true
		default:
			return c, fmt.Errorf("%w: unknown parameter %q for the lvm backend (known: %s, %s, %s)",
				backend.ErrInvalid, k, ParamType, ParamOverprovisionRatio, paramFsType)
		}
	}
	if ratioSet && c.Type != typeThin {
		return c, fmt.Errorf("%w: %s applies only to thin volumes", backend.ErrInvalid, ParamOverprovisionRatio)
	}
	if c.Type == typeThin && b.cfg.ThinPool == "" {
		return c, fmt.Errorf("%w: thin volumes need a thin pool, and none is configured", backend.ErrInvalid)
	}
	return c, nil
}

// ratioOf is the over-commit ratio a volume was created with; it applies to
// what is later carved from the pool on its behalf (snapshots, growth).
func ratioOf(o object) float64 {
	if f, err := strconv.ParseFloat(o.Params[ParamOverprovisionRatio], 64); err == nil && f >= 1 && f <= maxOverprovisionRatio {
		return f
	}
	return 1
}

// vgState is one consistent look at the VG for accounting.
type vgState struct {
	vg  lvmcmd.VG
	lvs []lvmcmd.LV
}

func (b *Backend) vgState(ctx context.Context) (vgState, error) {
	vg, err := b.client.VG(ctx, b.cfg.VolumeGroup)
	if err != nil {
		return vgState{}, err
	}
	lvs, err := b.client.LVs(ctx, b.cfg.VolumeGroup)
	if err != nil {
		return vgState{}, err
	}
	return vgState{vg: vg, lvs: lvs}, nil
}

// Capacity implements backend.Backend.
func (b *Backend) Capacity(ctx context.Context, params map[string]string) (backend.Capacity, error) {
	c, err := b.parseClass(params)
	if err != nil {
		return backend.Capacity{}, err
	}
	st, err := b.vgState(ctx)
	if err != nil {
		return backend.Capacity{}, err
	}
	capacity, err := capacityOf(st, c.Type, b.cfg.ThinPool, c.Ratio)
	if err != nil {
		return backend.Capacity{}, err
	}
	// What calls in flight were promised is no longer on offer.
	capacity.AvailableBytes = max(capacity.AvailableBytes-b.ledger(c.Type).Pending(), 0)
	capacity.MaximumVolumeSize = capacity.AvailableBytes
	return capacity, nil
}

// capacityOf is what a new volume of the type could get, never more than
// LVM would actually give it.
//
// Thick: the VG's free extents.
//
// Thin: pool size × ratio − Σ virtual sizes of all thin LVs in the pool
// (snapshots included: overwriting an origin after a snapshot needs new
// blocks for up to the snapshot's size, so with ratio 1 nothing can run
// out). It is also bounded by what the pool really has left:
// pool size × (1 − data%) and pool size × (1 − metadata%), the latter
// because a thin pool's metadata is sized to map the whole pool, so its
// free share is about the share of the pool it can still map (an
// underestimate while the pool is nearly empty, never an overestimate).
// Everything is rounded down to whole extents.
func capacityOf(st vgState, typ, poolName string, ratio float64) (backend.Capacity, error) {
	extent := st.vg.ExtentSize
	if typ == typeThick {
		free := st.vg.FreeCount * extent
		return backend.Capacity{AvailableBytes: free, MaximumVolumeSize: free, TotalBytes: st.vg.Size}, nil
	}
	var pool *lvmcmd.LV
	var virtual int64
	for i, lv := range st.lvs {
		switch {
		case lv.Name == poolName && lv.IsThinPool():
			pool = &st.lvs[i]
		case lv.IsThin() && lv.Pool == poolName:
			virtual += lv.Size
		}
	}
	if pool == nil {
		return backend.Capacity{}, fmt.Errorf("%w: thin pool %s/%s is missing", backend.ErrNotReady, st.vg.Name, poolName)
	}
	if !pool.UsageKnown {
		return backend.Capacity{}, fmt.Errorf("%w: thin pool %s/%s is not active, so its usage is unknown", backend.ErrNotReady, st.vg.Name, poolName)
	}
	total := scale(pool.Size, ratio)
	avail := min(
		total-virtual,
		scale(pool.Size, 1-pool.DataPercent/100),
		scale(pool.Size, 1-pool.MetadataPercent/100),
	)
	avail = max(avail, 0) / extent * extent
	return backend.Capacity{AvailableBytes: avail, MaximumVolumeSize: avail, TotalBytes: total}, nil
}

// scale multiplies a size by a factor, rounding down.
func scale(size int64, f float64) int64 {
	v := math.Floor(float64(size) * f)
	if v >= math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return int64(v)
}

// reserve fails with ErrNoSpace, before anything is created, when need
// more bytes of the type cannot be promised. pool is the thin pool to carve
// from. Otherwise the bytes stay promised until release is called, which
// the caller does once the LV exists at its full size, where lvs accounts
// for it, or was never made: calls under different names run side by side,
// and the check alone would let them share the same last extents.
func (b *Backend) reserve(ctx context.Context, typ, pool string, ratio float64, need int64) (release func(), err error) {
	return b.ledger(typ).Reserve(need, func(pending int64) error {
		st, err := b.vgState(ctx)
		if err != nil {
			return err
		}
		c, err := capacityOf(st, typ, pool, ratio)
		if err != nil {
			return err
		}
		if avail := max(c.AvailableBytes-pending, 0); need > avail {
			where := "volume group " + b.cfg.VolumeGroup
			if typ == typeThin {
				where = fmt.Sprintf("thin pool %s/%s (overprovision ratio %g)", b.cfg.VolumeGroup, pool, ratio)
			}
			return fmt.Errorf("%w: %d bytes asked, %d available in %s (%d more promised to calls in progress)",
				backend.ErrNoSpace, need, avail, where, pending)
		}
		return nil
	})
}

// ledger is where reservations of the type are counted: thin volumes take
// virtual size from the pool, thick ones extents from the VG, and neither
// takes from the other.
func (b *Backend) ledger(typ string) *reserve.Ledger {
	if typ == typeThin {
		return &b.thinLedger
	}
	return &b.thickLedger
}

// extentSize rounds a size chosen by backend.RoundSize up to whole extents,
// or down when that would pass the limit, as long as the result still
// satisfies the request.
func extentSize(size, required, limit, extent int64, fsType string) (int64, error) {
	if size > math.MaxInt64-extent {
		// Rounding up would overflow; no VG is that large anyway.
		return 0, fmt.Errorf("%w: %d bytes is beyond any volume group", backend.ErrOutOfRange, size)
	}
	s := (size + extent - 1) / extent * extent
	if limit > 0 && s > limit {
		s = limit / extent * extent
		if s < required || s < backend.MinSize(fsType) || s == 0 {
			return 0, fmt.Errorf("%w: no size in [%d, %d] bytes is a multiple of the %d-byte extent and at least %d bytes",
				backend.ErrOutOfRange, required, limit, extent, max(required, backend.MinSize(fsType)))
		}
	}
	return s, nil
}
