package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// writerScript fills a claim with a checksummed file, then appends
// consecutive numbers to a log while reporting the filesystem's size, so
// that a snapshot taken meanwhile can be checked for consistency and an
// expansion can be seen from inside.
const writerScript = `cd ` + mountPath + `
head -c 8388608 /dev/urandom > base
sha256sum base > base.sha
sync
echo READY
i=0
while :; do
  echo $i >> log
  i=$((i+1))
  if [ $((i % 5)) = 0 ]; then set -- $(stat -f -c '%b %S' .); echo "SIZE $(($1 * $2)) $i"; fi
  sleep 0.2
done`

// verifyScript checks a restored or cloned filesystem: the checksummed
// file intact, and the log a gap-free run of numbers (a torn or half-
// written log would show the snapshot was not consistent).
const verifyScript = `cd ` + mountPath + `
sha256sum -c base.sha
n=0
while read -r line; do
  [ "$line" = "$n" ] || { echo "log line $n reads '$line'"; exit 1; }
  n=$((n+1))
done < log
[ "$n" -gt 0 ] || { echo "empty log"; exit 1; }
echo "VERIFIED $n"`

// blockWriterScript writes 4 MiB of random data to the raw device and
// reports its checksum and the device's size.
const blockWriterScript = `head -c 4194304 /dev/urandom > /tmp/data
dd if=/tmp/data of=` + devicePath + ` bs=1M conv=fsync 2>/dev/null
echo "HASH $(head -c 4194304 ` + devicePath + ` | sha256sum | cut -d' ' -f1) $(sha256sum < /tmp/data | cut -d' ' -f1)"
while :; do echo "BSIZE $(blockdev --getsize64 ` + devicePath + `)"; sleep 1; done`

func TestTarnOnKubernetes(t *testing.T) {
	c := connect(t)
	before := c.nodeStates(t)
	first, last := c.nodes[0], c.nodes[len(c.nodes)-1]

	// A claim of each class, used by a pod on a chosen node: the volume
	// must be made on that node (WaitForFirstConsumer, per-node
	// provisioners, strict topology).
	type use struct{ class, claim, pod, node, size string }
	uses := []use{
		{"tarn-ext4", "data-ext4", "writer-ext4", first, "256Mi"},
		{"tarn-xfs", "data-xfs", "writer-xfs", last, "512Mi"},
	}
	for _, u := range uses {
		c.createClaim(t, claimSpec{name: u.claim, class: u.class, size: u.size})
		c.createPod(t, podSpec{name: u.pod, claim: u.claim, node: u.node, script: writerScript})
	}
	for _, u := range uses {
		t.Run("bind/"+u.class, func(t *testing.T) {
			c.waitLog(t, u.pod, "READY")
			pv := c.boundVolume(t, u.claim)
			if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driverName {
				t.Fatalf("volume %s is not a %s volume: %+v", pv.Name, driverName, pv.Spec.PersistentVolumeSource)
			}
			if got := volumeNode(t, pv); got != u.node || c.podNode(t, u.pod) != u.node {
				t.Errorf("claim %s: volume on %s, pod on %s, want both on %s", u.claim, got, c.podNode(t, u.pod), u.node)
			}
		})
	}

	// Snapshots of claims whose pods keep writing, restored into new
	// claims and checked by pods on the same node (a node-local snapshot
	// is restored where it lives).
	for _, u := range uses {
		t.Run("snapshot-restore/"+u.class, func(t *testing.T) {
			snap := "snap-" + u.claim
			c.snapshot(t, snap, u.claim)
			c.restoreAndVerify(t, "restored-"+u.claim, u.class, u.size, snapshotSource(snap), u.node)
		})
	}

	t.Run("clone", func(t *testing.T) {
		u := uses[1]
		c.restoreAndVerify(t, "clone-"+u.claim, u.class, u.size, claimSource(u.claim), u.node)
	})

	t.Run("online-expansion/xfs", func(t *testing.T) {
		// ext4 online growth needs CAP_SYS_RESOURCE, which kind nodes
		// on a host without it lack; xfs has no such need.
		u := uses[1]
		c.expandClaim(t, u.claim, "1Gi")
		want := int64(900 << 20)
		line := ""
		// The kubelet grows a mounted volume on its next sync of the
		// pod, which can take a minute and more.
		err := poll(context.Background(), 3*time.Minute, func() (bool, error) {
			l, ok := lastLineWith(c.podLog(c.ns, u.pod, "", 20), "SIZE ")
			line = l
			return ok && sizeField(l) >= want, nil
		})
		if err != nil {
			t.Fatalf("the pod does not see its filesystem grow past %d bytes (last report %q): %v", want, line, err)
		}
		c.waitClaimCapacity(t, u.claim, "1Gi")
	})

	t.Run("block", func(t *testing.T) {
		c.createClaim(t, claimSpec{name: "raw", class: "tarn-ext4", size: "64Mi", block: true})
		c.createPod(t, podSpec{name: "raw-writer", claim: "raw", node: first, script: blockWriterScript, block: true})
		fields := strings.Fields(c.waitLog(t, "raw-writer", "HASH "))
		if len(fields) != 3 || fields[1] != fields[2] {
			t.Fatalf("raw device read back differs from what was written: %v", fields)
		}
		c.snapshot(t, "snap-raw", "raw")
		c.createClaim(t, claimSpec{name: "raw-restored", class: "tarn-ext4", size: "64Mi", block: true, source: snapshotSource("snap-raw")})
		c.createPod(t, podSpec{name: "raw-verify", claim: "raw-restored", node: first, block: true,
			script: fmt.Sprintf(`test "$(head -c 4194304 %s | sha256sum | cut -d' ' -f1)" = %s`, devicePath, fields[1])})
		c.waitSucceeded(t, "raw-verify")

		c.expandClaim(t, "raw", "128Mi")
		err := poll(context.Background(), 3*time.Minute, func() (bool, error) {
			l, ok := lastLineWith(c.podLog(c.ns, "raw-writer", "", 5), "BSIZE ")
			return ok && sizeField(l) == 128<<20, nil
		})
		if err != nil {
			t.Errorf("the pod does not see its raw device grow to 128Mi: %v", err)
		}
	})

	t.Run("capacity", func(t *testing.T) {
		c.checkCapacityFollowsVolumes(t, first)
	})

	t.Run("driver-restart", func(t *testing.T) {
		u := uses[0]
		c.restartNodePlugin(t, u.node)
		// The workload never noticed, and the restarted driver serves
		// new calls on old volumes.
		n := counterField(c.waitLog(t, u.pod, "SIZE "))
		if err := poll(context.Background(), time.Minute, func() (bool, error) {
			l, ok := lastLineWith(c.podLog(c.ns, u.pod, "", 5), "SIZE ")
			return ok && counterField(l) > n+10, nil
		}); err != nil {
			t.Errorf("writer stopped writing after the driver restart: %v", err)
		}
		c.snapshot(t, "snap-after-restart", u.claim)
		c.restoreAndVerify(t, "restored-after-restart", u.class, u.size, snapshotSource("snap-after-restart"), u.node)
	})

	t.Run("cleanup-leaves-nothing", func(t *testing.T) {
		c.deleteNamespace(t)
		after := c.nodeStates(t)
		for node, want := range before {
			if got := after[node]; got != want {
				t.Errorf("node %s after deleting everything:\n%s\nbefore the test:\n%s", node, got, want)
			}
		}
	})
}

