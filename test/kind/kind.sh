#!/usr/bin/env bash
# Entry point of `make kind-image`, `make kind-up` and `make kind-down`
# (see README.md beside this file).
#
#   kind.sh image   host setup, binaries and node image (all cached)
#   kind.sh up      image, then (re)create the cluster and deploy Tarn
#   kind.sh down    delete the cluster and its pool filesystems
#
# One run at a time: they share the cache, the cluster name and the pools.
source "$(dirname "$0")/lib.sh"

# docker must be able to start privileged containers (kind's nodes). Where the
# capability bounding set is reduced that needs deploy/images' runc shim as
# docker's *default* runtime: kind has no option to choose one.
host() {
  # (8>&-: a dockerd started from there must not inherit, and hold, our lock.)
  TARN_RUNC_DEFAULT=1 bash "$IMAGES_DIR/images.sh" host 8>&-
  docker run --rm --privileged --net=none "$LOCAL_PREFIX/debian:$DEBIAN_SUITE-slim" true ||
    die "docker cannot run privileged containers (kind nodes are): see deploy/images/README.md, step 1"
  log "docker default runtime: $(docker info --format '{{.DefaultRuntime}}'); privileged containers work"
}

# KIND_BUILD_NODE=0 (with KIND_NODE_IMAGE=kindest/node:<tag>) uses an
# official node image, pulled where a registry is reachable, instead of
# assembling one: only the kind CLI and kubectl are built then.
image() {
  step "host setup" host
  if [ "${KIND_BUILD_NODE:-1}" = 0 ]; then
    bash "$KIND_DIR/build-binaries.sh" kind
    bash "$KIND_DIR/build-binaries.sh" kubernetes
    image_exists "$KIND_NODE_IMAGE" || docker pull "$KIND_NODE_IMAGE" ||
      die "KIND_BUILD_NODE=0: $KIND_NODE_IMAGE is neither here nor pullable"
    return 0
  fi
  bash "$KIND_DIR/build-binaries.sh" all
  bash "$KIND_DIR/node-image.sh" all
}

need_root
mkdir -p "$TARN_KIND_CACHE"
exec 8>"$TARN_KIND_CACHE/.lock"
flock -n 8 || { log "another kind.sh run holds $TARN_KIND_CACHE/.lock: waiting"; flock 8; }

t0=$SECONDS
case ${1:-} in
  image) image ;;
  up) image; bash "$KIND_DIR/cluster.sh" up ;;
  down) bash "$KIND_DIR/cluster.sh" down ;;
  *) die "usage: $0 image|up|down" ;;
esac
log "kind.sh $1: done in $((SECONDS - t0))s"
