package e2e

import (
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestOverlaysKeepTheNodePluginWhole renders the base and every overlay
// with kubectl's kustomize and checks the node plugin's pod: every mount
// has its volume, and an overlay keeps every mount of the base's containers
// except the loop pool's, which only a backend without a pool directory
// drops. Only the kind overlay runs in the e2e cluster; a patch that
// merges on the wrong key can silently drop the others' mounts (the LVM
// overlay once lost the CSI socket's), and nothing else would notice.
func TestOverlaysKeepTheNodePluginWhole(t *testing.T) {
	kubectl := deployKubectl(t)
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
	return renderDeployment(t, kubectl, dir).node
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
