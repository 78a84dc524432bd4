#!/usr/bin/env bash
# Entry point behind `make images*` (see README.md beside this file).
#
#   images.sh all        host setup, base images, Tarn image, sidecars, list
#   images.sh host       packages, dockerd, BuildKit, privileged runtime
#   images.sh base       Debian/runtime/Go base images
#   images.sh tarn       Tarn's image (always rebuilt, BuildKit-cached) + checks
#   images.sh sidecars   CSI sidecar images + snapshot CRDs in _output/crds
#   images.sh list       every image tag this produces, with sizes
#   images.sh clean      remove those images, the binary cache and _output/crds
#
# Environment: VERSION, IMAGE (as in the Makefile), TARN_IMAGES_CACHE,
# TARN_IMAGES_OUT, TARN_IMAGES_REFRESH=1, TARN_BASE_IMAGE, GO_IMAGE.
source "$(dirname "$0")/lib.sh"

VERSION=${VERSION:-$(git -C "$REPO_ROOT" describe --tags --always --dirty 2>/dev/null || echo dev)}
IMAGE=${IMAGE:-tarn:$VERSION}
export VERSION IMAGE

run() { bash "$IMAGES_DIR/$1" "${@:2}"; }

# Every tag the scripts produce, one per line: "tag<TAB>what".
tags() {
  local suite=$DEBIAN_SUITE gover
  gover=$(go env GOVERSION | sed 's/^go//')
  printf '%s\t%s\n' \
    "$LOCAL_PREFIX/debian:$suite-slim" "Debian minbase (mmdebstrap)" \
    "$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO_ROOT/Dockerfile")" "Dockerfile's BASE_IMAGE default" \
    "$LOCAL_PREFIX/debian-build:$suite" "+ ca-certificates, git" \
    "$LOCAL_PREFIX/tarn-runtime-base:$suite" "+ Tarn's runtime tools" \
    "$LOCAL_PREFIX/golang:$gover-$suite" "Go builder (host Go $gover)" \
    "$(sed -n 's/^ARG GO_IMAGE=//p' "$REPO_ROOT/Dockerfile")" "Dockerfile's GO_IMAGE default" \
    "$IMAGE" "Tarn"
  sed -n 's/^  "\([^|]*\)|\([^|]*\)|\([^|]*\)|[^|]*|\([^"]*\)"$/\4\t\2@\3/p' "$IMAGES_DIR/sidecars.sh"
}

list() {
  local tag what size ours
  printf '%-58s %8s  %s\n' IMAGE SIZE ""
  while IFS=$'\t' read -r tag what; do
    if image_exists "$tag"; then
      size=$(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.0fMB", $1 / 1e6 }')
      ours=$(image_label "$tag" "$LABEL_NS.recipe")$(image_label "$tag" "$LABEL_NS.base-image")
      [ -n "$ours" ] || what="$what (not built here: left as found)"
    else
      size=-
      what="$what (missing)"
    fi
    printf '%-58s %8s  %s\n' "$tag" "$size" "$what"
  done < <(tags)
  if [ -d "$TARN_IMAGES_OUT/crds" ]; then
    echo "snapshot CRDs: $TARN_IMAGES_OUT/crds/ ($(cat "$TARN_IMAGES_OUT/crds/SOURCE" 2>/dev/null))"
  else
    echo "snapshot CRDs: not extracted yet (make images-sidecars)"
  fi
}

clean() {
  need_root
  local tag
  # Children first (Tarn and the Go builder sit on the base images).
  while IFS=$'\t' read -r tag _; do
    image_exists "$tag" || continue
    # Only what these scripts made: never a pulled debian/golang image.
    if [ -n "$(image_label "$tag" "$LABEL_NS.recipe")$(image_label "$tag" "$LABEL_NS.base-image")" ]; then
      docker rmi "$tag" >/dev/null && log "removed $tag"
    fi
  done < <(tags | tac)
  rm -rf "${TARN_IMAGES_CACHE:?}/bin" "${TARN_IMAGES_CACHE:?}/src" "${TARN_IMAGES_CACHE:?}/tmp" "${TARN_IMAGES_OUT:?}/crds"
  log "removed $TARN_IMAGES_CACHE/{bin,src,tmp} and $TARN_IMAGES_OUT/crds (host packages and docker buildx stay)"
}

all() {
  local t0=$SECONDS
  step "host setup" run host-setup.sh
  step "base images" run base-images.sh
  step "Tarn image" run tarn-image.sh
  step "sidecar images and CRDs" run sidecars.sh
  log "all images ready in $((SECONDS - t0))s"
  list
}

# One run at a time on a machine: they share the cache and the image names.
if [ "${1:-all}" != list ]; then
  need_root
  mkdir -p "$TARN_IMAGES_CACHE"
  exec 9>"$TARN_IMAGES_CACHE/.lock"
  flock -n 9 || { log "another images.sh run holds $TARN_IMAGES_CACHE/.lock: waiting"; flock 9; }
fi

case ${1:-all} in
  all) all ;;
  host) run host-setup.sh ;;
  base) run base-images.sh ;;
  tarn) run tarn-image.sh ;;
  sidecars) run sidecars.sh ;;
  crds) run sidecars.sh crds ;;
  list) list ;;
  clean) clean ;;
  *) die "usage: $0 [all|host|base|tarn|sidecars|crds|list|clean]" ;;
esac
