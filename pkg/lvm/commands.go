package lvm

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// MaxTagLength is LVM's limit on one tag.
const MaxTagLength = 1024

// ValidName says whether s can name a VG or LV. Names are checked before
// they reach an argument list, so that nothing a caller passes can be read
// as an option (a leading '-') or name something else ('/').
func ValidName(s string) bool {
	if s == "" || len(s) > 127 || s[0] == '-' || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameChar(s[i]) {
			return false
		}
	}
	return true
}

func nameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '+' || c == '_' || c == '.' || c == '-'
}

// ValidTag says whether LVM accepts s as a tag: up to 1024 of
// [A-Za-z0-9_+.-/=!:&#], not starting with '-'.
func ValidTag(s string) bool {
	if s == "" || len(s) > MaxTagLength || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !TagChar(s[i]) {
			return false
		}
	}
	return true
}

// TagChar says whether c may appear in a tag.
func TagChar(c byte) bool {
	switch c {
	case '/', '=', '!', ':', '&', '#':
		return true
	}
	return nameChar(c)
}

// DevicePath is the device node LVM makes for an active LV.
func DevicePath(vg, lv string) string { return filepath.Join("/dev", vg, lv) }

func checkNames(names ...string) error {
	for _, n := range names {
		if !ValidName(n) {
			return fmt.Errorf("%w: %q is not a valid LVM name", backend.ErrInvalid, n)
		}
	}
	return nil
}

func tagArgs(flag string, tags []string) ([]string, error) {
	var args []string
	for _, t := range tags {
		if !ValidTag(t) {
			return nil, fmt.Errorf("%w: %q is not a valid LVM tag", backend.ErrInvalid, t)
		}
		args = append(args, flag, t)
	}
	return args, nil
}

func sizeArg(n int64) string { return strconv.FormatInt(n, 10) + "b" }

func yn(b bool) string {
	if b {
		return "y"
	}
	return "n"
}

// VG reports one volume group; a missing VG is backend.ErrNotReady.
func (c *Client) VG(ctx context.Context, name string) (VG, error) {
	if err := checkNames(name); err != nil {
		return VG{}, err
	}
	out, err := c.run(ctx, append(append([]string{"vgs"}, reportArgs(vgColumns)...), name)...)
	if err != nil {
		return VG{}, err
	}
	vgs, err := ParseVGs(out)
	if err != nil {
		return VG{}, err
	}
	if len(vgs) != 1 || vgs[0].Name != name {
		return VG{}, fmt.Errorf("%w: vgs %s reported %d volume groups", backend.ErrNotReady, name, len(vgs))
	}
	return vgs[0], nil
}

// LVs reports the visible LVs of a volume group (not the hidden pool
// internals).
func (c *Client) LVs(ctx context.Context, vg string) ([]LV, error) {
	if err := checkNames(vg); err != nil {
		return nil, err
	}
	out, err := c.run(ctx, append(append([]string{"lvs"}, reportArgs(lvColumns)...), vg)...)
	if err != nil {
		return nil, err
	}
	return ParseLVs(out)
}

// LV reports one LV; a missing one is backend.ErrNotFound.
func (c *Client) LV(ctx context.Context, vg, name string) (LV, error) {
	return c.lv(ctx, vg, name, lvColumns)
}

// ThinPool reports one LV like LV, with the thin pool settings.
func (c *Client) ThinPool(ctx context.Context, vg, name string) (LV, error) {
	return c.lv(ctx, vg, name, poolColumns)
}

func (c *Client) lv(ctx context.Context, vg, name, columns string) (LV, error) {
	if err := checkNames(vg, name); err != nil {
		return LV{}, err
	}
	out, err := c.run(ctx, append(append([]string{"lvs"}, reportArgs(columns)...), vg+"/"+name)...)
	if err != nil {
		return LV{}, err
	}
	lvs, err := ParseLVs(out)
	if err != nil {
		return LV{}, err
	}
	if len(lvs) != 1 || lvs[0].Name != name {
		return LV{}, fmt.Errorf("%w: logical volume %s/%s", backend.ErrNotFound, vg, name)
	}
	return lvs[0], nil
}

// CreateOptions describes a new, blank LV.
type CreateOptions struct {
	VG, Name string
	// Size in bytes (the virtual size of a thin volume); LVM rounds it up
	// to whole extents.
	Size int64
	// ThinPool makes a thin volume in that pool of VG; "" a linear LV.
	ThinPool string
	Tags     []string
	// Activate leaves a thin volume active. A linear LV is always
	// activated, because LVM must zero its start to wipe what an earlier
	// LV left there.
	Activate bool
}

