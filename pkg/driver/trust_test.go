package driver

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tarn-csi/tarn/pkg/backend/loop"
)

// TestSocketsSplitServices serves a kubelet and a sidecar socket and calls
// each service on each: the sidecar socket never reaches the Node service
// beyond NodeGetInfo, and only the kubelet's socket, owner only, does.
func TestSocketsSplitServices(t *testing.T) {
	dir := t.TempDir()
	b, err := loop.New(context.Background(), loop.Config{PoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	kubelet, sidecar := filepath.Join(dir, "csi.sock"), filepath.Join(dir, "sidecar.sock")
	gid := 4242
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(runDriver(t, Config{Endpoint: "unix://" + kubelet, SidecarEndpoint: "unix://" + sidecar, SocketGroup: &gid,
		NodeID: "n1", KubeletDir: "/var/lib/kubelet", Backend: b}, cancel))
	kubeletConn, sidecarConn := dialDriver(t, kubelet), dialDriver(t, sidecar)

	for _, tt := range []struct {
		path string
		mode os.FileMode
		gid  uint32
	}{{kubelet, 0o600, 0}, {sidecar, 0o660, uint32(gid)}} {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tt.mode || fi.Sys().(*syscall.Stat_t).Gid != tt.gid {
			t.Errorf("%s: mode %v group %d, want %v group %d", tt.path, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Gid, tt.mode, tt.gid)
		}
	}

	stage := func(c csi.NodeClient) error {
		_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-0123456789abcdef0123456789abcdef",
			StagingTargetPath: "/var/lib/kubelet/plugins/x/globalmount", VolumeCapability: blockCap(rwo)})
		return err
	}
	unpublish := func(c csi.NodeClient) error {
		_, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-0123456789abcdef0123456789abcdef",
			TargetPath: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv/mount"})
		return err
	}
	info := func(c csi.NodeClient) error {
		_, err := c.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
		return err
	}
	create := func(c csi.ControllerClient) error {
		_, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{})
		return err
	}
	probe := func(c csi.IdentityClient) error {
		_, err := c.Probe(ctx, &csi.ProbeRequest{})
		return err
	}
	for _, tt := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"sidecar NodeStageVolume", stage(csi.NewNodeClient(sidecarConn)), codes.PermissionDenied},
		{"sidecar NodeUnpublishVolume", unpublish(csi.NewNodeClient(sidecarConn)), codes.PermissionDenied},
		{"sidecar NodeGetInfo", info(csi.NewNodeClient(sidecarConn)), codes.OK},
		{"sidecar CreateVolume reaches its handler", create(csi.NewControllerClient(sidecarConn)), codes.InvalidArgument},
		{"sidecar Probe", probe(csi.NewIdentityClient(sidecarConn)), codes.OK},
		{"kubelet CreateVolume", create(csi.NewControllerClient(kubeletConn)), codes.PermissionDenied},
		{"kubelet NodeGetInfo", info(csi.NewNodeClient(kubeletConn)), codes.OK},
		// Refused by the stage itself (no such volume), not by the socket.
		{"kubelet NodeStageVolume reaches its handler", stage(csi.NewNodeClient(kubeletConn)), codes.NotFound},
		{"kubelet Probe", probe(csi.NewIdentityClient(kubeletConn)), codes.OK},
	} {
		if got := status.Code(tt.err); got != tt.want {
			t.Errorf("%s: %v, want %s", tt.name, tt.err, tt.want)
		}
	}
}