// restoreAndVerify fills a new claim from source and checks its data with
// a run-once pod on node.
func (c *cluster) restoreAndVerify(t *testing.T, claim, class, size string, source *corev1.TypedLocalObjectReference, node string) {
	t.Helper()
	c.createClaim(t, claimSpec{name: claim, class: class, size: size, source: source})
	c.createPod(t, podSpec{name: "verify-" + claim, claim: claim, node: node, script: verifyScript})
	c.waitSucceeded(t, "verify-"+claim)
	if got := volumeNode(t, c.boundVolume(t, claim)); got != node {
		t.Errorf("claim %s made on %s, want %s where its source lives", claim, got, node)
	}
}

func (c *cluster) expandClaim(t *testing.T, claim, size string) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"resources":{"requests":{"storage":%q}}}}`, size)
	if _, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Patch(context.Background(), claim,
		types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("expand claim %s to %s: %v", claim, size, err)
	}
}

func (c *cluster) waitClaimCapacity(t *testing.T, claim, size string) {
	t.Helper()
	want := resource.MustParse(size)
	err := poll(context.Background(), 2*time.Minute, func() (bool, error) {
		pvc, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Get(context.Background(), claim, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		got := pvc.Status.Capacity[corev1.ResourceStorage]
		return got.Cmp(want) >= 0, nil
	})
	if err != nil {
		t.Errorf("claim %s status capacity never reached %s: %v", claim, size, err)
	}
}

// checkCapacityFollowsVolumes makes a 1 GiB volume on node and waits for
// the node's CSIStorageCapacity to drop by about that much, then deletes it
// and waits for the capacity to come back.
func (c *cluster) checkCapacityFollowsVolumes(t *testing.T, node string) {
	const class, size = "tarn-ext4", int64(1 << 30)
	start := c.settledCapacity(t, class, node)
	c.createClaim(t, claimSpec{name: "cap", class: class, size: "1Gi"})
	c.createPod(t, podSpec{name: "cap-user", claim: "cap", node: node, script: "echo READY; sleep infinity"})
	c.waitLog(t, "cap-user", "READY")
	var now int64
	err := poll(context.Background(), time.Minute, func() (bool, error) {
		now = c.capacity(t, class, node)
		// The drop is the volume's size give or take the pool
		// filesystem's own bookkeeping: XFS holds back blocks for
		// delayed allocations (mkfs's writes) until they reach disk.
		return start-now >= size*9/10 && start-now <= size*11/10, nil
	})
	if err != nil {
		t.Fatalf("capacity of %s on %s: %d before a 1 GiB volume, %d after; want it about 1 GiB lower: %v", class, node, start, now, err)
	}
	c.deletePod(t, "cap-user")
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(context.Background(), "cap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = poll(context.Background(), 2*time.Minute, func() (bool, error) {
		now = c.capacity(t, class, node)
		return now >= start-size/20, nil
	})
	if err != nil {
		t.Errorf("capacity of %s on %s: %d after deleting the volume, %d before it: %v", class, node, now, start, err)
	}
}

// settledCapacity waits until the node's capacity object has caught up
// with what earlier steps did (the provisioner polls every 5 s): two
// readings 7 s apart that agree.
func (c *cluster) settledCapacity(t *testing.T, class, node string) int64 {
	t.Helper()
	last := c.capacity(t, class, node)
	for range 10 {
		time.Sleep(7 * time.Second)
		now := c.capacity(t, class, node)
		if now == last {
			return now
		}
		last = now
	}
	t.Fatalf("capacity of %s on %s never settled (last %d)", class, node, last)
	return 0
}

// capacity is what the node's CSIStorageCapacity object for class says.
func (c *cluster) capacity(t *testing.T, class, node string) int64 {
	t.Helper()
	var found int64 = -1
	err := poll(context.Background(), time.Minute, func() (bool, error) {
		list, err := c.kube.StorageV1().CSIStorageCapacities(tarnNS).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, o := range list.Items {
			if o.StorageClassName == class && o.NodeTopology != nil &&
				o.NodeTopology.MatchLabels[topologyKey] == node && o.Capacity != nil {
				found = o.Capacity.Value()
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no CSIStorageCapacity for class %s on node %s: %v", class, node, err)
	}
	return found
}

// restartNodePlugin deletes the Tarn pod of node and waits for its
// replacement to be ready and registered with the kubelet again.
func (c *cluster) restartNodePlugin(t *testing.T, node string) {
	t.Helper()
	ctx := context.Background()
	sel := metav1.ListOptions{LabelSelector: nodeAppLabel, FieldSelector: "spec.nodeName=" + node}
	pods, err := c.kube.CoreV1().Pods(tarnNS).List(ctx, sel)
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("Tarn pod of node %s: %v (%d found)", node, err, len(pods.Items))
	}
	old := pods.Items[0].Name
	if err := c.kube.CoreV1().Pods(tarnNS).Delete(ctx, old, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete %s: %v", old, err)
	}
	err = poll(ctx, podTimeout, func() (bool, error) {
		pods, err := c.kube.CoreV1().Pods(tarnNS).List(ctx, sel)
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.Name != old && p.DeletionTimestamp == nil && podReady(&p) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no new ready Tarn pod on %s after deleting %s: %v", node, old, err)
	}
	err = poll(ctx, time.Minute, func() (bool, error) {
		csiNode, err := c.kube.StorageV1().CSINodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, d := range csiNode.Spec.Drivers {
			if d.Name == driverName {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("kubelet of %s does not list %s after the restart: %v", node, driverName, err)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// nodeStates describes, per worker node, what Tarn keeps there: pool
// entries, loop devices of pool files, and CSI mounts.
func (c *cluster) nodeStates(t *testing.T) map[string]string {
	t.Helper()
	states := map[string]string{}
	for _, node := range c.nodes {
		out, err := onNode(node, "sh", "-c", fmt.Sprintf(
			`echo "volumes: $(ls -A %[1]s/volumes 2>/dev/null | sort | tr '\n' ' ')"
echo "snapshots: $(ls -A %[1]s/snapshots 2>/dev/null | sort | tr '\n' ' ')"
echo "loop devices: $(losetup -a | grep -c '%[1]s' || true)"
echo "csi mounts: $(grep -c -e tarn.csi.dev -e 'kubernetes.io~csi' /proc/self/mountinfo || true)"`, poolDir))
		if err != nil {
			t.Fatalf("inspect node %s: %v: %s", node, err, out)
		}
		states[node] = out
	}
	return states
}

// sizeField reads the number after the tag in "SIZE n i" / "BSIZE n".
func sizeField(line string) int64 {
	f := strings.Fields(line)
	if len(f) < 2 {
		return -1
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// counterField reads i in "SIZE n i".
func counterField(line string) int64 {
	f := strings.Fields(line)
	if len(f) < 3 {
		return -1
	}
	n, _ := strconv.ParseInt(f[2], 10, 64)
	return n
}
