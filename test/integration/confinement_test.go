package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/test/testpool"
)

// unknownVolume is a well-formed volume ID that names no volume.
const unknownVolume = "vol-0123456789abcdef0123456789abcdef"

// TestNodePathsStayUnderKubeletDir sends every node call that takes a path
// a path the kubelet would never send: outside the kubelet directory, the
// kubelet directory itself, and paths through a symbolic link that leads
// out of it. Each is refused with InvalidArgument before anything is
// created, mounted or removed.
func TestNodePathsStayUnderKubeletDir(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	vol := e.createVolume(t, "confined", "ext4", bigVolume, nil).GetVolumeId()
	a := e.use(t, vol, "ext4")
	want := map[string]string{"data": writeRandomFile(t, a.path("data"), 1*MiB)}

	// A directory beside the kubelet directory, and a link into it from
	// inside: what a caller would aim at to reach the host.
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("host file"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(e.work, "link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	before := testpool.Snapshot(t)

	paths := []struct{ name, path string }{
		{"outside", filepath.Join(outside, "p")},
		{"the kubelet directory itself", e.work},
		{"through a symlink out", filepath.Join(link, "p")},
		{"a symlink out as the last component", link},
		{"a host file", filepath.Join(outside, "keep")},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			calls := map[string]func() error{
				"stage": func() error {
					ctx, cancel := callCtx()
					defer cancel()
					_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: p.path, VolumeCapability: capability("ext4")})
					return err
				},
				"publish as staging path": func() error {
					ctx, cancel := callCtx()
					defer cancel()
					_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: p.path,
						TargetPath: filepath.Join(e.work, "new-target"), VolumeCapability: capability("ext4")})
					return err
				},
				"publish as target path": func() error {
					ctx, cancel := callCtx()
					defer cancel()
					_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: a.staging,
						TargetPath: p.path, VolumeCapability: capability("ext4")})
					return err
				},
				"unpublish": func() error {
					ctx, cancel := callCtx()
					defer cancel()
					_, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: p.path})
					return err
				},
				"unstage": func() error {
					ctx, cancel := callCtx()
					defer cancel()
					_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: p.path})
					return err
				},
				"stats": func() error {
					ctx, cancel := callCtx()
					defer cancel()
					_, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: p.path})
					return err
				},
			}
			for name, call := range calls {
				wantCode(t, call(), codes.InvalidArgument, name+" at "+p.path)
			}
			testpool.AssertNoLeaks(t, before)
			entries, err := os.ReadDir(outside)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 || entries[0].Name() != "keep" {
				t.Errorf("outside the kubelet directory now holds %v, want only keep", entries)
			}
			if _, err := os.Stat(filepath.Join(e.work, "new-target")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused publish created its target: %v", err)
			}
		})
	}
	checkFiles(t, a.target, want)
}

// TestNodeCallsTouchOnlyTheirVolume names, in each node call, a path that
// holds another volume (or something that is no volume at all). An unstage
// or unpublish is the spec's "not staged or published there": success, with
// nothing unmounted or removed; a publish that would bind someone else's
// mount is refused.
func TestNodeCallsTouchOnlyTheirVolume(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	mine := e.createVolume(t, "mine", "ext4", bigVolume, nil).GetVolumeId()
	theirs := e.createVolume(t, "theirs", "ext4", bigVolume, nil).GetVolumeId()
	m := e.use(t, mine, "ext4")
	o := e.use(t, theirs, "ext4")
	want := map[string]string{"data": writeRandomFile(t, o.path("data"), 1*MiB)}

	// Something mounted under the kubelet directory that is no volume, and
	// a file with content where a target could be.
	foreign := filepath.Join(e.work, "foreign")
	if err := os.MkdirAll(foreign, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", foreign, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(foreign, unix.MNT_DETACH) })
	file := filepath.Join(e.work, "config.yaml")
	if err := os.WriteFile(file, []byte("kubelet: config"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := testpool.Snapshot(t)

	for _, tt := range []struct {
		name, volID, path string
	}{
		{"another volume's publication", mine, o.target},
		{"another volume's staging mount", mine, o.staging},
		{"an unknown volume at a publication", unknownVolume, o.target},
		{"an unknown volume at a staging mount", unknownVolume, o.staging},
		{"a mount that is no volume", mine, foreign},
		{"a file with content", mine, file},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := callCtx()
			defer cancel()
			_, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: tt.volID, TargetPath: tt.path})
			wantCode(t, err, codes.OK, "NodeUnpublishVolume "+tt.volID+" at "+tt.path)
			_, err = e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: tt.volID, StagingTargetPath: tt.path})
			if tt.volID == mine && tt.path == file {
				// Not a mount: an unstage of a volume still published
				// elsewhere says so, and changes nothing either.
				wantCode(t, err, codes.FailedPrecondition, "NodeUnstageVolume "+tt.volID+" at "+tt.path)
			} else {
				wantCode(t, err, codes.OK, "NodeUnstageVolume "+tt.volID+" at "+tt.path)
			}
			testpool.AssertNoLeaks(t, before)
		})
	}
	checkFiles(t, o.target, want)
	if got, err := os.ReadFile(file); err != nil || string(got) != "kubelet: config" {
		t.Errorf("file at a target path: %q, %v; want it untouched", got, err)
	}

	for _, staging := range []string{o.staging, foreign} {
		target := filepath.Join(e.work, "stolen")
		ctx, cancel := callCtx()
		_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: mine, StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: capability("ext4")})
		cancel()
		wantCode(t, err, codes.FailedPrecondition, "NodePublishVolume of "+mine+" from staging path "+staging)
		testpool.AssertNoLeaks(t, before)
	}
	e.release(t, m)
	e.release(t, o)
}

