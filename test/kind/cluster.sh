#!/usr/bin/env bash
# The kind cluster of the e2e tests and the per-node pool filesystems.
#
#   cluster.sh up      (re)create the cluster from deploy/kind/cluster.yaml,
#                      load Tarn's and the sidecars' images, check the pools,
#                      apply the snapshot CRDs and deploy/overlays/kind
#   cluster.sh down    delete the cluster, unmount and detach the pools, and
#                      fail if a mount or loop device of the harness is left
#   cluster.sh check   the pool check of `up` alone (a pod on each node)
#
# Environment: KIND_CLUSTER (tarn), KIND_KUBECONFIG, IMAGE (Tarn image to load,
# tagged tarn:kind), TARN_KIND_STATE (/var/lib/tarn-kind), POOL_SIZE (4G),
# TARN_KIND_DEPLOY=0 to stop after the CRDs.
source "$(dirname "$0")/lib.sh"

TEMPLATE=$REPO_ROOT/deploy/kind/cluster.yaml
OVERLAY=$REPO_ROOT/deploy/overlays/kind
CRDS=$TARN_IMAGES_OUT/crds
POOL_ROOT=$TARN_KIND_STATE/$KIND_CLUSTER
KIND_IMAGE_TAG=tarn:kind         # what deploy/overlays/kind references
E2E_IMAGE=${E2E_IMAGE:-$LOCAL_PREFIX/debian:$DEBIAN_SUITE-slim}  # test/e2e workload pods
TARN_KIND_DEPLOY=${TARN_KIND_DEPLOY:-1}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-180s}

k() { "$KUBECTL_BIN" --kubeconfig "$KIND_KUBECONFIG" "$@"; }

# The node names the template gives pools to (control-plane, worker, ...).
pool_names() { sed -n 's#^ *- hostPath: @POOLS@/\([A-Za-z0-9-]*\) *$#\1#p' "$TEMPLATE"; }

# The sidecar images deploy/images builds (same parsing as images.sh).
sidecar_images() {
  sed -n 's/^  "\([^|]*\)|\([^|]*\)|\([^|]*\)|[^|]*|\([^"]*\)"$/\4/p' "$REPO_ROOT/deploy/images/sidecars.sh"
}

# --- pools ---------------------------------------------------------------------
# A sparse image file per node, XFS with reflink (Tarn's clones and snapshots
# are reflink copies), on its own loop device, mounted under $POOL_ROOT/<node>.
pools_up() {
  local n dev
  mkdir -p "$POOL_ROOT"
  for n in $(pool_names); do
    truncate -s "$POOL_SIZE" "$POOL_ROOT/$n.img"
    mkfs.xfs -q -m reflink=1 "$POOL_ROOT/$n.img"
    dev=$(losetup -f --show "$POOL_ROOT/$n.img")
    mkdir -p "$POOL_ROOT/$n"
    mount -t xfs "$dev" "$POOL_ROOT/$n"
    log "pool $n: $POOL_SIZE XFS (reflink) on $dev at $POOL_ROOT/$n"
  done
}

# Loop devices as "NAME<TAB>BACK-MAJ:MIN<TAB>BACK-FILE", one per line.
# (JSON: the plain and raw listings pad and escape the fields.)
loops() {
  losetup -l -J -O NAME,BACK-MAJ:MIN,BACK-FILE |
    jq -r '.loopdevices[]? | [.name, (."back-maj:min" | gsub(" "; "")), ."back-file"] | @tsv'
}

# The harness's loop devices: those whose backing file is under $POOL_ROOT
# (the pools), and those backed by files on a pool (Tarn's volumes: a crashed
# test leaves them behind, and they keep the pool's filesystem alive after the
# node containers are gone).
pool_loops() { loops | awk -F'\t' -v root="$POOL_ROOT/" 'index($3, root) == 1 { print $1 }'; }
pool_majmins() { local d; for d in $(pool_loops); do lsblk -dn -o MAJ:MIN "$d" | tr -d ' '; done; }
# loops_on MAJ:MIN...: the loop devices whose backing file is on one of those devices.
loops_on() {
  loops | awk -F'\t' -v mm="$*" 'BEGIN { split(mm, a, " "); for (i in a) on[a[i]] = 1 } on[$2] { print $1 }'
}
harness_loops() {
  # shellcheck disable=SC2046 # one MAJ:MIN per word
  loops_on $(pool_majmins)
  pool_loops
}

harness_mounts() { awk -v root="$POOL_ROOT/" 'index($5, root) == 1 { print $5 }' /proc/self/mountinfo; }

