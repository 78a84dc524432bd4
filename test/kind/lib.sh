# Shared settings and helpers of the kind harness (test/kind). Sourced, never run.
# shellcheck shell=bash disable=SC2034 # (the variables are used by the scripts sourcing it)
#
# It builds on deploy/images/lib.sh (apt_ensure, image checks, step timing,
# the tarn-local/ image prefix and the Debian mirrors), with its own log prefix.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../../deploy/images/lib.sh"

KIND_DIR=$REPO_ROOT/test/kind

# Pinned versions. Kubernetes 1.34 is the last minor whose kubelet runs on a
# cgroup v1 host by default (1.35 sets failCgroupV1) and accepts containerd 1.6;
# etcd and coredns are the versions kubeadm v1.34.4 asks for.
KIND_VERSION=${KIND_VERSION:-v0.33.0}
K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.5}
COREDNS_VERSION=${COREDNS_VERSION:-v1.12.1}
CRICTL_VERSION=${CRICTL_VERSION:-v1.34.0}

# Binaries, one directory per component and version: a new version is a new
# directory, an existing one is never rebuilt (TARN_IMAGES_REFRESH=1 aside).
TARN_KIND_CACHE=${TARN_KIND_CACHE:-/var/cache/tarn-kind}
KIND_BIN=$TARN_KIND_CACHE/kind-$KIND_VERSION/kind
K8S_BIN_DIR=$TARN_KIND_CACHE/kubernetes-$K8S_VERSION
KUBECTL_BIN=$K8S_BIN_DIR/kubectl
AUX_BIN_DIR=$TARN_KIND_CACHE/aux-etcd-$ETCD_VERSION-coredns-$COREDNS_VERSION-crictl-$CRICTL_VERSION

# Images made here (checked by tag and recipe label before building).
KIND_BASE_IMAGE=$LOCAL_PREFIX/kind-base:$DEBIAN_SUITE
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-$LOCAL_PREFIX/kind-node:$K8S_VERSION}

# Cluster.
KIND_CLUSTER=${KIND_CLUSTER:-tarn}
KIND_KUBECONFIG=${KIND_KUBECONFIG:-$REPO_ROOT/_output/kind/kubeconfig}
# Per-node pool filesystems (image files and their mount points).
TARN_KIND_STATE=${TARN_KIND_STATE:-/var/lib/tarn-kind}
POOL_SIZE=${POOL_SIZE:-4G}

log()  { printf '\033[1m[kind]\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33m[kind] WARNING:\033[0m %s\n' "$*" >&2; }
die()  { printf '\033[1;31m[kind] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# Go builds of upstream code: never download a toolchain, ignore a caller's
# go.work, let go.mod/go.sum be completed; static binaries; niced so that an
# interactive shell stays usable on a 2-core machine.
go_env() { env GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 "$@"; }

# module_dir MODULE VERSION: its directory in the module cache (downloaded if needed).
module_dir() {
  (cd / && GOFLAGS='' GOWORK=off go mod download -json "$1@$2") | jq -r '.Dir // empty'
}
