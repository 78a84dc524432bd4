package loop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/pkg/backend"
)

func TestRecordsAreXattrsAndSurviveRestart(t *testing.T) {
	ctx := context.Background()
	b, _, dir := newTestBackend(t)
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "a", RequiredBytes: backend.MiB})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: "s", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	for _, objDir := range []string{b.volumeDir(v.ID), b.snapshotDir(s.ID)} {
		if _, err := unix.Getxattr(objDir, recordXattr, nil); err != nil {
			t.Errorf("%s: no record xattr: %v", objDir, err)
		}
		if _, err := os.Stat(filepath.Join(objDir, metaFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: meta.json written beside the xattr (%v)", objDir, err)
		}
	}
	if _, err := b.ExpandVolume(ctx, v.ID, 3*backend.MiB, 0); err != nil {
		t.Fatal(err)
	}
	b = reopen(t, dir)
	checkRecords(t, b, v.ID, s.ID, 3*backend.MiB)
}

// A pool written by a Tarn that kept records in meta.json stays readable,
// and its records stay there when they change.
func TestRecordsInMetaJSONAreReadAndUpdated(t *testing.T) {
	ctx := context.Background()
	b, _, dir := newTestBackend(t)
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "old", RequiredBytes: backend.MiB})
	if err != nil {
		t.Fatal(err)
	}
	vdir := b.volumeDir(v.ID)
	data, err := readRecordXattr(vdir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vdir, metaFile), indent(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Removexattr(vdir, recordXattr); err != nil {
		t.Fatal(err)
	}
	b = reopen(t, dir)
	if got, err := b.GetVolume(ctx, v.ID); err != nil || got.Name != "old" {
		t.Fatalf("volume recorded in meta.json: %+v, %v", got, err)
	}
	if _, err := b.ExpandVolume(ctx, v.ID, 2*backend.MiB, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Getxattr(vdir, recordXattr, nil); !errors.Is(err, unix.ENODATA) {
		t.Errorf("update of a meta.json record made an xattr too (%v): two records could disagree", err)
	}
	raw, err := os.ReadFile(filepath.Join(vdir, metaFile))
	if err != nil {
		t.Fatal(err)
	}
	var m volumeMeta
	if err := json.Unmarshal(raw, &m); err != nil || m.SizeBytes != 2*backend.MiB {
		t.Errorf("meta.json after expansion: size %d, %v; want 2 MiB", m.SizeBytes, err)
	}
}

// reopen starts a backend afresh on dir, as a restarted driver does: its
// records come from the pool, not from a cache.
func reopen(t *testing.T, dir string) *Backend {
	t.Helper()
	b, err := New(context.Background(), Config{PoolDir: dir, Loop: &fakeLoop{}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkRecords(t *testing.T, b *Backend, volumeID, snapshotID string, size int64) {
	t.Helper()
	ctx := context.Background()
	if got, err := b.GetVolume(ctx, volumeID); err != nil || got.SizeBytes != size {
		t.Errorf("volume after restart: %+v, %v; want %d bytes", got, err, size)
	}
	if _, err := b.GetSnapshot(ctx, snapshotID); err != nil {
		t.Errorf("snapshot after restart: %v", err)
	}
}

func TestXattrRefused(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{unix.ENOTSUP, true},
		{unix.E2BIG, true},
		{unix.ENOSPC, true},
		{fmt.Errorf("setxattr: %w", unix.EPERM), true},
		{unix.EIO, false},
		{unix.EROFS, false},
		{unix.ENOENT, false},
	} {
		if got := xattrRefused(tc.err); got != tc.want {
			t.Errorf("xattrRefused(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// On a filesystem that cannot hold the record as an xattr, every record is
// a meta.json, and changes and restarts keep working.
func TestRecordsFallBackToMetaJSON(t *testing.T) {
	ctx := context.Background()
	b, _, dir := newTestBackend(t)
	b.setxattr = func(string, string, []byte, int) error { return unix.ENOTSUP }
	v, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "a", RequiredBytes: backend.MiB})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{Name: "s", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ExpandVolume(ctx, v.ID, 3*backend.MiB, 0); err != nil {
		t.Fatalf("ExpandVolume with records in meta.json: %v", err)
	}
	for _, objDir := range []string{b.volumeDir(v.ID), b.snapshotDir(s.ID)} {
		if _, err := os.Stat(filepath.Join(objDir, metaFile)); err != nil {
			t.Errorf("%s: %v, want a meta.json", objDir, err)
		}
	}
	b = reopen(t, dir)
	checkRecords(t, b, v.ID, s.ID, 3*backend.MiB)
}

// A real failure to set the record fails the call and leaves nothing.
func TestRecordWriteFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	b, _, dir := newTestBackend(t)
	b.setxattr = func(string, string, []byte, int) error { return unix.EIO }
	if _, err := b.CreateVolume(ctx, backend.VolumeRequest{Name: "a", RequiredBytes: backend.MiB}); err == nil {
		t.Fatal("CreateVolume succeeded although its record could not be written")
	}
	for _, d := range []string{volumesDir, stagingDir} {
		if entries, _ := os.ReadDir(filepath.Join(dir, d)); len(entries) > 0 {
			t.Errorf("%s after a failed create: %d entries, want none", d, len(entries))
		}
	}
}
