package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// use is a pod's life on the node: stage, publish, write a little (and
// sometimes grow the volume online), unpublish, unstage.
func (w *worker) use() {
	var v volInfo
	if w.r.IntN(2) == 0 && len(w.own) > 0 {
		v = w.own[w.r.IntN(len(w.own))]
		v.staging = filepath.Join(w.s.e.work, fmt.Sprintf("w%d", w.id), v.id)
	} else {
		v = w.s.shared[w.r.IntN(len(w.s.shared))]
	}
	shared := v.owner < 0
	c, node := w.s.c, w.s.e.node
	capability := mountCapability(v.mode)

	// Another worker may have deleted this volume (NotFound), or be
	// unstaging the shared one (Aborted, retried).
	if c.until("stage", "NodeStageVolume", allow(codes.NotFound), func(ctx context.Context) error {
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id,
			StagingTargetPath: v.staging, VolumeCapability: capability})
		return err
	}) != codes.OK {
		return
	}
	w.checkMount(v, v.staging)
	target := filepath.Join(w.s.e.work, fmt.Sprintf("w%d", w.id), fmt.Sprintf("t%d", w.next()))
	publishAllowed := allow()
	if shared {
		// Another user of the shared volume may have unstaged it after
		// our stage, or hold it single-writer.
		publishAllowed = allow(codes.FailedPrecondition, codes.NotFound)
	}
	start := time.Now()
	code := c.until("publish", "NodePublishVolume", publishAllowed, func(ctx context.Context) error {
		_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id,
			StagingTargetPath: v.staging, TargetPath: target, VolumeCapability: capability})
		return err
	})
	if code == codes.OK {
		w.s.published(v, target, start, time.Now())
		w.checkMount(v, target)
		w.write(target)
		if w.r.IntN(4) == 0 {
			w.growOnline(v, target)
		}
		w.s.unpublishing(v.id, target)
		c.until("unpublish", "NodeUnpublishVolume", nil, func(ctx context.Context) error {
			_, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target})
			return err
		})
	}
	unstageAllowed := allow()
	if shared {
		unstageAllowed = allow(codes.FailedPrecondition) // still published by another worker
	}
	if c.until("unstage", "NodeUnstageVolume", unstageAllowed, func(ctx context.Context) error {
		_, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
		return err
	}) == codes.OK && !shared {
		if m := mountsUnder(c.t, v.staging); len(m) > 0 {
			c.t.Errorf("volume %s unstaged but still mounted at %v", v.id, m)
		}
		if l := loopsUnder(c.t, filepath.Join(w.s.e.pool, "volumes", v.id)); len(l) > 0 {
			c.t.Errorf("volume %s unstaged but still attached: %v", v.id, l)
		}
	}
}

// checkMount fails the test when path is mounted from a loop device backed
// by anything but v's file: one device handed to two volumes. Another
// worker may already have unmounted a shared volume, which is fine.
func (w *worker) checkMount(v volInfo, path string) {
	file, err := backingFileOfMount(path)
	if err != nil {
		w.s.c.t.Errorf("inspect %s: %v", path, err)
		return
	}
	if file != "" && file != w.s.e.volumeFile(v.id) {
		w.s.c.t.Errorf("volume %s at %s is served from %s", v.id, path, file)
	}
}

// write puts a little data on the published volume and reads it back,
// through child processes as a pod would: a file this process held open
// on the volume would be inherited by whatever the in-process driver forks
// at that instant, and keep the mount busy a moment after it is closed.
func (w *worker) write(target string) {
	data := make([]byte, 64<<10)
	_, _ = rand.Read(data)
	path := filepath.Join(target, fmt.Sprintf("w%d-%d", w.id, w.next()))
	dd := exec.Command("dd", "of="+path, "bs=64k", "iflag=fullblock", "conv=fsync", "status=none")
	dd.Stdin = bytes.NewReader(data)
	out, err := dd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("dd: %w: %s", err, out)
	}
	var sum []byte
	if err == nil {
		if sum, err = exec.Command("sha256sum", path).Output(); err != nil {
			err = fmt.Errorf("sha256sum: %w", err)
		}
	}
	w.s.c.tally.add("write", "", status.Code(err))
	want := sha256.Sum256(data)
	switch {
	case err != nil:
		w.s.c.t.Errorf("write to the published volume: %v", err)
	case !bytes.HasPrefix(sum, []byte(hex.EncodeToString(want[:]))):
		w.s.c.t.Errorf("%s reads back different data", path)
	}
}

// growOnline expands the volume and grows its mounted filesystem.
func (w *worker) growOnline(v volInfo, target string) {
	size := w.expandVolume(v)
	if size == 0 {
		return
	}
	w.s.c.until("node-expand", "NodeExpandVolume", allow(codes.NotFound, codes.ResourceExhausted), func(ctx context.Context) error {
		_, err := w.s.e.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: target,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: mountCapability(v.mode)})
		return err
	})
	w.s.c.do("stats", "NodeGetVolumeStats", allow(), func(ctx context.Context) error {
		_, err := w.s.e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: target})
		return err
	})
}
