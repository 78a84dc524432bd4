// Package faults names the instants between the durable steps of Tarn's
// operations, so that tests can kill the driver at exactly one of them and
// check that a restart and a retried call recover.
//
// Production code calls Injector.Point at each instant; the Injector it is
// given is Nop unless the binary was built with the faultinject build tag
// and started with TARN_FAULT_POINT set (see FromEnv). Nothing here is
// global: the Injector travels in the backends' and the driver's Config.
package faults

import "slices"

// Injector is told each time an operation reaches a named point.
type Injector interface {
	Point(name string)
}

// Nop ignores every point: what a production binary runs with.
type Nop struct{}

// Point implements Injector.
func (Nop) Point(string) {}

// OrNop returns inj, or Nop when inj is nil.
func OrNop(inj Injector) Injector {
	if inj == nil {
		return Nop{}
	}
	return inj
}

// The environment that arms a faultinject binary.
const (
	// EnvPoint names the point at which the process kills itself.
	EnvPoint = "TARN_FAULT_POINT"
	// EnvHit is which arrival at the point kills (1, the first, when
	// unset).
	EnvHit = "TARN_FAULT_HIT"
)

// Backends that reach a point.
const (
	Loop = 1 << iota
	LVM
)

// Point is one named instant, with the backends whose operations reach it.
type Point struct {
	Name     string
	Backends int
}

// known lists every point. Names are "<operation>.<instant>"; the loop
// backend's points between the durable steps of building, deleting and
// growing an object, the driver's (both backends) between the node steps,
// and the LVM backend's around its LV commands. Where a step runs inside
// a freeze (the clone of a mounted volume), its points are reached with
// the filesystem frozen.
var known = []Point{
	// CreateVolume (loop; from a snapshot for the clone steps).
	{"create-volume.after-staging-dir", Loop},   // empty directory in .staging
	{"create-volume.after-data-file", Loop},     // empty data.img
	{"create-volume.before-clone", Loop},        // source quiesced, nothing copied
	{"create-volume.after-clone", Loop},         // data reflinked or copied, not sized
	{"create-volume.after-size", Loop},          // data.img sized
	{"create-volume.after-meta", Loop},          // record written
	{"create-volume.before-publish", Loop},      // staging directory durable, not renamed
	{"create-volume.after-publish", Loop},       // renamed into volumes/, parent not fsynced
	{"create-volume.after-lvcreate", LVM},       // LV made, tags but tarn.complete
	{"create-volume.before-complete", LVM},      // LV filled, not tagged complete
	{"create-snapshot.after-staging-dir", Loop}, // empty directory in .staging
	{"create-snapshot.after-data-file", Loop},   // empty data.img, source not yet frozen
	{"create-snapshot.before-clone", Loop},      // source frozen (when mounted), nothing copied
	{"create-snapshot.after-clone", Loop},       // data cloned, source still frozen
	{"create-snapshot.after-thaw", Loop},        // source thawed
	{"create-snapshot.after-meta", Loop},        // record written
	{"create-snapshot.before-publish", Loop},    // staging directory durable, not renamed
	{"create-snapshot.after-publish", Loop},     // renamed into snapshots/
	{"create-snapshot.after-lvcreate", LVM},     // LV made, tags but tarn.complete
	{"create-snapshot.before-complete", LVM},    // LV filled, not tagged complete
	{"delete-volume.before-trash", Loop},        // volume in place, nothing moved yet
	{"delete-volume.after-trash", Loop},         // renamed into .trash, parent not fsynced
	{"delete-volume.before-empty", Loop},        // rename durable, trash not emptied
	{"delete-volume.before-lvremove", LVM},      // checked unused, not removed
	{"delete-snapshot.before-trash", Loop},
	{"delete-snapshot.after-trash", Loop},
	{"delete-snapshot.before-empty", Loop},
	{"delete-snapshot.before-lvremove", LVM},
	{"expand-volume.after-truncate", Loop}, // file grown, size not recorded
	{"expand-volume.after-meta", Loop},     // new size recorded
	// NodeStageVolume and NodeUnstageVolume (the driver, any backend).
	{"stage-volume.after-attach", Loop | LVM},    // device attached, nothing mounted
	{"stage-volume.before-mount", Loop | LVM},    // after mkfs when the volume was blank
	{"stage-volume.after-mount", Loop | LVM},     // mounted, filesystem not grown
	{"unstage-volume.after-unmount", Loop | LVM}, // unmounted, device attached
}

// Known returns every point, in the order operations reach them.
func Known() []Point { return slices.Clone(known) }

// IsKnown says whether name is a point.
func IsKnown(name string) bool {
	return slices.ContainsFunc(known, func(p Point) bool { return p.Name == name })
}
