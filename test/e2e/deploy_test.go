package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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

// The sidecars' socket is open to their group: on the host, that group
// must reach nothing, so it lives in a volume only the pod's containers
// share. The kubelet's socket stays where the kubelet looks for it.
func TestSidecarSocketStaysInThePod(t *testing.T) {
	for _, d := range renderDeployments(t) {
		tarn := findContainer(d.node, "tarn")
		if tarn == nil {
			t.Fatalf("%s: no tarn container", d.name)
		}
		ep, ok := arg(tarn, "sidecar-endpoint")
		if !ok {
			t.Errorf("%s: tarn has no --sidecar-endpoint", d.name)
			continue
		}
		sock := strings.TrimPrefix(ep, "unix://")
		vol, inVol := volumeOf(d.node, tarn, sock)
		if vol == nil || vol.EmptyDir == nil {
			t.Errorf("%s: the sidecar socket %s is not in an emptyDir (volume %s)", d.name, sock, volName(vol))
			continue
		}
		for i := range d.node.Containers {
			c := &d.node.Containers[i]
			if c.Name == "tarn" {
				continue
			}
			addr, ok := arg(c, "csi-address")
			if !ok {
				t.Errorf("%s: %s has no --csi-address", d.name, c.Name)
				continue
			}
			if v, p := volumeOf(d.node, c, addr); v == nil || v.Name != vol.Name || p != inVol {
				t.Errorf("%s: %s dials %s, which is not tarn's sidecar socket %s", d.name, c.Name, addr, sock)
			}
		}
		kubeletSock := strings.TrimPrefix(mustArg(t, d.name, tarn, "endpoint"), "unix://")
		want := mustArg(t, d.name, tarn, "kubelet-endpoint")
		v, p := volumeOf(d.node, tarn, kubeletSock)
		if v == nil || v.HostPath == nil || path.Join(v.HostPath.Path, p) != want {
			t.Errorf("%s: the kubelet's socket %s is not the host's %s (volume %s)", d.name, kubeletSock, want, volName(v))
		}
	}
}

func mustArg(t *testing.T, name string, c *corev1.Container, flag string) string {
	t.Helper()
	v, ok := arg(c, flag)
	if !ok {
		t.Fatalf("%s: %s has no --%s", name, c.Name, flag)
	}
	return v
}

// apiClients are the containers that talk to the API server.
var apiClients = map[string]bool{
	"csi-provisioner":     true,
	"csi-snapshotter":     true,
	"snapshot-controller": true,
	"csi-resizer":         true,
}

const tokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// A token in the privileged container would give whoever breaks into it
// the node service account's cluster-wide storage rights; only the
// containers that use the API server get one, and each gets what the
// automatic mount would give (token, CA, namespace).
func TestOnlyAPIClientsHoldAToken(t *testing.T) {
	for _, d := range renderDeployments(t) {
		for _, pod := range []struct {
			name string
			spec corev1.PodSpec
		}{{"node", d.node}, {"controller", d.controller}} {
			where := d.name + ": " + pod.name
			if a := pod.spec.AutomountServiceAccountToken; a == nil || *a {
				t.Errorf("%s: the pod does not set automountServiceAccountToken: false", where)
			}
			for i := range pod.spec.Containers {
				c := &pod.spec.Containers[i]
				var token *corev1.VolumeMount
				for j := range c.VolumeMounts {
					m := &c.VolumeMounts[j]
					v := findVolume(pod.spec, m.Name)
					if v != nil && v.Projected != nil && projects(v.Projected, "token") {
						token = m
					}
				}
				switch {
				case apiClients[c.Name] && c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged:
					t.Errorf("%s: %s talks to the API server and is privileged", where, c.Name)
				case apiClients[c.Name] && (token == nil || token.MountPath != tokenDir || !token.ReadOnly):
					t.Errorf("%s: %s has no read-only service-account token at %s", where, c.Name, tokenDir)
				case apiClients[c.Name]:
					v := findVolume(pod.spec, token.Name)
					for _, want := range []string{"ca.crt", "namespace"} {
						if !projects(v.Projected, want) {
							t.Errorf("%s: %s's token volume has no %s", where, c.Name, want)
						}
					}
				case token != nil:
					t.Errorf("%s: %s needs no API access but mounts a token at %s", where, c.Name, token.MountPath)
				}
			}
		}
	}
}

// projects says whether the projected volume holds file: the token, the
// CA bundle or the namespace.
func projects(p *corev1.ProjectedVolumeSource, file string) bool {
	for _, s := range p.Sources {
		switch {
		case file == "token" && s.ServiceAccountToken != nil:
			return true
		case file == "ca.crt" && s.ConfigMap != nil && s.ConfigMap.Name == "kube-root-ca.crt":
			for _, it := range s.ConfigMap.Items {
				if it.Path == "ca.crt" {
					return true
				}
			}
		case file == "namespace" && s.DownwardAPI != nil:
			for _, it := range s.DownwardAPI.Items {
				if it.Path == "namespace" && it.FieldRef != nil && it.FieldRef.FieldPath == "metadata.namespace" {
					return true
				}
			}
		}
	}
	return false
}

func volName(v *corev1.Volume) string {
	switch {
	case v == nil:
		return "none"
	case v.HostPath != nil:
		return v.Name + ", hostPath " + v.HostPath.Path
	case v.EmptyDir != nil:
		return v.Name + ", emptyDir"
	}
	return v.Name
}

// The node plugin's health and metrics ports answer whoever reaches them;
// a NetworkPolicy says who may. Every ingress rule for the node pods names
// its ports and its sources: none is open to the whole cluster.
func TestNetworkPolicyGuardsNodePorts(t *testing.T) {
	for _, d := range renderDeployments(t) {
		var guarded bool
		for _, np := range d.policies {
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil {
				t.Fatalf("%s: NetworkPolicy %s: %v", d.name, np.Name, err)
			}
			if !sel.Matches(labels.Set(d.nodeLabels)) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
				continue
			}
			guarded = true
			for _, r := range np.Spec.Ingress {
				if len(r.Ports) == 0 || len(r.From) == 0 {
					t.Errorf("%s: NetworkPolicy %s lets in traffic on any port or from anywhere: %+v", d.name, np.Name, r)
				}
			}
		}
		if !guarded {
			t.Errorf("%s: no NetworkPolicy restricts ingress to the node pods (labels %v)", d.name, d.nodeLabels)
		}
	}
}