func TestSocketGroupNeedsSidecarEndpoint(t *testing.T) {
	b, err := loop.New(context.Background(), loop.Config{PoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	gid := 4242
	if _, err := New(Config{Endpoint: "unix:///unused", SocketGroup: &gid, NodeID: "n1", KubeletDir: "/var/lib/kubelet", Backend: b}); err == nil {
		t.Error("New with a socket group and one socket: no error; the group would reach the Node service")
	}
	if _, err := New(Config{Endpoint: "unix:///unused", NodeID: "n1", Backend: b}); err == nil {
		t.Error("New without a kubelet directory: no error")
	}
}

// TestListenKeepsALiveSocket starts a second listener on a socket that is
// being served: it must fail rather than take the socket over.
func TestListenKeepsALiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "csi.sock")
	lis, cleanup, err := listen("unix://"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	if _, _, err := listen("unix://"+path, nil); err == nil {
		t.Fatal("second listen on a live socket succeeded")
	}
	// Closed without unlinking, the socket file stays behind with nobody
	// on it, as after a crash: stale.
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	lis2, cleanup2, err := listen("unix://"+path, nil)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	lis2.Close()
	cleanup2()
}

func TestConfinePath(t *testing.T) {
	root := t.TempDir()
	kubelet := filepath.Join(root, "kubelet")
	outside := filepath.Join(root, "host")
	for _, dir := range []string{filepath.Join(kubelet, "pods", "p"), outside} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(kubelet, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(kubelet, "pods", "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(kubelet, "pods", "p"), filepath.Join(kubelet, "pods", "in")); err != nil {
		t.Fatal(err)
	}
	// The kubelet directory itself may be reached through a link.
	linkedKubelet := filepath.Join(root, "linked")
	if err := os.Symlink(kubelet, linkedKubelet); err != nil {
		t.Fatal(err)
	}
	d := &Driver{cfg: Config{KubeletDir: kubelet}, openat2: unix.Openat2}
	linked := &Driver{cfg: Config{KubeletDir: linkedKubelet}, openat2: unix.Openat2}
	for _, tt := range []struct {
		name string
		d    *Driver
		path string
		ok   bool
	}{
		{"existing directory", d, filepath.Join(kubelet, "pods", "p"), true},
		{"not yet created", d, filepath.Join(kubelet, "pods", "p", "volumes", "x", "mount"), true},
		{"kubelet directory missing parts", d, filepath.Join(kubelet, "plugins", "kubernetes.io", "csi", "x", "globalmount"), true},
		{"the kubelet directory", d, kubelet, false},
		{"outside", d, filepath.Join(outside, "x"), false},
		{"prefix but not below", d, kubelet + "-other/x", false},
		{"parent", d, root, false},
		{"symlink out", d, filepath.Join(kubelet, "pods", "out", "x"), false},
		{"symlink out, last component", d, filepath.Join(kubelet, "pods", "out"), false},
		{"symlink within", d, filepath.Join(kubelet, "pods", "in", "x"), false},
		{"under a file", d, filepath.Join(kubelet, "file", "x"), false},
		{"kubelet directory through a link", linked, filepath.Join(linkedKubelet, "pods", "p"), true},
		{"kubelet directory through a link, symlink out", linked, filepath.Join(linkedKubelet, "pods", "out"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.d.nodePath("target path", tt.path)
			if (err == nil) != tt.ok {
				t.Fatalf("nodePath(%s) = %v, want ok=%v", tt.path, err, tt.ok)
			}
			if err != nil && status.Code(err) != codes.InvalidArgument {
				t.Errorf("code = %v, want InvalidArgument", status.Code(err))
			}
		})
	}
}

// TestConfinePathFailsClosed makes the kernel's path resolution fail in
// each way it can: a path is let through only when the failure is a stale
// mount at its last component, which an unpublish must still clean up.
// Anything else, a kernel without openat2 included, refuses the call.
func TestConfinePathFailsClosed(t *testing.T) {
	kubelet := t.TempDir()
	stale := filepath.Join(kubelet, "pods", "p", "volumes", "mount")
	for _, tt := range []struct {
		name     string
		err      error
		atParent error
		ok       bool
	}{
		{"stale mount at the last component", unix.ENOTCONN, nil, true},
		{"stale NFS handle at the last component", unix.ESTALE, nil, true},
		{"I/O error at the last component", unix.EIO, nil, true},
		{"stale mount above the last component", unix.ENOTCONN, unix.ENOTCONN, false},
		{"no openat2 in the kernel", unix.ENOSYS, unix.ENOSYS, false},
		{"permission denied", unix.EACCES, nil, false},
		{"name too long", unix.ENAMETOOLONG, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &Driver{cfg: Config{KubeletDir: kubelet}, openat2: func(dirfd int, path string, how *unix.OpenHow) (int, error) {
				if path == "pods/p/volumes/mount" {
					return -1, tt.err
				}
				if tt.atParent != nil {
					return -1, tt.atParent
				}
				return unix.Openat2(dirfd, path, how)
			}}
			if err := os.MkdirAll(filepath.Dir(stale), 0o750); err != nil {
				t.Fatal(err)
			}
			err := d.nodePath("target path", stale)
			if (err == nil) != tt.ok {
				t.Fatalf("nodePath with %v = %v, want ok=%v", tt.err, err, tt.ok)
			}
		})
	}
}

func TestMountFlagPolicy(t *testing.T) {
	for _, tt := range []struct {
		flags []string
		ok    bool
	}{
		{nil, true},
		{[]string{"noatime", "nodiratime", "lazytime", "discard", "nosuid", "nodev", "noexec"}, true},
		{[]string{"data=journal", "commit=30"}, true},
		{[]string{"noatime,nodiratime"}, true},
		{[]string{"ro"}, true},
		{[]string{"logdev=/dev/sda"}, false},
		{[]string{"rtdev=/dev/sdb"}, false},
		{[]string{"errors=panic"}, false},
		{[]string{"noatime,errors=panic"}, false},
		{[]string{"context=system_u:object_r:container_file_t:s0"}, false},
		{[]string{"commit=1;x"}, false},
		{[]string{"uid=0"}, false},
	} {
		c := mountCap("xfs", rwo)
		c.GetMount().MountFlags = tt.flags
		err := validateCapability(c)
		if (err == nil) != tt.ok {
			t.Errorf("flags %q: %v, want ok=%v", tt.flags, err, tt.ok)
		}
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Errorf("flags %q: code %v, want InvalidArgument", tt.flags, status.Code(err))
		}
	}
}