// Create makes a blank LV.
func (c *Client) Create(ctx context.Context, o CreateOptions) error {
	if err := checkNames(o.VG, o.Name); err != nil {
		return err
	}
	if o.Size <= 0 {
		return fmt.Errorf("%w: LV size %d", backend.ErrInvalid, o.Size)
	}
	tags, err := tagArgs("--addtag", o.Tags)
	if err != nil {
		return err
	}
	args := []string{"lvcreate", "--yes", "--name", o.Name}
	if o.ThinPool == "" {
		args = append(args, "--size", sizeArg(o.Size), "--zero", "y", "--wipesignatures", "y")
		args = append(args, tags...)
		args = append(args, o.VG)
	} else {
		if err := checkNames(o.ThinPool); err != nil {
			return err
		}
		args = append(args, "--virtualsize", sizeArg(o.Size), "--thinpool", o.VG+"/"+o.ThinPool,
			"--activate", yn(o.Activate))
		args = append(args, tags...)
	}
	_, err = c.run(ctx, args...)
	return err
}

// ThinSnapshotOptions describes a thin snapshot.
type ThinSnapshotOptions struct {
	VG, Name string
	// Origin is a thin LV of VG. Never give a size: "lvcreate -s -L" of a
	// thin origin makes an old-style COW snapshot instead.
	Origin string
	// SkipActivation keeps LVM's default for thin snapshots: not activated
	// by "lvchange -ay" or at boot. A snapshot that is to be used as a
	// volume must not have it.
	SkipActivation bool
	// Activate leaves the new LV active.
	Activate bool
	Tags     []string
}

// ThinSnapshot makes a thin snapshot: O(1), sharing all blocks with its
// origin. LVM suspends an active origin for the instant of the snapshot,
// which freezes a filesystem mounted on it.
func (c *Client) ThinSnapshot(ctx context.Context, o ThinSnapshotOptions) error {
	if err := checkNames(o.VG, o.Name, o.Origin); err != nil {
		return err
	}
	tags, err := tagArgs("--addtag", o.Tags)
	if err != nil {
		return err
	}
	args := []string{"lvcreate", "--yes", "--snapshot", "--name", o.Name,
		"--setactivationskip", yn(o.SkipActivation), "--activate", yn(o.Activate)}
	args = append(args, tags...)
	args = append(args, o.VG+"/"+o.Origin)
	_, err = c.run(ctx, args...)
	return err
}

// Remove removes an LV, active or not; an open one fails with
// backend.ErrInUse, a missing one with backend.ErrNotFound.
func (c *Client) Remove(ctx context.Context, vg, name string) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	_, err := c.run(ctx, "lvremove", "--yes", vg+"/"+name)
	return err
}

// Activate activates an LV. ignoreSkip activates it even when it has the
// activation-skip flag, which plain activation silently honours.
func (c *Client) Activate(ctx context.Context, vg, name string, ignoreSkip bool) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	args := []string{"lvchange", "--activate", "y"}
	if ignoreSkip {
		args = append(args, "--ignoreactivationskip")
	}
	_, err := c.run(ctx, append(args, vg+"/"+name)...)
	return err
}

// Deactivate deactivates an LV; an open one fails with backend.ErrInUse.
func (c *Client) Deactivate(ctx context.Context, vg, name string) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	_, err := c.run(ctx, "lvchange", "--activate", "n", vg+"/"+name)
	return err
}

// ChangeOptions are metadata changes made to an LV in one commit.
type ChangeOptions struct {
	AddTags []string
	DelTags []string
	// SkipActivation, when set, sets or clears the activation-skip flag.
	SkipActivation *bool
}

// Change applies metadata changes to an LV. LVM commits them together, so
// adding several tags is atomic.
func (c *Client) Change(ctx context.Context, vg, name string, o ChangeOptions) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	add, err := tagArgs("--addtag", o.AddTags)
	if err != nil {
		return err
	}
	del, err := tagArgs("--deltag", o.DelTags)
	if err != nil {
		return err
	}
	args := append([]string{"lvchange"}, add...)
	args = append(args, del...)
	if o.SkipActivation != nil {
		args = append(args, "--setactivationskip", yn(*o.SkipActivation))
	}
	if len(args) == 1 {
		return nil
	}
	_, err = c.run(ctx, append(args, vg+"/"+name)...)
	return err
}

// Extend grows an LV to size bytes (rounded up to extents by LVM). Asking
// for the current size or less is an LVM error, so callers compare first.
func (c *Client) Extend(ctx context.Context, vg, name string, size int64) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	_, err := c.run(ctx, "lvextend", "--size", sizeArg(size), vg+"/"+name)
	return err
}

// Refresh reloads an active LV's device-mapper table from the metadata.
func (c *Client) Refresh(ctx context.Context, vg, name string) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	_, err := c.run(ctx, "lvchange", "--refresh", vg+"/"+name)
	return err
}
