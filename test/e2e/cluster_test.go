package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	driverName   = "tarn.csi.dev"
	topologyKey  = "topology.tarn.csi.dev/node"
	tarnNS       = "tarn-system"
	nodeAppLabel = "app.kubernetes.io/name=tarn-node"
	// poolDir is where the node plugin keeps the loop backend's pool, in
	// the kind node (deploy/overlays/kind).
	poolDir = "/var/lib/tarn/pool"
)

var (
	snapshotGVR        = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
	snapshotContentGVR = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}
)

// cluster is one test's view of the cluster: clients and a namespace of
// its own that is deleted at the end.
type cluster struct {
	kube  kubernetes.Interface
	dyn   dynamic.Interface
	ns    string
	image string
	// nodes are the schedulable (worker) nodes, sorted.
	nodes []string
}

func connect(t *testing.T) *cluster {
	t.Helper()
	kubeconfig := os.Getenv("TARN_E2E_KUBECONFIG")
	if kubeconfig == "" {
		t.Skip("TARN_E2E_KUBECONFIG is not set: run make kind-up and make e2e")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("kubeconfig %s: %v", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	c := &cluster{
		kube:  kubernetes.NewForConfigOrDie(cfg),
		dyn:   dynamic.NewForConfigOrDie(cfg),
		image: os.Getenv("TARN_E2E_IMAGE"),
	}
	if c.image == "" {
		c.image = "tarn-local/debian:bookworm-slim"
	}
	ctx := context.Background()
	nodes, err := c.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	for _, n := range nodes.Items {
		if _, cp := n.Labels["node-role.kubernetes.io/control-plane"]; !cp {
			c.nodes = append(c.nodes, n.Name)
		}
	}
	sort.Strings(c.nodes)
	if len(c.nodes) == 0 {
		t.Fatal("the cluster has no worker node")
	}
	ns, err := c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "tarn-e2e-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	c.ns = ns.Name
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpDiagnostics(t)
		}
		c.deleteNamespace(t)
	})
	return c
}

// deleteNamespace deletes the test's objects in the order the sidecars
// need (pods, snapshots, claims) and waits until their volumes and snapshot
// contents are gone, so that leak checks see the final state.
func (c *cluster) deleteNamespace(t *testing.T) {
	ctx := context.Background()
	fg := metav1.DeletePropagationForeground
	opts := metav1.DeleteOptions{PropagationPolicy: &fg}
	_ = c.kube.CoreV1().Pods(c.ns).DeleteCollection(ctx, opts, metav1.ListOptions{})
	_ = c.dyn.Resource(snapshotGVR).Namespace(c.ns).DeleteCollection(ctx, opts, metav1.ListOptions{})
	_ = c.kube.CoreV1().PersistentVolumeClaims(c.ns).DeleteCollection(ctx, opts, metav1.ListOptions{})
	err := poll(ctx, 3*time.Minute, func() (bool, error) {
		pvs, err := c.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, pv := range pvs.Items {
			if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == c.ns {
				return false, nil
			}
		}
		contents, err := c.dyn.Resource(snapshotContentGVR).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, sc := range contents.Items {
			ns, _, _ := unstructuredString(sc.Object, "spec", "volumeSnapshotRef", "namespace")
			if ns == c.ns {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("volumes or snapshot contents of namespace %s not deleted: %v", c.ns, err)
		c.dumpDiagnostics(t)
	}
	if err := c.kube.CoreV1().Namespaces().Delete(ctx, c.ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", c.ns, err)
	}
}

// poll calls check every second until it says done, fails, or timeout.
func poll(ctx context.Context, timeout time.Duration, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		done, err := check()
		if done && err == nil {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("timed out after %v, last error: %w", timeout, last)
			}
			return fmt.Errorf("timed out after %v", timeout)
		case <-time.After(time.Second):
		}
	}
}

// onNode runs a command inside a kind node's container: kind nodes are
// docker containers named after the node.
func onNode(node string, args ...string) (string, error) {
	cmd := exec.Command("docker", append([]string{"exec", node}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// dumpDiagnostics prints what a failure needs: the namespace's events and
// pods, and the Tarn pods' logs.
func (c *cluster) dumpDiagnostics(t *testing.T) {
	ctx := context.Background()
	if events, err := c.kube.CoreV1().Events(c.ns).List(ctx, metav1.ListOptions{}); err == nil {
		sort.Slice(events.Items, func(i, j int) bool {
			return events.Items[i].LastTimestamp.Before(&events.Items[j].LastTimestamp)
		})
		var b strings.Builder
		for _, e := range events.Items {
			fmt.Fprintf(&b, "  %s %s/%s %s: %s\n", e.LastTimestamp.Format(time.TimeOnly), e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
		t.Logf("events in %s:\n%s", c.ns, b.String())
	}
	if pods, err := c.kube.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, p := range pods.Items {
			t.Logf("pod %s on %s: %s", p.Name, p.Spec.NodeName, p.Status.Phase)
			t.Logf("  log:\n%s", c.podLog(p.Namespace, p.Name, "", 20))
		}
	}
	for _, sel := range []string{nodeAppLabel, "app.kubernetes.io/name=tarn-controller"} {
		pods, err := c.kube.CoreV1().Pods(tarnNS).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			continue
		}
		for _, p := range pods.Items {
			for _, ctr := range p.Spec.Containers {
				t.Logf("%s/%s on %s, last lines:\n%s", p.Name, ctr.Name, p.Spec.NodeName, c.podLog(tarnNS, p.Name, ctr.Name, 40))
			}
		}
	}
}

func (c *cluster) podLog(ns, pod, container string, lines int64) string {
	opts := &corev1.PodLogOptions{Container: container}
	if lines > 0 {
		opts.TailLines = &lines
	}
	data, err := c.kube.CoreV1().Pods(ns).GetLogs(pod, opts).DoRaw(context.Background())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(data)
}

func unstructuredString(obj map[string]any, path ...string) (string, bool, error) {
	cur := any(obj)
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		if cur, ok = m[p]; !ok {
			return "", false, nil
		}
	}
	s, ok := cur.(string)
	return s, ok, nil
}