func TestReadonlyWinsOverFlags(t *testing.T) {
	mountWith := func(mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
		c := mountCap("ext4", mode)
		c.GetMount().MountFlags = flags
		return c
	}
	reader := csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	for _, tt := range []struct {
		name string
		want mountWant
		ro   bool
	}{
		{"publish readonly, rw flag", publishWant(&csi.NodePublishVolumeRequest{Readonly: true, VolumeCapability: mountWith(rwo, "rw")}), true},
		{"publish readonly, ro,rw in one flag", publishWant(&csi.NodePublishVolumeRequest{Readonly: true, VolumeCapability: mountWith(rwo, "noatime,rw")}), true},
		{"publish reader-only mode", publishWant(&csi.NodePublishVolumeRequest{VolumeCapability: mountWith(reader, "rw")}), true},
		{"publish block reader-only mode", publishWant(&csi.NodePublishVolumeRequest{VolumeCapability: blockCap(reader)}), true},
		{"publish read-write", publishWant(&csi.NodePublishVolumeRequest{VolumeCapability: mountWith(rwo, "noatime")}), false},
		{"stage reader-only mode", stageWant(mountWith(reader, "rw")), true},
		{"stage read-write", stageWant(mountWith(rwo)), false},
	} {
		if tt.want.readonly != tt.ro {
			t.Errorf("%s: readonly = %v, want %v", tt.name, tt.want.readonly, tt.ro)
		}
		if tt.ro && (slices.Contains(tt.want.flags, "rw") || !tt.want.block && !slices.Contains(tt.want.flags, "ro")) {
			t.Errorf("%s: mount options %q, want ro and no rw", tt.name, tt.want.flags)
		}
	}
}
