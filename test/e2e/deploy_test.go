package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/tarn-csi/tarn/pkg/lvm"
)

// The checks below read the manifests as kubectl's kustomize renders them,
// base and every overlay, with no cluster: what each part of the deploy is
// given is decided there, and only the kind overlay ever runs in the e2e
// cluster.

// deployment is what one kustomization renders to, the parts these checks
// read.
type deployment struct {
	name       string
	node       corev1.PodSpec
	nodeLabels map[string]string
	controller corev1.PodSpec
	policies   []networkingv1.NetworkPolicy
}

// deployKubectl is the kubectl that renders the manifests: make e2e's, or
// the one on PATH.
func deployKubectl(t *testing.T) string {
	t.Helper()
	if k := os.Getenv("TARN_E2E_KUBECTL"); k != "" {
		return k
	}
	if k, err := exec.LookPath("kubectl"); err == nil {
		return k
	}
	t.Skip("no kubectl: set TARN_E2E_KUBECTL (make e2e names the cluster's)")
	return ""
}

// renderDeployments renders deploy/base and each overlay.
func renderDeployments(t *testing.T) []deployment {
	t.Helper()
	kubectl := deployKubectl(t)
	deploy := filepath.Join("..", "..", "deploy")
	overlays, err := filepath.Glob(filepath.Join(deploy, "overlays", "*"))
	if err != nil || len(overlays) == 0 {
		t.Fatalf("no overlays under %s: %v", deploy, err)
	}
	var out []deployment
	for _, dir := range append([]string{filepath.Join(deploy, "base")}, overlays...) {
		out = append(out, renderDeployment(t, kubectl, dir))
	}
	return out
}

func renderDeployment(t *testing.T, kubectl, dir string) deployment {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	d := deployment{name: filepath.Base(dir)}
	var haveNode, haveController bool
	for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		switch {
		case meta.Kind == "DaemonSet" && meta.Metadata.Name == "tarn-node":
			var ds appsv1.DaemonSet
			if err := yaml.UnmarshalStrict(doc, &ds); err != nil {
				t.Fatalf("%s: DaemonSet: %v", dir, err)
			}
			d.node, d.nodeLabels, haveNode = ds.Spec.Template.Spec, ds.Spec.Template.Labels, true
		case meta.Kind == "Deployment" && meta.Metadata.Name == "tarn-controller":
			var dep appsv1.Deployment
			if err := yaml.UnmarshalStrict(doc, &dep); err != nil {
				t.Fatalf("%s: Deployment: %v", dir, err)
			}
			d.controller, haveController = dep.Spec.Template.Spec, true
		case meta.Kind == "NetworkPolicy":
			var np networkingv1.NetworkPolicy
			if err := yaml.UnmarshalStrict(doc, &np); err != nil {
				t.Fatalf("%s: NetworkPolicy: %v", dir, err)
			}
			d.policies = append(d.policies, np)
		}
	}
	if !haveNode || !haveController {
		t.Fatalf("%s renders no DaemonSet tarn-node or no Deployment tarn-controller", dir)
	}
	return d
}

// arg returns the value of --name=value in c's arguments.
func arg(c *corev1.Container, name string) (string, bool) {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func findVolume(pod corev1.PodSpec, name string) *corev1.Volume {
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == name {
			return &pod.Volumes[i]
		}
	}
	return nil
}

// volumeOf returns the volume that holds file in c's view, and the file's
// path inside that volume.
func volumeOf(pod corev1.PodSpec, c *corev1.Container, file string) (*corev1.Volume, string) {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") &&
			(best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = m
		}
	}
	if best == nil {
		return nil, ""
	}
	return findVolume(pod, best.Name), path.Join(best.SubPath, strings.TrimPrefix(file, best.MountPath))
}

// The kubelet's probes: liveness restarts tarn only when its CSI server
// does not answer; readiness carries the pool's health (pkg/driver
// healthz.go).
func TestNodePluginProbes(t *testing.T) {
	for _, d := range renderDeployments(t) {
		c := findContainer(d.node, "tarn")
		if c == nil {
			t.Fatalf("%s: no tarn container", d.name)
		}
		for _, p := range []struct {
			kind  string
			probe *corev1.Probe
			path  string
		}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s: tarn has no HTTP %s probe", d.name, p.kind)
				continue
			}
			if got := p.probe.HTTPGet.Path; got != p.path {
				t.Errorf("%s: tarn's %s probe gets %s, want %s", d.name, p.kind, got, p.path)
			}
			if got := p.probe.HTTPGet.Port.String(); got != "healthz" {
				t.Errorf("%s: tarn's %s probe is on port %s, want healthz", d.name, p.kind, got)
			}
		}
	}
}

// Stopping the LVM node plugin waits for an LVM command in flight, which
// pkg/lvm lets run for up to lvm.DefaultTimeout and stops only with
// SIGTERM: the kubelet's SIGKILL must come later than that.
func TestLVMGraceCoversTheLongestLVMCommand(t *testing.T) {
	const margin = 30 * time.Second
	for _, d := range renderDeployments(t) {
		if d.name != "lvm" {
			continue
		}
		g := d.node.TerminationGracePeriodSeconds
		if g == nil || time.Duration(*g)*time.Second < lvm.DefaultTimeout+margin {
			t.Errorf("lvm: the node pod's terminationGracePeriodSeconds is %v, want at least %v",
				g, (lvm.DefaultTimeout + margin).Seconds())
		}
		return
	}
	t.Fatal("no lvm overlay")
}
