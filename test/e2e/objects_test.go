package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

const (
	bindTimeout = 3 * time.Minute
	podTimeout  = 3 * time.Minute
	mountPath   = "/data"
	devicePath  = "/dev/tarn"
)

// claimSpec describes a claim; source, when set, is a VolumeSnapshot or a
// PersistentVolumeClaim to fill it from.
type claimSpec struct {
	name, class string
	size        string
	block       bool
	source      *corev1.TypedLocalObjectReference
}

func (c *cluster) createClaim(t *testing.T, s claimSpec) {
	t.Helper()
	mode := corev1.PersistentVolumeFilesystem
	if s.block {
		mode = corev1.PersistentVolumeBlock
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: s.name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &s.class,
			VolumeMode:       &mode,
			DataSource:       s.source,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: resource.MustParse(s.size)}},
		},
	}
	if _, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Create(context.Background(), pvc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create claim %s: %v", s.name, err)
	}
}

// podSpec is a pod of the test image running script with one claim, on
// node when given (by label, so the scheduler still runs and
// WaitForFirstConsumer binding happens as for any pod).
type podSpec struct {
	name, claim, node, script string
	block                     bool
}

func (c *cluster) createPod(t *testing.T, s podSpec) {
	t.Helper()
	zero := int64(0)
	ctr := corev1.Container{
		Name:            "work",
		Image:           c.image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{"/bin/sh", "-c", "set -eu\n" + s.script},
	}
	if s.block {
		ctr.VolumeDevices = []corev1.VolumeDevice{{Name: "vol", DevicePath: devicePath}}
	} else {
		ctr.VolumeMounts = []corev1.VolumeMount{{Name: "vol", MountPath: mountPath}}
	}
	// Never restarted: a verifier's exit status is its verdict, and a
	// writer that dies must fail the test, not start over.
	restart := corev1.RestartPolicyNever
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: s.name},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{ctr},
			RestartPolicy:                 restart,
			TerminationGracePeriodSeconds: &zero,
			Volumes: []corev1.Volume{{Name: "vol", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: s.claim}}}},
		},
	}
	if s.node != "" {
		pod.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": s.node}
	}
	if _, err := c.kube.CoreV1().Pods(c.ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", s.name, err)
	}
}

// waitLog waits until the pod's log has a line starting with prefix and
// returns that line; a pod that ends first fails the test.
func (c *cluster) waitLog(t *testing.T, pod, prefix string) string {
	t.Helper()
	var line string
	err := poll(context.Background(), podTimeout, func() (bool, error) {
		if l, ok := lastLineWith(c.podLog(c.ns, pod, "", 200), prefix); ok {
			line = l
			return true, nil
		}
		p, err := c.kube.CoreV1().Pods(c.ns).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod %s ended (%s) without printing %q", pod, p.Status.Phase, prefix)
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s: %v\nlog:\n%s", pod, err, c.podLog(c.ns, pod, "", 30))
	}
	return line
}

func lastLineWith(log, prefix string) (string, bool) {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], prefix) {
			return lines[i], true
		}
	}
	return "", false
}

// waitSucceeded waits for a run-once pod and fails the test unless it
// exited 0.
func (c *cluster) waitSucceeded(t *testing.T, pod string) {
	t.Helper()
	var phase corev1.PodPhase
	err := poll(context.Background(), podTimeout, func() (bool, error) {
		p, err := c.kube.CoreV1().Pods(c.ns).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	if err != nil || phase != corev1.PodSucceeded {
		t.Fatalf("pod %s: phase %s, %v\nlog:\n%s", pod, phase, err, c.podLog(c.ns, pod, "", 30))
	}
}

func (c *cluster) deletePod(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	if err := c.kube.CoreV1().Pods(c.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete pod %s: %v", name, err)
	}
	if err := poll(ctx, podTimeout, func() (bool, error) {
		_, err := c.kube.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
		return err != nil, nil
	}); err != nil {
		t.Fatalf("pod %s not gone: %v", name, err)
	}
}

// boundVolume waits for a claim to bind and returns its volume.
func (c *cluster) boundVolume(t *testing.T, claim string) *corev1.PersistentVolume {
	t.Helper()
	ctx := context.Background()
	var pvName string
	err := poll(ctx, bindTimeout, func() (bool, error) {
		pvc, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pvName = pvc.Spec.VolumeName
		return pvc.Status.Phase == corev1.ClaimBound, nil
	})
	if err != nil {
		t.Fatalf("claim %s not bound: %v", claim, err)
	}
	pv, err := c.kube.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("volume of claim %s: %v", claim, err)
	}
	return pv
}

// volumeNode is the node a Tarn volume's topology pins it to.
func volumeNode(t *testing.T, pv *corev1.PersistentVolume) string {
	t.Helper()
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		t.Fatalf("volume %s has no node affinity", pv.Name)
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == topologyKey && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	t.Fatalf("volume %s: no %s in its node affinity %v", pv.Name, topologyKey, pv.Spec.NodeAffinity)
	return ""
}

func (c *cluster) podNode(t *testing.T, pod string) string {
	t.Helper()
	p, err := c.kube.CoreV1().Pods(c.ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Spec.NodeName
}

// snapshot creates a VolumeSnapshot of claim and waits until it is ready.
func (c *cluster) snapshot(t *testing.T, name, claim string) {
	t.Helper()
	ctx := context.Background()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1",
		"kind":       "VolumeSnapshot",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{
			"volumeSnapshotClassName": "tarn",
			"source":                  map[string]any{"persistentVolumeClaimName": claim},
		},
	}}
	if _, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create snapshot %s: %v", name, err)
	}
	err := poll(ctx, bindTimeout, func() (bool, error) {
		s, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if msg, found, _ := unstructured.NestedString(s.Object, "status", "error", "message"); found {
			return false, fmt.Errorf("snapshot error: %s", msg)
		}
		ready, _, _ := unstructured.NestedBool(s.Object, "status", "readyToUse")
		return ready, nil
	})
	if err != nil {
		t.Fatalf("snapshot %s of %s not ready: %v", name, claim, err)
	}
}

func snapshotSource(name string) *corev1.TypedLocalObjectReference {
	group := "snapshot.storage.k8s.io"
	return &corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: name}
}

func claimSource(name string) *corev1.TypedLocalObjectReference {
	return &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: name}
}
