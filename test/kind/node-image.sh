#!/usr/bin/env bash
# The kind node image, assembled offline: `kind build node-image` cannot be
# used, it always `ctr content fetch`es etcd, coredns, pause and kindnetd from
# their registries. Three images, each kept while its recipe label matches:
#
#   tarn-local/kind-base:bookworm    kind's base image: Debian bookworm (systemd
#                                    252 still boots on cgroup v1) via mmdebstrap,
#                                    Debian's containerd 1.6 / runc / CNI plugins,
#                                    and kind's own base files from its module
#   tarn-local/kind-tools:bookworm   iptables/conntrack/curl/jq for kube-proxy
#                                    and tinynet, on tarn-local/debian:bookworm-slim
#   tarn-local/kind-node:<k8s>       base + kubeadm/kubelet/kubectl/crictl + every
#                                    image kubeadm and kind start, preloaded into
#                                    the node's containerd
#
# Needs build-binaries.sh's output and deploy/images' base images.
# Usage: node-image.sh [base|tools|node|all]
source "$(dirname "$0")/lib.sh"

NODE_FILES=$KIND_DIR/node
KIND_TOOLS_IMAGE=$LOCAL_PREFIX/kind-tools:$DEBIAN_SUITE
TINYNET_IMAGE=$LOCAL_PREFIX/tinynet:kind   # the name default-cni.yaml uses
export DOCKER_BUILDKIT=0                   # small Dockerfiles, local FROM images only

