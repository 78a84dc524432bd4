package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestOverlaysKeepTheNodePluginWhole renders the base and every overlay
// with kubectl's kustomize and checks the node plugin's pod: every mount
// has its volume, and an overlay keeps every mount of the base's containers
// except the loop pool's, which only a backend without a pool directory
// drops. Only the kind overlay runs in the e2e cluster; a patch that
// merges on the wrong key can silently drop the others' mounts (the LVM
// overlay once lost the CSI socket's), and nothing else would notice.
func TestOverlaysKeepTheNodePluginWhole(t *testing.T) {
	kubectl := os.Getenv("TARN_E2E_KUBECTL")
	if kubectl == "" {
		t.Skip("TARN_E2E_KUBECTL is not set: make e2e names the cluster's kubectl")
	}
	deploy := filepath.Join("..", "..", "deploy")
	base := renderNodePlugin(t, kubectl, filepath.Join(deploy, "base"))
	checkMountsHaveVolumes(t, "base", base)
	overlays, err := filepath.Glob(filepath.Join(deploy, "overlays", "*"))
	if err != nil || len(overlays) == 0 {
		t.Fatalf("no overlays under %s: %v", deploy, err)
	}
	for _, dir := range overlays {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			pod := renderNodePlugin(t, kubectl, dir)
			checkMountsHaveVolumes(t, name, pod)
			for _, bc := range base.Containers {
				oc := findContainer(pod, bc.Name)
				if oc == nil {
					t.Errorf("%s: container %s of the base is gone", name, bc.Name)
					continue
				}
				for _, m := range bc.VolumeMounts {
					if m.MountPath != poolDir && findMount(oc, m.MountPath) == nil {
						t.Errorf("%s: container %s lost the base's mount of %s", name, bc.Name, m.MountPath)
					}
				}
			}
		})
	}
}

// renderNodePlugin returns the pod template of the tarn-node DaemonSet
// that dir renders to.
func renderNodePlugin(t *testing.T, kubectl, dir string) corev1.PodSpec {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal(doc, &ds); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if ds.Kind == "DaemonSet" && ds.Name == "tarn-node" {
			return ds.Spec.Template.Spec
		}
	}
	t.Fatalf("%s renders no DaemonSet tarn-node", dir)
	return corev1.PodSpec{}
}

func checkMountsHaveVolumes(t *testing.T, name string, pod corev1.PodSpec) {
	t.Helper()
	volumes := map[string]bool{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = true
	}
	for _, c := range append(append([]corev1.Container{}, pod.InitContainers...), pod.Containers...) {
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("%s: container %s mounts volume %s, which the pod does not have", name, c.Name, m.Name)
			}
		}
	}
}

func findContainer(pod corev1.PodSpec, name string) *corev1.Container {
	for i := range pod.Containers {
		if pod.Containers[i].Name == name {
			return &pod.Containers[i]
		}
	}
	return nil
}

func findMount(c *corev1.Container, path string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// TestNodePluginTrustBoundary renders the base and every overlay and checks
// what each part of the node plugin's pod is given: the privileged tarn
// container no API token and only the kubelet's pods and plugins
// directories; the sidecars a token and a socket that lies in a volume no
// host path backs, so that they never share the kubelet's socket.
func TestNodePluginTrustBoundary(t *testing.T) {
	kubectl := os.Getenv("TARN_E2E_KUBECTL")
	if kubectl == "" {
		t.Skip("TARN_E2E_KUBECTL is not set: make e2e names the cluster's kubectl")
	}
	dirs, err := filepath.Glob(filepath.Join("..", "..", "deploy", "overlays", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range append([]string{filepath.Join("..", "..", "deploy", "base")}, dirs...) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			pod := renderNodePlugin(t, kubectl, dir)
			if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
				t.Error("the pod mounts the service account token into every container")
			}
			volumes := map[string]corev1.Volume{}
			for _, v := range pod.Volumes {
				volumes[v.Name] = v
			}
			tarn := findContainer(pod, "tarn")
			if tarn == nil {
				t.Fatal("no tarn container")
			}
			for _, m := range tarn.VolumeMounts {
				if m.MountPath == "/var/lib/kubelet" || volumes[m.Name].Projected != nil {
					t.Errorf("tarn container mounts %s (%s)", m.MountPath, m.Name)
				}
			}
			for _, want := range []string{"/var/lib/kubelet/pods", "/var/lib/kubelet/plugins"} {
				if findMount(tarn, want) == nil {
					t.Errorf("tarn container does not mount %s", want)
				}
			}
			if !slices.ContainsFunc(tarn.Args, func(a string) bool { return strings.HasPrefix(a, "--sidecar-endpoint=") }) {
				t.Errorf("tarn serves no sidecar socket: %v", tarn.Args)
			}
			for _, c := range pod.Containers {
				if c.Name == "tarn" {
					continue
				}
				token := false
				for _, m := range c.VolumeMounts {
					v := volumes[m.Name]
					if v.HostPath != nil {
						t.Errorf("sidecar %s mounts host path %s", c.Name, v.HostPath.Path)
					}
					token = token || v.Projected != nil && m.MountPath == "/var/run/secrets/kubernetes.io/serviceaccount"
				}
				if !token {
					t.Errorf("sidecar %s gets no API token", c.Name)
				}
			}
		})
	}
}
