package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// lvmPool is a thin pool made for the run in an existing volume group
// (inside the test VM, test/vm, the one it creates on its virtio disks),
// and removed after it.
type lvmPool struct {
	info poolInfo
	vg   string
	name string
}

const (
	thinPoolName = "tarnbench"
	// thinPoolMetadata is generous, so that metadata never bounds what
	// Tarn reports free in the pool.
	thinPoolMetadata = 64 * mib
)

// thinPoolSize is the thin pool a profile needs. Snapshots and restores
// share blocks, but Tarn counts the virtual size of every thin LV against
// the pool (over-provisioning ratio 1), so the largest volume, its
// snapshot and its restore must fit side by side.
func thinPoolSize(p profile) int64 {
	return 3*p.SnapSizes[len(p.SnapSizes)-1] + gib
}

func openLVMPool(ctx context.Context, vg, kind string, size int64) (pool, error) {
	if kind != "lvm-thin" {
		return nil, fmt.Errorf("unknown lvm pool kind %q", kind)
	}
	if vg == "" {
		return nil, errors.New("the lvm backend needs a volume group: --volume-group, or TARN_TEST_VG as the test VM sets it")
	}
	out, err := run(ctx, "lvm", "vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_free", vg)
	if err != nil {
		return nil, err
	}
	free, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("free space of volume group %s: %q: %w", vg, out, err)
	}
	// LVM keeps a spare copy of the pool's metadata beside it.
	if need := size + 2*thinPoolMetadata; free < need {
		return nil, fmt.Errorf("volume group %s has %d MiB free; the thin pool needs %d MiB "+
			"(in the test VM give it larger disks: test/vm/run.sh -d SIZE, or TARN_VM_DISK_SIZE)", vg, free/mib, need/mib)
	}
	lvcreate := []string{"lvm", "lvcreate", "--yes", "--type", "thin-pool", "--size", strconv.FormatInt(size, 10) + "b",
		"--poolmetadatasize", strconv.FormatInt(thinPoolMetadata, 10) + "b", "--name", thinPoolName, vg}
	if _, err := run(ctx, lvcreate...); err != nil {
		return nil, err
	}
	p := &lvmPool{vg: vg, name: thinPoolName, info: poolInfo{Kind: kind, Backend: "lvm", Filesystem: "none",
		Mkfs: strings.Join(lvcreate[1:], " "), ImageBytes: size, Snapshots: "thin"}}
	if out, err := run(ctx, "lvm", "vgs", "--noheadings", "-o", "pv_name", vg); err == nil {
		p.info.Device = strings.Join(strings.Fields(string(out)), " ")
	}
	if os.Getenv("TARN_VM") == "1" {
		accel := os.Getenv("TARN_VM_ACCEL")
		if accel == "" {
			accel = "tcg"
		}
		what := "software emulation (TCG)"
		if accel != "tcg" {
			what = "QEMU accel " + accel
		}
		p.info.Notes = append(p.info.Notes, fmt.Sprintf("measured inside the project's test VM (test/vm, QEMU %s, "+
			"Debian 12's 6.1 kernel, volume group on sparse virtio disks): absolute times are inflated by the "+
			"emulation, the ratio of the largest volume's cost to the smallest's is what matters", what))
	}
	return p, nil
}

func (p *lvmPool) Info() poolInfo { return p.info }

// BaselineDir is empty: LVM measures no data path, so there is no plain
// file to compare with.
func (p *lvmPool) BaselineDir() string { return "" }

func (p *lvmPool) ServeArgs() []string {
	return []string{"--backend", "lvm", "--volume-group", p.vg, "--thin-pool", p.name}
}

// checkSnapshot confirms, from LVM rather than from the driver, that a
// snapshot is a thin snapshot in the pool: a copy would make the figures
// meaningless.
func (p *lvmPool) checkSnapshot(ctx context.Context, id string) error {
	out, err := run(ctx, "lvm", "lvs", "--noheadings", "-o", "segtype,pool_lv", p.vg+"/"+id)
	if err != nil {
		return err
	}
	if f := strings.Fields(string(out)); len(f) != 2 || f[0] != "thin" || f[1] != p.name {
		return fmt.Errorf("snapshot %s is %q, not a thin LV in pool %s", id, strings.TrimSpace(string(out)), p.name)
	}
	return nil
}

// Close removes the thin pool. Thin LVs still in it were left by the run
// (every measurement deletes what it made through the driver): they are
// reported, and removed first.
func (p *lvmPool) Close(ctx context.Context) error {
	out, err := run(ctx, "lvm", "lvs", "--noheadings", "-o", "lv_name,pool_lv", p.vg)
	if err != nil {
		return err
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == p.name {
			errs = append(errs, fmt.Errorf("left behind: LV %s/%s", p.vg, f[0]))
			if _, err := run(ctx, "lvm", "lvremove", "--yes", p.vg+"/"+f[0]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if _, err := run(ctx, "lvm", "lvremove", "--yes", p.vg+"/"+p.name); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// snapshotChecker is a pool that can tell how a snapshot was made.
type snapshotChecker interface {
	checkSnapshot(ctx context.Context, id string) error
}