# recipe WORDS...: a short hash of what an image is made of.
recipe() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }
# dbuild ARGS...: a quiet legacy-builder docker build (its output only on failure).
dbuild() {
  local out
  out=$(docker build -q "$@" 2>&1) || { echo "$out" >&2; die "docker build $* failed"; }
}
# files_hash [FILE...]: hash of files of test/kind/node (all of them by default).
files_hash() { (cd "$NODE_FILES" && if [ $# -eq 0 ]; then set -- *; fi && sha256sum "$@" | sha256sum | cut -c1-16); }

# --- kind base ---------------------------------------------------------------
# Upstream builds containerd, runc, crictl and the CNI plugins from git; the
# Debian packages of the same tools do the job (containerd 1.6 speaks CRI v1).
BASE_PACKAGES=(
  systemd dbus conntrack iptables nftables iproute2 ethtool util-linux mount kmod
  libseccomp2 pigz e2fsprogs xfsprogs bash ca-certificates curl jq procps
  containerd runc containernetworking-plugins
)

base_image() {
  local kind_src files r
  kind_src=$(module_dir sigs.k8s.io/kind "$KIND_VERSION")
  [ -n "$kind_src" ] || die "go mod download sigs.k8s.io/kind@$KIND_VERSION failed"
  files=$kind_src/images/base/files
  r=$(recipe 3 "$KIND_VERSION" "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$DEBIAN_SECURITY_MIRROR" "${BASE_PACKAGES[*]}")
  if fresh "$KIND_BASE_IMAGE" "$LABEL_NS.recipe" "$r"; then
    log "$KIND_BASE_IMAGE: cached (debian $(image_label "$KIND_BASE_IMAGE" "$LABEL_NS.debian-version"))"
    return 0
  fi
  log "$KIND_BASE_IMAGE: mmdebstrap $DEBIAN_SUITE + ${#BASE_PACKAGES[@]} packages + kind $KIND_VERSION base files"
  local work; work=$(mktemp -d "$TARN_KIND_CACHE/tmp/kind-base.XXXXXX")
  # The first hook lays kind's files out as its Dockerfile does, with two edits
  # to containerd's config:
  #  * no fuse-overlayfs proxy plugin (rootless only; not installed);
  #  * restrict_oom_score_adj = true: kubelet asks for negative oom_score_adj
  #    (static, critical and Guaranteed pods), which needs CAP_SYS_RESOURCE;
  #    where the capability bounding set lacks it every such sandbox dies with
  #    "can't get final child's PID from pipe: EOF". containerd then clamps the
  #    value to its own, as kind does for rootless nodes. Harmless elsewhere
  #    for tests (no pod gets a negative OOM score).
  # Debian's containerd is /usr/bin/containerd (kind's unit wants
  # /usr/local/bin) and its CNI plugins are in /usr/lib/cni (kind's config
  # wants /opt/cni/bin): symlinks.
  # The second hook is the RUN steps of kind's Dockerfile (systemd trimmed to
  # what a node needs, the services kind starts, the OCI spec template).
  # shellcheck disable=SC2016 # the hooks are expanded by mmdebstrap's shell
  if ! mmdebstrap --variant=minbase --mode=root --format=tar \
      --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --aptopt='APT::Install-Recommends "false"' \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --customize-hook='set -e; f='"$files"'; r=$1
        install -m 0755 "$f"/usr/local/bin/* "$r/usr/local/bin/"
        install -d "$r/kind/bin" "$r/LICENSES" "$r/etc/containerd" "$r/etc/systemd/system/kubelet.service.d"
        install -m 0644 "$f/kind/README.txt" "$r/kind/"
        install -m 0755 "$f"/kind/bin/* "$r/kind/bin/"
        install -m 0644 "$f/LICENSES/README.txt" "$r/LICENSES/"
        install -m 0644 "$f/etc/crictl.yaml" "$r/etc/"
        install -m 0644 "$f"/etc/default/* "$r/etc/default/"
        install -m 0644 "$f"/etc/sysctl.d/* "$r/etc/sysctl.d/"
        for u in containerd.service kubelet.service kubelet.slice undo-mount-hacks.service; do
          install -m 0644 "$f/etc/systemd/system/$u" "$r/etc/systemd/system/"
        done
        install -m 0644 "$f"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
        sed -e "/^\[proxy_plugins/,/^  address/d" \
            -e "s/restrict_oom_score_adj = false/restrict_oom_score_adj = true/" \
          "$f/etc/containerd/config.toml" >"$r/etc/containerd/config.toml"
        grep -q "restrict_oom_score_adj = true" "$r/etc/containerd/config.toml"
        ln -sf /usr/bin/containerd "$r/usr/local/bin/containerd"
        install -d "$r/opt/cni/bin"
        for p in "$r"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/${p##*/}" "$r/opt/cni/bin/"; done' \
      --customize-hook='chroot "$1" sh -euc "
        find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
        rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
          /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
          /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
        echo ReadKMsg=no >>/etc/systemd/journald.conf
        ln -sf /usr/lib/systemd/systemd /sbin/init
        systemctl enable kubelet.service containerd.service undo-mount-hacks.service
        systemctl mask systemd-binfmt.service
        mkdir -p /etc/kubernetes/manifests
        ctr oci spec | jq \".hooks.createContainer += [{path: \\\"/kind/bin/mount-product-files.sh\\\"}] | del(.process.rlimits)\" \
          >/etc/containerd/cri-base.json
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
      "' \
      --customize-hook="cat \"\$1\"/etc/debian_version >'$work/debian_version'" \
      "$DEBIAN_SUITE" "$work/rootfs.tar" \
      "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" \
      "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main" \
      "deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main" >"$work/log" 2>&1; then
    tail -n 40 "$work/log" >&2
    die "mmdebstrap failed for $KIND_BASE_IMAGE (log: $work/log)"
  fi
  local ver; ver=$(cat "$work/debian_version")
  # docker import cannot set STOPSIGNAL (systemd stops on SIGRTMIN+3): a
  # Dockerfile of config lines only on the imported rootfs adds the image config.
  docker import "$work/rootfs.tar" "$KIND_BASE_IMAGE-rootfs" >/dev/null
  rm -f "$work/rootfs.tar"
  cat >"$work/Dockerfile" <<DOCKERFILE
FROM $KIND_BASE_IMAGE-rootfs
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
LABEL $LABEL_NS.recipe=$r $LABEL_NS.debian-version=$ver $LABEL_NS.built=$(date -u +%Y-%m-%dT%H:%MZ)
DOCKERFILE
  dbuild -t "$KIND_BASE_IMAGE" "$work"
  docker rmi "$KIND_BASE_IMAGE-rootfs" >/dev/null
  rm -rf "$work"
  log "$KIND_BASE_IMAGE: built (debian $ver)"
}

# --- tools -------------------------------------------------------------------
tools_image() {
  local base=$LOCAL_PREFIX/debian:$DEBIAN_SUITE-slim r
  image_exists "$base" || die "$base is missing: run make images-base first"
  r=$(recipe 1 "$(image_id "$base")" "$(files_hash tools.Dockerfile)")
  if fresh "$KIND_TOOLS_IMAGE" "$LABEL_NS.recipe" "$r"; then log "$KIND_TOOLS_IMAGE: cached"; return 0; fi
  log "$KIND_TOOLS_IMAGE: apt-get on $base"
  dbuild --build-arg BASE="$base" --label "$LABEL_NS.recipe=$r" \
    -t "$KIND_TOOLS_IMAGE" -f "$NODE_FILES/tools.Dockerfile" "$NODE_FILES"
}

# --- node --------------------------------------------------------------------
node_recipe() {
  recipe 1 "$K8S_BIN_DIR" "$AUX_BIN_DIR" "$(image_id "$KIND_BASE_IMAGE")" "$(image_id "$KIND_TOOLS_IMAGE")" \
    "$(files_hash)" "$(declare -f node_image component_images scratch_image)"
}

# scratch_image TAG BINARY PATH-IN-IMAGE [docker import --change ...]: an image
# holding one static binary, made with docker import (no Dockerfile needed).
scratch_image() {
  local tag=$1 bin=$2 dest=$3 root; shift 3
  root=$(mktemp -d "$TARN_KIND_CACHE/tmp/img.XXXXXX")
  install -D -m 0755 "$bin" "$root$dest"
  tar -C "$root" --owner=0 --group=0 -c . | docker import "$@" - "$tag" >/dev/null
  rm -rf "$root"
}

# component_images TARFILE: the images kubeadm runs (named exactly as
# `kubeadm config images list` prints them) plus tinynet, saved in one tar.
component_images() {
  local out=$1 want c tag images=()
  mapfile -t want < <("$K8S_BIN_DIR/kubeadm" config images list --kubernetes-version "$K8S_VERSION")
  img() { printf '%s\n' "${want[@]}" | grep -m1 "/$1:" || die "kubeadm lists no $1 image"; }
  # kubeadm's static pods call the control-plane binaries by name: PATH.
  local path='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    tag=$(img "$c"); scratch_image "$tag" "$K8S_BIN_DIR/$c" "/usr/local/bin/$c" --change "$path"; images+=("$tag")
  done
  tag=$(img etcd); scratch_image "$tag" "$AUX_BIN_DIR/etcd" /usr/local/bin/etcd --change "$path"; images+=("$tag")
  tag=$(img coredns)
  scratch_image "$tag" "$AUX_BIN_DIR/coredns" /coredns --change 'ENTRYPOINT ["/coredns"]' \
    --change 'EXPOSE 53 53/udp'
  images+=("$tag")
  tag=$(img pause)
  scratch_image "$tag" "$AUX_BIN_DIR/pause" /pause --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535'
  images+=("$tag")
  PAUSE_IMAGE=$tag
  local ctx; ctx=$(mktemp -d "$TARN_KIND_CACHE/tmp/ctx.XXXXXX")
  cp "$NODE_FILES/kube-proxy.Dockerfile" "$NODE_FILES/iptables-wrapper" "$K8S_BIN_DIR/kube-proxy" "$ctx/"
  tag=$(img kube-proxy)
  dbuild --build-arg BASE="$KIND_TOOLS_IMAGE" -f "$ctx/kube-proxy.Dockerfile" -t "$tag" "$ctx"
  images+=("$tag")
  rm -rf "$ctx"
  dbuild --build-arg BASE="$KIND_TOOLS_IMAGE" -f "$NODE_FILES/tinynet.Dockerfile" \
    -t "$TINYNET_IMAGE" "$NODE_FILES"
  images+=("$TINYNET_IMAGE")
  log "preloading: ${images[*]}"
  docker save -o "$out" "${images[@]}"
  # They live on in the node image; rebuilt in seconds when needed.
  docker rmi "${images[@]}" >/dev/null
}

# The steps of kind's nodeimage builder, by hand: a container of the base
# image gets the binaries, kind's manifests and /kind/version, its containerd
# imports the image tar, and the container is committed.
node_image() {
  local work id
  work=$(mktemp -d "$TARN_KIND_CACHE/tmp/node.XXXXXX")
  component_images "$work/images.tar"
  id=tarn-kind-build-$$
  # shellcheck disable=SC2064 # expand now: the names are fixed
  trap "docker rm -f -v $id >/dev/null 2>&1; rm -rf '$work'" EXIT
  docker run -d --name "$id" --entrypoint sleep "$KIND_BASE_IMAGE" infinity >/dev/null
  local b
  for b in kubeadm kubelet kubectl; do docker cp "$K8S_BIN_DIR/$b" "$id:/usr/bin/$b"; done
  docker cp "$AUX_BIN_DIR/crictl" "$id:/usr/local/bin/crictl"
  docker exec "$id" mkdir -p /kind/manifests
  docker cp "$NODE_FILES/default-cni.yaml" "$id:/kind/manifests/default-cni.yaml"
  docker cp "$NODE_FILES/default-storage.yaml" "$id:/kind/manifests/default-storage.yaml"
  docker exec "$id" sh -euc "
    chown root:root /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl /usr/local/bin/crictl /kind/manifests/*
    printf %s '$K8S_VERSION' >/kind/version
    sed -i 's#sandbox_image = .*#sandbox_image = \"$PAUSE_IMAGE\"#' /etc/containerd/config.toml"
  # containerd 1.6's ctr has no `ctr info` (kind's importer uses it): ctr version.
  docker exec "$id" sh -c 'containerd >/var/log/containerd-build.log 2>&1 &
    for i in $(seq 1 30); do ctr version >/dev/null 2>&1 && exit 0; sleep 1; done; cat /var/log/containerd-build.log; exit 1'
  docker exec -i "$id" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
    --all-platforms --no-unpack --digests - <"$work/images.tar" >/dev/null
  # Stop it cleanly before the commit. `sleep` (PID 1) reaps nothing, so the
  # exited containerd stays a zombie: wait for that, not for its absence.
  docker exec "$id" sh -c 'pkill -x containerd
    while ps -o stat= -C containerd | grep -qv "^Z"; do sleep 0.2; done; rm -f /var/log/containerd-build.log'
  docker commit \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
    --change "LABEL $LABEL_NS.recipe=$NODE_RECIPE $LABEL_NS.kubernetes-version=$K8S_VERSION $LABEL_NS.built=$(date -u +%Y-%m-%dT%H:%MZ)" \
    "$id" "$KIND_NODE_IMAGE" >/dev/null
  docker rm -f -v "$id" >/dev/null
  rm -rf "$work"
  trap - EXIT
}

node_main() {
  local k
  for k in kubeadm kubelet kubectl kube-apiserver kube-proxy; do
    [ -x "$K8S_BIN_DIR/$k" ] || die "$K8S_BIN_DIR/$k is missing: run build-binaries.sh first"
  done
  [ -x "$AUX_BIN_DIR/etcd" ] || die "$AUX_BIN_DIR/etcd is missing: run build-binaries.sh first"
  NODE_RECIPE=$(node_recipe)
  if fresh "$KIND_NODE_IMAGE" "$LABEL_NS.recipe" "$NODE_RECIPE"; then
    log "$KIND_NODE_IMAGE: cached (built $(image_label "$KIND_NODE_IMAGE" "$LABEL_NS.built"))"
    return 0
  fi
  log "$KIND_NODE_IMAGE: assembling"
  local old; old=$(image_id "$KIND_NODE_IMAGE" 2>/dev/null || true)
  node_image
  # The image it replaces (1 GB) goes, unless a container still uses it.
  [ -z "$old" ] || docker rmi "$old" >/dev/null 2>&1 || true
  log "$KIND_NODE_IMAGE: built, $(docker image inspect -f '{{.Size}}' "$KIND_NODE_IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
}

main() {
  need_root
  mkdir -p "$TARN_KIND_CACHE/tmp"
  case ${1:-all} in
    base) step "kind base image" base_image ;;
    tools) step "kind tools image" tools_image ;;
    node) step "kind node image" node_main ;;
    all)
      step "kind base image" base_image
      step "kind tools image" tools_image
      step "kind node image" node_main
      ;;
    *) die "usage: $0 [base|tools|node|all]" ;;
  esac
}

main "$@"
