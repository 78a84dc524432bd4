package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/test/testpool"
)

// TestReadOnlyBlockPublication publishes a raw block volume read-only, by
// the readonly flag and by a reader-only access mode, and writes to the
// published device as a pod would. A read-only bind of a device node does
// not stop writes to the device, so the device itself must refuse them.
// Once the read-only publication is gone, the volume is writable again;
// a read-only and a writable publication of one device cannot coexist,
// since the device is either.
func TestReadOnlyBlockPublication(t *testing.T) {
	e := startInProcess(t, testpool.XFSReflink, 2*GiB)
	vol := e.createVolume(t, "ro-block", "", bigVolume, nil).GetVolumeId()
	a := e.stage(t, vol, "")
	original := randomBytes(t, 4096)
	writable := e.publish(t, attachment{volID: vol, staging: a.staging, target: filepath.Join(e.work, "rw")})
	writeAt(t, writable.target, 0, original)
	if err := e.tryUnpublish(writable); err != nil {
		t.Fatal(err)
	}

	readerOnly := capability("")
	readerOnly.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	for _, tt := range []struct {
		name     string
		cap      *csi.VolumeCapability
		readonly bool
	}{
		{"readonly flag", capability(""), true},
		{"reader-only access mode", readerOnly, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			target := filepath.Join(e.work, "ro-"+tt.cap.GetAccessMode().GetMode().String())
			ctx, cancel := callCtx()
			defer cancel()
			e.publish(t, attachment{volID: vol, staging: a.staging, target: target, cap: tt.cap, readonly: tt.readonly})
			f, err := os.OpenFile(target, os.O_WRONLY, 0)
			if err == nil {
				_, err = f.WriteAt(randomBytes(t, 4096), 0)
				if err == nil {
					err = f.Sync()
				}
				f.Close()
			}
			if err == nil {
				t.Error("a write through a read-only block publication succeeded")
			}
			// A writable publication beside it would make it writable.
			_, err = e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: a.staging,
				TargetPath: filepath.Join(e.work, "rw-beside"), VolumeCapability: capability("")})
			wantCode(t, err, codes.FailedPrecondition, "writable NodePublishVolume beside a read-only one")
			checkAt(t, target, 0, original)
			if _, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target}); err != nil {
				t.Fatalf("NodeUnpublishVolume: %v", err)
			}
		})
	}

	// Writable again, and then a read-only publication beside the
	// writable one is refused for the same reason.
	again := e.publish(t, attachment{volID: vol, staging: a.staging, target: filepath.Join(e.work, "rw-again")})
	changed := bytes.Repeat([]byte{0xa5}, 4096)
	writeAt(t, again.target, 0, changed)
	checkAt(t, again.target, 0, changed)
	ctx, cancel := callCtx()
	defer cancel()
	_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: a.staging,
		TargetPath: filepath.Join(e.work, "ro-beside"), VolumeCapability: capability(""), Readonly: true})
	wantCode(t, err, codes.FailedPrecondition, "read-only NodePublishVolume beside a writable one")
}
