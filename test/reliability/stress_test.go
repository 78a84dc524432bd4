package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/tarn-csi/tarn/pkg/backend"
	"github.com/tarn-csi/tarn/pkg/metrics"
	"github.com/tarn-csi/tarn/test/testpool"
)

const (
	stressWorkers = 8
	// Each worker keeps at most this many volumes and snapshots of its
	// own, so that the pool stays bounded however long the run.
	maxOwnVolumes   = 3
	maxOwnSnapshots = 3
	// goroutineSlack and fdSlack allow for what the runtime and libraries
	// start lazily and keep (a timer goroutine, an epoll descriptor).
	goroutineSlack = 5
	fdSlack        = 3
)

// sharedModes are the access modes of the volumes every worker uses; the
// single-writer one is where two publications at once would be a bug.
var sharedModes = []csi.VolumeCapability_AccessMode_Mode{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
}

// TestStress runs concurrent clients against one in-process driver for a
// bounded time, mixing every volume operation on shared and private
// volumes, then cleans up and checks that the driver answered only with
// the codes the CSI spec gives for what the mix can cause, allocated
// nothing twice, returned every call, and leaked no goroutine, file
// descriptor, loop device or mount.
func TestStress(t *testing.T) {
	duration := stressDuration(t)
	e := newEnv(t, 16*GiB)

	// The baselines are taken with the pool in place and before the
	// driver and its client exist.
	runtime.GC()
	goroutinesBefore, fdsBefore := runtime.NumGoroutine(), openFDs(t)
	kernelBefore := testpool.Snapshot(t)

	m, stop := e.startInProcess(t, true)
	s := &stress{e: e, c: &caller{t: t, tally: newTally()}, names: map[string]string{},
		vols: map[string]volInfo{}, snaps: map[string]string{}, pubs: map[string]map[string]*span{}}
	for k, mode := range sharedModes {
		s.shared = append(s.shared, volInfo{
			id: backend.VolumeIDFor(fmt.Sprintf("shared-%d", k)), name: fmt.Sprintf("shared-%d", k),
			owner: -1, mode: mode, staging: filepath.Join(e.work, fmt.Sprintf("shared-%d", k), "staging"),
		})
	}
	for k := range s.shared {
		if code := s.createShared(k); code != codes.OK {
			t.Fatalf("creating shared volume %d: %s", k, code)
		}
	}

	seed := time.Now().UnixNano()
	t.Logf("stress: %d clients for %v, seed %d", stressWorkers, duration, seed)
	s.deadline = time.Now().Add(duration)
	var wg sync.WaitGroup
	for i := range stressWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{s: s, id: i, r: rand.New(rand.NewPCG(uint64(seed), uint64(i)))}
			w.run()
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(duration + 3*callTimeout):
		t.Fatalf("clients still running %v after the end of the run: deadlock\n%s", 3*callTimeout, goroutineDump())
	}
	table, total := s.c.tally.table()
	t.Logf("stress: %d calls in %v:\n%s", total, duration, table)

	s.cleanUp(t)
	s.checkMetrics(t, m)
	stop()

	// Whatever the driver started must be gone once it stopped; the
	// runtime may take a moment to retire goroutines.
	var goroutinesAfter, fdsAfter int
	for settle := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		runtime.GC()
		goroutinesAfter, fdsAfter = runtime.NumGoroutine(), openFDs(t)
		if (goroutinesAfter <= goroutinesBefore+goroutineSlack && fdsAfter <= fdsBefore+fdSlack) || time.Now().After(settle) {
			break
		}
	}
	t.Logf("stress: goroutines %d -> %d, open descriptors %d -> %d", goroutinesBefore, goroutinesAfter, fdsBefore, fdsAfter)
	if goroutinesAfter > goroutinesBefore+goroutineSlack {
		t.Errorf("%d goroutines after the run, %d before: leaked goroutines\n%s", goroutinesAfter, goroutinesBefore, goroutineDump())
	}
	if fdsAfter > fdsBefore+fdSlack {
		t.Errorf("%d open file descriptors after the run, %d before: leaked descriptors", fdsAfter, fdsBefore)
	}
	for _, leak := range testpool.Diff(kernelBefore, testpool.Snapshot(t)) {
		t.Errorf("left behind after the run: %s", leak)
	}
}

