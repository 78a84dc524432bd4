package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// pool is storage tarn serves volumes from, made by the harness for one
// run and removed after it.
type pool interface {
	Info() poolInfo
	// ServeArgs point 'tarn serve' at the pool.
	ServeArgs() []string
	// BaselineDir is a directory on the same storage, where fio's plain
	// file runs: the figure a volume is compared against.
	BaselineDir() string
	Close(ctx context.Context) error
}

// poolInfo describes a pool in the report.
type poolInfo struct {
	Kind       string `json:"kind"`
	Backend    string `json:"backend"`
	Filesystem string `json:"filesystem"`
	// Mkfs is the command that made the pool (an lvcreate for LVM).
	Mkfs string `json:"mkfs"`
	// ImageBytes is the size of the pool's sparse image (loop) or of the
	// thin pool (LVM).
	ImageBytes int64  `json:"image_bytes"`
	Device     string `json:"device"`
	Reflink    bool   `json:"reflink"`
	// Snapshots is how the pool's snapshots are made, as the harness
	// found: "reflink", "copy" or "thin" (LVM thin snapshots).
	Snapshots string   `json:"snapshots,omitempty"`
	Notes     []string `json:"notes,omitempty"`
}

// constantCost says whether snapshots of the pool are expected to cost the
// same whatever the data: reflinks and thin snapshots share blocks.
func (p poolInfo) constantCost() bool {
	return p.Reflink || p.Snapshots == "reflink" || p.Snapshots == "thin"
}

// benchBackend is what the harness knows about one tarn backend: the kinds
// of pool it is measured on (the first is the primary one, which every
// measurement but the snapshot comparison uses), how to make them, and
// which measurements apply. A new backend adds a case to lookupBackend and
// nothing else.
type benchBackend struct {
	Name  string
	Kinds []string
	// DirectIOModes are the --direct-io settings the data path is
	// measured with; nil when the backend has no such switch.
	DirectIOModes []bool
	// Sections are the measurements the backend supports; nil is all.
	Sections []string
	// Tools are the commands its pools need.
	Tools []string
	// PoolSize is how large a pool the profile needs; nil is the
	// profile's poolImageSize.
	PoolSize func(profile) int64
	Open     func(ctx context.Context, dir, kind string, size int64) (pool, error)
}

// supports says whether the backend can run a section.
func (b benchBackend) supports(section string) bool {
	return b.Sections == nil || slices.Contains(b.Sections, section)
}

// lookupBackend returns a backend; o supplies its settings (the LVM
// volume group).
func lookupBackend(name string, o options) (benchBackend, error) {
	switch name {
	case "loop":
		return benchBackend{
			Name:          "loop",
			Kinds:         []string{"xfs-reflink", "ext4"},
			DirectIOModes: []bool{true, false},
			Tools:         []string{"losetup", "mkfs.xfs", "mkfs.ext4", "cp"},
			Open:          openLoopPool,
		}, nil
	case "lvm":
		// Only the snapshot cost is measured on LVM: it runs in the test
		// VM (the host kernel has no device-mapper), where emulation
		// makes absolute latencies meaningless but leaves the ratio of
		// the largest volume's cost to the smallest's intact.
		vg := o.volumeGroup
		return benchBackend{
			Name:     "lvm",
			Kinds:    []string{"lvm-thin"},
			Sections: []string{"snapshot"},
			Tools:    []string{"lvm"},
			PoolSize: thinPoolSize,
			Open: func(ctx context.Context, _, kind string, size int64) (pool, error) {
				return openLVMPool(ctx, vg, kind, size)
			},
		}, nil
	}
	return benchBackend{}, fmt.Errorf("backend %q is not supported by the bench (supported: loop, lvm)", name)
}

// loopPool is a filesystem on a loop device over a sparse image, with the
// tarn pool directory and the fio baseline directory side by side on it.
type loopPool struct {
	info  poolInfo
	image string
	mnt   string
}

func mkfsFor(kind string) (fsType string, argv []string, err error) {
	switch kind {
	case "xfs-reflink":
		return "xfs", []string{"mkfs.xfs", "-f", "-q", "-m", "reflink=1"}, nil
	case "ext4":
		// Inode tables are written now rather than by ext4lazyinit in the
		// background, which would otherwise compete with the
		// measurements for the disk.
		return "ext4", []string{"mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"}, nil
	}
	return "", nil, fmt.Errorf("unknown loop pool kind %q", kind)
}

func openLoopPool(ctx context.Context, dir, kind string, size int64) (_ pool, err error) {
	fsType, mkfs, err := mkfsFor(kind)
	if err != nil {
		return nil, err
	}
	p := &loopPool{
		image: filepath.Join(dir, kind+".img"),
		mnt:   filepath.Join(dir, kind),
		info: poolInfo{Kind: kind, Backend: "loop", Filesystem: fsType,
			Mkfs: strings.Join(mkfs, " "), ImageBytes: size},
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close(ctx))
		}
	}()
	if p.info.Device, err = attachImage(ctx, p.image, size); err != nil {
		return nil, err
	}
	if _, err := run(ctx, append(mkfs, p.info.Device)...); err != nil {
		return nil, err
	}
	if err := os.Mkdir(p.mnt, 0o700); err != nil {
		return nil, err
	}
	if _, err := run(ctx, "mount", "-t", fsType, p.info.Device, p.mnt); err != nil {
		return nil, err
	}
	for _, d := range []string{p.poolDir(), p.BaselineDir()} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	p.info.Reflink = supportsReflink(ctx, p.BaselineDir())
	p.info.Snapshots = "copy"
	if p.info.Reflink {
		p.info.Snapshots = "reflink"
	}
	if kind == "xfs-reflink" && !p.info.Reflink {
		return nil, fmt.Errorf("pool %s was made with reflink=1 but cannot clone files", kind)
	}
	if dio, _ := os.ReadFile(sysLoopAttr(p.info.Device, "dio")); strings.TrimSpace(string(dio)) != "1" {
		p.info.Notes = append(p.info.Notes, "pool image attached without direct I/O: the host page cache sits under it")
	}
	return p, nil
}

func (p *loopPool) poolDir() string     { return filepath.Join(p.mnt, "pool") }
func (p *loopPool) Info() poolInfo      { return p.info }
func (p *loopPool) BaselineDir() string { return filepath.Join(p.mnt, "plain") }
func (p *loopPool) ServeArgs() []string {
	return []string{"--backend", "loop", "--pool-dir", p.poolDir()}
}

// sysLoopAttr is the sysfs file of one attribute of a loop device.
func sysLoopAttr(dev, attr string) string {
	return filepath.Join("/sys/block", filepath.Base(dev), "loop", attr)
}

// Close unmounts the pool, detaches its device and removes its image; each
// step runs even when an earlier one failed, so that as much as possible
// goes.
func (p *loopPool) Close(ctx context.Context) error {
	var errs []error
	if _, err := os.Stat(p.mnt); err == nil {
		if ok, err := mountinfo.Mounted(p.mnt); err != nil {
			errs = append(errs, err)
		} else if ok {
			if err := unmount(ctx, p.mnt); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.Remove(p.mnt); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if p.info.Device != "" {
		if _, err := run(ctx, "losetup", "-d", p.info.Device); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(p.image); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
