package lvm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tarn-csi/tarn/pkg/backend"
	lvmcmd "github.com/tarn-csi/tarn/pkg/lvm"
	"github.com/tarn-csi/tarn/test/testpool"
)

// rawSize holds an XFS of mkfs.xfs's minimum size.
const rawSize = 320 * mib

// tenantFilesystems make on a raw block volume's device what its tenant
// may write there: an XFS whose log still holds transactions to replay
// (shut down mid-use), and a cleanly unmounted ext4.
var tenantFilesystems = []struct {
	name string
	make func(t *testing.T, dev string)
}{
	{"xfs-dirty-log", func(t *testing.T, dev string) {
		run(t, "mkfs.xfs", "-q", "-f", dev)
		withMounted(t, dev, func(mnt string) {
			writeSynced(t, mnt)
			// The shutdown keeps the committed log from being
			// checkpointed and marked clean at unmount.
			run(t, "xfs_io", "-x", "-c", "shutdown", mnt)
		})
		if out := run(t, "xfs_logprint", "-t", dev); !strings.Contains(out, "<DIRTY>") {
			t.Fatalf("the XFS log is not dirty after a shutdown:\n%s", out)
		}
	}},
	{"ext4", func(t *testing.T, dev string) {
		run(t, "mkfs.ext4", "-q", "-O", "metadata_csum_seed", dev)
		withMounted(t, dev, func(mnt string) { writeSynced(t, mnt) })
	}},
}