// TestReadOnlyAlwaysWins publishes with readonly set and rw among the mount
// flags, and with a reader-only access mode and no readonly flag: both
// publications are read-only. Mount flags that reach beyond the volume are
// refused wherever they come.
func TestReadOnlyAlwaysWins(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	vol := e.createVolume(t, "readonly", "ext4", bigVolume, nil).GetVolumeId()
	a := e.use(t, vol, "ext4")
	writeRandomFile(t, a.path("data"), 1*MiB)

	rwFlags := &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4", MountFlags: []string{"rw"}}},
	}
	readerOnly := &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	}
	for _, tt := range []struct {
		name     string
		cap      *csi.VolumeCapability
		readonly bool
	}{
		{"readonly with rw among the flags", rwFlags, true},
		{"reader-only access mode", readerOnly, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := e.publish(t, attachment{volID: vol, staging: a.staging, cap: tt.cap, readonly: tt.readonly,
				target: filepath.Join(e.work, "ro-"+tt.cap.GetAccessMode().GetMode().String())})
			err := os.WriteFile(p.path("written"), []byte("x"), 0o600)
			if !errors.Is(err, unix.EROFS) {
				t.Errorf("write through a read-only publication: %v, want EROFS", err)
			}
		})
	}

	// A reader-only stage must not write, so it cannot format a blank
	// volume: a clear refusal, nothing left attached or mounted.
	blank := e.createVolume(t, "blank", "ext4", bigVolume, nil).GetVolumeId()
	before := testpool.Snapshot(t)
	ctx, cancel := callCtx()
	_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: blank, StagingTargetPath: filepath.Join(e.work, "blank"), VolumeCapability: readerOnly})
	cancel()
	wantCode(t, err, codes.FailedPrecondition, "reader-only NodeStageVolume of a volume with no filesystem")
	testpool.AssertNoLeaks(t, before)

	for _, flag := range []string{"logdev=/dev/sda", "rtdev=/dev/sda", "errors=panic", "noatime,errors=panic", "context=system_u:object_r:container_file_t:s0"} {
		c := &csi.VolumeCapability{
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "xfs", MountFlags: []string{flag}}},
		}
		req := volumeRequest("flags", "xfs", bigVolume, nil)
		req.VolumeCapabilities = []*csi.VolumeCapability{c}
		_, err := e.tryCreateVolume(t, req)
		wantCode(t, err, codes.InvalidArgument, "CreateVolume with mount flag "+flag)
		ctx, cancel := callCtx()
		_, err = e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: filepath.Join(e.work, "flags"), VolumeCapability: c})
		cancel()
		wantCode(t, err, codes.InvalidArgument, "NodeStageVolume with mount flag "+flag)
	}
}

// TestReadOnlyPublicationIsNeverWritable: a read-only bind made in two
// steps (a bind, then a read-only remount) is writable in between, and a
// driver killed there leaves a writable publication that the kubelet's
// retry can only be told is incompatible. Tarn binds read-only in one
// step: a watcher of the mount table never sees the target writable, and
// the flags asked for are on the bind from its first instant too.
func TestReadOnlyPublicationIsNeverWritable(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	vol := e.createVolume(t, "atomic-ro", "ext4", bigVolume, nil).GetVolumeId()
	a := e.stage(t, vol, "ext4")
	raw := e.createVolume(t, "atomic-ro-raw", "", rawVolume, nil).GetVolumeId()
	b := e.stage(t, raw, "")
	for i := range 20 {
		for _, tc := range []struct {
			name string
			at   attachment
			cap  *csi.VolumeCapability
		}{
			{"mount", a, mountCapability("ext4", "nosuid", "nodev")},
			{"block", b, capability("")},
		} {
			target := filepath.Join(e.work, fmt.Sprintf("ro-%s-%d", tc.name, i))
			stop, sawWritable := make(chan struct{}), make(chan string, 1)
			go func() {
				defer close(sawWritable)
				for {
					select {
					case <-stop:
						return
					default:
					}
					mounts, _ := mountinfo.GetMounts(mountinfo.SingleEntryFilter(target))
					for _, m := range mounts {
						opts := strings.Split(m.Options, ",")
						if !slices.Contains(opts, "ro") || (tc.name == "mount" && !slices.Contains(opts, "nosuid")) {
							sawWritable <- m.Options
							return
						}
					}
				}
			}()
			ctx, cancel := callCtx()
			_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: tc.at.volID, StagingTargetPath: tc.at.staging,
				TargetPath: target, VolumeCapability: tc.cap, Readonly: true})
			close(stop)
			if err != nil {
				cancel()
				t.Fatalf("read-only NodePublishVolume (%s): %v", tc.name, err)
			}
			if opts, ok := <-sawWritable; ok {
				t.Errorf("publication %d (%s) was mounted with %s before it was read-only with its flags", i, tc.name, opts)
			}
			if _, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: tc.at.volID, TargetPath: target}); err != nil {
				t.Errorf("NodeUnpublishVolume: %v", err)
			}
			cancel()
		}
	}
}