pools_down() {
  local d m
  POOL_MAJMINS=$(pool_majmins | tr "\n" " ")   # for leftovers(): once detached, they are gone
  # Volumes first (they hold files on the pools), then the pools.
  for d in $(harness_loops); do
    case $(loops | awk -F'\t' -v d="$d" '$1 == d { print $3 }') in
      "$POOL_ROOT"/*) ;;
      *) log "detaching $d (a Tarn volume left on a pool)"; losetup -d "$d" || true ;;
    esac
  done
  for m in $(harness_mounts | sort -r); do
    umount "$m" || { warn "umount $m failed: lazy unmount"; umount -l "$m"; }
  done
  for d in $(harness_loops); do losetup -d "$d" || true; done
  rm -rf "$POOL_ROOT"
}

# Nothing of the harness may be left: print what is and fail.
leftovers() {
  local m l c
  m=$(harness_mounts)
  l=$(loops | awk -F'\t' -v root="$TARN_KIND_STATE/" -v mm="${POOL_MAJMINS:-}" \
    'BEGIN { split(mm, a, " "); for (i in a) on[a[i]] = 1 } index($3, root) == 1 || on[$2]')
  c=$(docker ps -a --filter "label=io.x-k8s.kind.cluster=$KIND_CLUSTER" --format '{{.Names}}')
  [ -z "$m$l$c" ] && return 0
  [ -z "$m" ] || warn "mounts left: $m"
  [ -z "$l" ] || warn "loop devices left (name, backing device, file):"$'\n'"$l"
  [ -z "$c" ] || warn "node containers left: $c"
  return 1
}

# --- cluster -------------------------------------------------------------------
down() {
  if docker ps -a --filter "label=io.x-k8s.kind.cluster=$KIND_CLUSTER" --format '{{.Names}}' | grep -q .; then
    if [ -x "$KIND_BIN" ]; then
      "$KIND_BIN" delete cluster --name "$KIND_CLUSTER" --kubeconfig "$KIND_KUBECONFIG"
    else
      docker ps -aq --filter "label=io.x-k8s.kind.cluster=$KIND_CLUSTER" | xargs docker rm -f -v >/dev/null
    fi
  fi
  rm -f "$KIND_KUBECONFIG" "$(dirname "$KIND_KUBECONFIG")/cluster.yaml"
  pools_down
  rmdir "$TARN_KIND_STATE" 2>/dev/null || true
  leftovers || die "cluster $KIND_CLUSTER: something was left behind (see above)"
  log "cluster $KIND_CLUSTER: nothing left (no node container, pool mount or loop device)"
}

# The nodes see only the /dev/loopN nodes that exist when they start, and
# the kubelet's raw block mapping takes a free loop device of its own for
# every published block volume: a freshly booted host may have only a few.
loop_nodes() {
  local n
  for n in $(seq 0 63); do
    [ -e "/dev/loop$n" ] || mknod -m 0660 "/dev/loop$n" b 7 "$n"
  done
}

create() {
  local cfg; cfg=$(dirname "$KIND_KUBECONFIG")/cluster.yaml
  loop_nodes
  mkdir -p "$(dirname "$KIND_KUBECONFIG")"
  sed -e "s#@CLUSTER@#$KIND_CLUSTER#g" -e "s#@POOLS@#$POOL_ROOT#g" "$TEMPLATE" >"$cfg"
  # --kubeconfig: the user's ~/.kube/config is left alone.
  "$KIND_BIN" create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" --config "$cfg" \
    --kubeconfig "$KIND_KUBECONFIG" --wait 3m
  k wait --for=condition=Ready node --all --timeout=120s >/dev/null
  k get nodes -o wide >&2
}

# There is no registry: every image a pod uses must be loaded into every node.
load_images() {
  local img images=("$KIND_IMAGE_TAG")
  image_exists "$IMAGE" || die "$IMAGE is missing: run make images"
  docker tag "$IMAGE" "$KIND_IMAGE_TAG"
  for img in $(sidecar_images); do
    image_exists "$img" || die "$img is missing: run make images-sidecars"
    images+=("$img")
  done
  # The e2e tests' workload pods (sh, coreutils, util-linux).
  image_exists "$E2E_IMAGE" || die "$E2E_IMAGE is missing: run make images-base"
  images+=("$E2E_IMAGE")
  log "loading ${images[*]} ($IMAGE as $KIND_IMAGE_TAG)"
  # (It reports every image on every node on stderr: shown only on failure.)
  local out
  out=$("$KIND_BIN" load docker-image --name "$KIND_CLUSTER" "${images[@]}" 2>&1) ||
    { echo "$out" >&2; die "kind load docker-image failed"; }
}

# A privileged pod on every node: the pool must be XFS with reflink at
# /var/lib/tarn/pool, as the DaemonSet will see it. The pod runs the e2e
# workload image, since Tarn's has no shell; reflink is asked of the pool by
# making one (a file cloned and removed), which needs no xfsprogs.
check_pools() {
  local n node pods=()
  for n in $(pool_names); do
    node=$KIND_CLUSTER-$n
    pods+=("pod/pool-check-$n")
    k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: pool-check-$n
  namespace: default
  labels: {app: tarn-kind-pool-check}
spec:
  nodeName: $node
  restartPolicy: Never
  tolerations: [{operator: Exists}]
  containers:
  - name: check
    image: $E2E_IMAGE
    imagePullPolicy: IfNotPresent
    securityContext: {privileged: true}
    command: [sh, -c, 'f=/pool/.pool-check; echo x >\$f; r=0; cp --reflink=always \$f \$f.clone 2>/dev/null && r=1; rm -f \$f \$f.clone; echo "\$(findmnt -n -o FSTYPE /pool) reflink=\$r"']
    volumeMounts: [{name: pool, mountPath: /pool}]
  volumes: [{name: pool, hostPath: {path: /var/lib/tarn/pool, type: Directory}}]
YAML
  done
  k wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s "${pods[@]}" >/dev/null ||
    { k describe "${pods[@]}" >&2; die "pool check pods did not succeed"; }
  local out bad=0
  for n in $(pool_names); do
    out=$(k logs "pool-check-$n")
    log "pool check $KIND_CLUSTER-$n: /var/lib/tarn/pool is $out"
    [ "$out" = "xfs reflink=1" ] || bad=1
  done
  k delete --wait=false "${pods[@]}" >/dev/null
  [ "$bad" = 0 ] || die "a node's pool is not XFS with reflink"
}

crds() {
  [ -f "$CRDS/kustomization.yaml" ] || die "$CRDS/kustomization.yaml is missing: run make images-sidecars"
  # Server-side: the CRDs are too big for client-side apply's annotation.
  k apply --server-side -k "$CRDS" >/dev/null
  # kubectl wait errors out, rather than waiting, while a fresh CRD has no
  # conditions at all yet: retry until it has them.
  local i
  for i in $(seq 60); do
    k wait --for=condition=Established --timeout=60s crd \
      volumesnapshots.snapshot.storage.k8s.io volumesnapshotcontents.snapshot.storage.k8s.io \
      volumesnapshotclasses.snapshot.storage.k8s.io >/dev/null 2>&1 && break
    [ "$i" = 60 ] && die "snapshot CRDs not established after a minute"
    sleep 1
  done
  log "snapshot CRDs from $(cat "$CRDS/SOURCE" 2>/dev/null || echo "$CRDS") established"
}

deploy() {
  if [ "$TARN_KIND_DEPLOY" != 1 ]; then
    log "TARN_KIND_DEPLOY=$TARN_KIND_DEPLOY: not deploying Tarn"
    return 0
  fi
  if [ ! -f "$OVERLAY/kustomization.yaml" ]; then
    warn "$OVERLAY/kustomization.yaml does not exist (yet): Tarn is not deployed"
    return 0
  fi
  k apply -k "$OVERLAY"
  k -n tarn-system rollout status daemonset/tarn-node --timeout="$ROLLOUT_TIMEOUT"
  k -n tarn-system rollout status deployment/tarn-controller --timeout="$ROLLOUT_TIMEOUT"
  validate_overlays
}

# The other overlays cannot run here (the LVM one needs device-mapper, which
# kind nodes on this kernel lack), but the API server can still judge what
# they render: a patch that leaves a volumeMount without its volume, or a
# field of the wrong type, fails this server-side dry run.
validate_overlays() {
  local o
  for o in "$REPO_ROOT"/deploy/overlays/*/; do
    o=${o%/}
    [ "$o" = "$OVERLAY" ] && continue
    k apply --dry-run=server -k "$o" >/dev/null || die "overlay $o does not validate against the cluster"
    log "overlay $(basename "$o") validates against the API server (dry run)"
  done
}

up() {
  image_exists "$KIND_NODE_IMAGE" || die "$KIND_NODE_IMAGE is missing: run make kind-image"
  step "remove the previous cluster $KIND_CLUSTER" down
  step "pool filesystems" pools_up
  step "create cluster $KIND_CLUSTER" create
  step "load images" load_images
  step "check pools" check_pools
  step "snapshot CRDs" crds
  step "deploy Tarn ($OVERLAY)" deploy
  log "kubeconfig: $KIND_KUBECONFIG   kubectl: $KIND_DIR/kubectl (or $KUBECTL_BIN --kubeconfig $KIND_KUBECONFIG)"
}

main() {
  need_root
  [ -x "$KUBECTL_BIN" ] || [ "${1:-}" = down ] || die "$KUBECTL_BIN is missing: run make kind-image"
  case ${1:-} in
    up) up ;;
    down) step "delete cluster $KIND_CLUSTER and its pools" down ;;
    check) check_pools ;;
    *) die "usage: $0 up|down|check" ;;
  esac
}

main "$@"