// cleanUp deletes whatever the clients left, through the driver, and
// checks that the pool is empty afterwards. Nothing runs concurrently any
// more, so Aborted or FailedPrecondition here would mean a lock or an
// attachment leaked.
func (s *stress) cleanUp(t *testing.T) {
	c := s.c
	for _, v := range s.shared {
		// A shared volume stays staged when its last user gave up on a
		// FailedPrecondition; the CO would unstage it later.
		c.do("cleanup", "NodeUnstageVolume", nil, func(ctx context.Context) error {
			_, err := s.e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
			return err
		})
	}
	ctx, cancel := callCtx()
	defer cancel()
	snaps, err := s.e.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	s.c.tally.add("cleanup", "ListSnapshots", codeOf(err))
	if err != nil {
		t.Fatalf("ListSnapshots: %v", err)
	}
	for _, en := range snaps.GetEntries() {
		c.do("cleanup", "DeleteSnapshot", nil, func(ctx context.Context) error {
			_, err := s.e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: en.GetSnapshot().GetSnapshotId()})
			return err
		})
	}
	vols, err := s.e.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	s.c.tally.add("cleanup", "ListVolumes", codeOf(err))
	if err != nil {
		t.Fatalf("ListVolumes: %v", err)
	}
	for _, en := range vols.GetEntries() {
		c.do("cleanup", "DeleteVolume", nil, func(ctx context.Context) error {
			_, err := s.e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: en.GetVolume().GetVolumeId()})
			return err
		})
	}
	t.Logf("stress: cleanup deleted %d volumes and %d snapshots left by the clients", len(vols.GetEntries()), len(snaps.GetEntries()))
	for _, dir := range []string{"volumes", "snapshots", ".staging", ".trash"} {
		if left := s.e.poolEntries(t, dir); len(left) > 0 {
			t.Errorf("pool/%s after cleanup: %v, want it empty", dir, left)
		}
	}
	if m := mountsUnder(t, s.e.work); len(m) > 0 {
		t.Errorf("mounts left after cleanup: %v", m)
	}
	if l := loopsUnder(t, s.e.pool); len(l) > 0 {
		t.Errorf("loop devices left after cleanup: %v", l)
	}
}

// checkMetrics compares the driver's call counters with what the clients
// saw: under this much concurrency every call must be counted once, under
// its method and the code the client got.
func (s *stress) checkMetrics(t *testing.T, m *metrics.Metrics) {
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	families := scrapeMetrics(t, srv.URL+"/metrics")
	served := map[string]float64{}
	for _, sample := range families["tarn_csi_calls_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range sample.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["service"] == "csi.v1.Identity" {
			continue // Probe is sent by the harness, not tallied
		}
		served[labels["method"]+"/"+labels["code"]] = sample.GetCounter().GetValue()
	}
	seen := 0
	for method, cs := range s.c.tally.methods() {
		for _, code := range cs {
			key := method + "/" + code.String()
			if got, want := served[key], float64(s.c.tally.method(method, code)); got != want {
				t.Errorf("tarn_csi_calls_total{method=%q,code=%q} = %v, the clients saw %v such answers", method, code, got, want)
			}
			delete(served, key)
			seen++
		}
	}
	for key, v := range served {
		t.Errorf("tarn_csi_calls_total counts %v calls %s that no client made", v, key)
	}
	t.Logf("stress: tarn_csi_calls_total matches the clients' %d method/code pairs", seen)
	if v := families["tarn_volumes"].GetMetric(); len(v) != 1 || v[0].GetGauge().GetValue() != 0 {
		t.Errorf("tarn_volumes after cleanup = %v, want 0", v)
	}
}
