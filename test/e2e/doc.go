// Package e2e runs Tarn end to end on a real Kubernetes cluster (make
// kind-up, then make e2e): claims, pods, snapshots, restores, clones,
// expansion, raw block, capacity objects and a driver restart, through the
// upstream sidecars and Kubernetes' own controllers. The tests skip unless
// TARN_E2E_KUBECONFIG names the cluster's kubeconfig.
package e2e