// A raw block volume's bytes are data to Tarn: snapshots, restores and
// clones of it, thin and thick and across the two, are its bytes exactly,
// and the kernel mounts none of them on the way (a crafted image is an
// attack on the kernel's filesystem code; a UUID change, an fsck or a log
// replay would also leave the copy different).
func TestBlockCopiesAreByteIdentical(t *testing.T) {
	for _, typ := range []string{typeThick, typeThin} {
		for _, fs := range tenantFilesystems {
			t.Run(typ+"/"+fs.name, func(t *testing.T) {
				other := map[string]string{typeThick: typeThin, typeThin: typeThick}[typ]
				// Thin LVs count at their full size: the origin and up
				// to three copies and a snapshot.
				e := newEnv(t, 5*rawSize+volSize)
				src := e.createBlock("src", typ, backend.Source{})
				dev := e.attach(src.ID)
				kmsg := testpool.OpenKernelLog(t)
				fs.make(t, dev)
				if kmsg != nil && len(mountLines(kmsg.Read(t))) == 0 {
					t.Logf("the kernel log did not show the tenant's mount; only byte identity is checked")
					kmsg = nil
				}

				s, err := e.b.CreateSnapshot(e.ctx, backend.SnapshotRequest{Name: e.name("snap"), SourceVolumeID: src.ID})
				if err != nil {
					t.Fatal(err)
				}
				copies := map[string]string{
					"restored":             e.createBlock("restored", typ, backend.Source{SnapshotID: s.ID}).ID,
					"restored as " + other: e.createBlock("cross", other, backend.Source{SnapshotID: s.ID}).ID,
					"clone":                e.createBlock("clone", typ, backend.Source{VolumeID: src.ID}).ID,
				}
				if lines := mountLines(kmsg.Read(t)); len(lines) > 0 {
					t.Errorf("the kernel mounted a filesystem while the volume was snapshotted, restored and cloned:\n%s", strings.Join(lines, "\n"))
				}
				for what, id := range copies {
					sameBytes(t, what, e.attach(id), dev)
					e.detach(id)
				}
				if err := e.client.Activate(e.ctx, e.vg, s.ID, true); err != nil {
					t.Fatal(err)
				}
				sameBytes(t, "snapshot", lvmcmd.DevicePath(e.vg, s.ID), dev)
				if err := e.client.Deactivate(e.ctx, e.vg, s.ID); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// createBlock creates a raw block volume of rawSize.
func (e *env) createBlock(short, typ string, src backend.Source) backend.Volume {
	e.t.Helper()
	v, err := e.b.CreateVolume(e.ctx, backend.VolumeRequest{
		Name: e.name(short), RequiredBytes: rawSize, Parameters: map[string]string{ParamType: typ}, Source: src,
	})
	if err != nil {
		e.t.Fatalf("CreateVolume %s: %v", short, err)
	}
	return v
}

// withMounted mounts dev for the time of use.
func withMounted(t *testing.T, dev string, use func(mnt string)) {
	t.Helper()
	mnt := t.TempDir()
	run(t, "mount", dev, mnt)
	defer run(t, "umount", mnt)
	use(mnt)
}

// writeSynced writes a file and commits the filesystem at mnt.
func writeSynced(t *testing.T, mnt string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(mnt, "file"), bytes.Repeat([]byte("tenant data "), 100000), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// mountLines picks the kernel's messages of XFS and ext4 mounts and
// unmounts; nothing else in the VM mounts while a test runs.
func mountLines(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "XFS (") || strings.HasPrefix(l, "EXT4-fs (") {
			out = append(out, l)
		}
	}
	return out
}

// sameBytes fails the test unless the device got holds exactly the bytes
// of want, and says where they first differ.
func sameBytes(t *testing.T, what, got, want string) {
	t.Helper()
	g, err := os.Open(got)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	w, err := os.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	gb, wb := make([]byte, mib), make([]byte, mib)
	for off := int64(0); ; off += mib {
		gn, gerr := io.ReadFull(g, gb)
		wn, werr := io.ReadFull(w, wb)
		if !bytes.Equal(gb[:gn], wb[:wn]) {
			i := 0
			for i < min(gn, wn) && gb[i] == wb[i] {
				i++
			}
			t.Errorf("%s differs from the source at byte %d", what, off+int64(i))
			return
		}
		if gerr != nil || werr != nil {
			if !errors.Is(gerr, io.EOF) && !errors.Is(gerr, io.ErrUnexpectedEOF) {
				t.Fatalf("read %s: %v", got, gerr)
			}
			if !errors.Is(werr, io.EOF) && !errors.Is(werr, io.ErrUnexpectedEOF) {
				t.Fatalf("read %s: %v", want, werr)
			}
			return
		}
	}
}

// TestInUseBlockVolumeIsNotCopiedTorn: a thick copy of a raw block volume
// that something holds open (a pod, through the kubelet) would mix blocks
// from before and after the writes made during it, so it is refused; a
// thin snapshot is atomic and is allowed. Closed again, the copy works.
func TestInUseBlockVolumeIsNotCopiedTorn(t *testing.T) {
	e := newEnv(t, 4*rawSize)
	for _, typ := range []string{typeThick, typeThin} {
		src := e.createBlock("src-"+typ, typ, backend.Source{})
		f, err := os.OpenFile(e.attach(src.ID), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, errSnap := e.b.CreateSnapshot(e.ctx, backend.SnapshotRequest{Name: e.name("snap-" + typ), SourceVolumeID: src.ID})
		_, errClone := e.b.CreateVolume(e.ctx, backend.VolumeRequest{Name: e.name("clone-" + typ), RequiredBytes: rawSize,
			Parameters: map[string]string{ParamType: typeThick}, Source: backend.Source{VolumeID: src.ID}})
		f.Close()
		if typ == typeThin {
			if errSnap != nil {
				t.Errorf("thin snapshot of an open raw block volume: %v, want it made", errSnap)
			}
		} else if !errors.Is(errSnap, backend.ErrInUse) {
			t.Errorf("thick snapshot of an open raw block volume: %v, want ErrInUse", errSnap)
		}
		if !errors.Is(errClone, backend.ErrInUse) {
			t.Errorf("thick clone of an open %s raw block volume: %v, want ErrInUse", typ, errClone)
		}
		e.createBlock("closed-clone-"+typ, typeThick, backend.Source{VolumeID: src.ID})
		e.detach(src.ID)
	}
}
