#!/usr/bin/env bash
# The kubernetes-csi sidecars Tarn deploys with, built from their Go modules at
# pinned versions (no registry needed) and tagged with the upstream image
# names, plus the VolumeSnapshot CRDs extracted into $TARN_IMAGES_OUT/crds/.
#
# Binaries: static (CGO_ENABLED=0), cached as $TARN_IMAGES_CACHE/bin/<name>-<version>.
# Images:   FROM scratch + the binary (sidecar.Dockerfile.in).
# A sidecar whose image exists with the same recipe label is skipped; one
# whose binary is cached is only wrapped. TARN_IMAGES_REFRESH=1 redoes both.
source "$(dirname "$0")/lib.sh"

# name | module | version | package in the module | image
SIDECARS=(
  "csi-provisioner|github.com/kubernetes-csi/external-provisioner/v6|v6.4.0|./cmd/csi-provisioner|registry.k8s.io/sig-storage/csi-provisioner:v6.4.0"
  "csi-snapshotter|github.com/kubernetes-csi/external-snapshotter/v8|v8.7.0|./cmd/csi-snapshotter|registry.k8s.io/sig-storage/csi-snapshotter:v8.7.0"
  "snapshot-controller|github.com/kubernetes-csi/external-snapshotter/v8|v8.7.0|./cmd/snapshot-controller|registry.k8s.io/sig-storage/snapshot-controller:v8.7.0"
  "csi-resizer|github.com/kubernetes-csi/external-resizer|v1.14.0|./cmd/csi-resizer|registry.k8s.io/sig-storage/csi-resizer:v1.14.0"
)
# The CRDs ship in config/crd/ of the snapshotter's client module.
CRD_MODULE=github.com/kubernetes-csi/external-snapshotter/client/v8
CRD_VERSION=v8.7.0

BIN_DIR=$TARN_IMAGES_CACHE/bin
SRC_DIR=$TARN_IMAGES_CACHE/src
# Go settings for every build here: no toolchain download, no go.work from
# the caller, modules as the (edited) go.mod says.
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0

module_dir() { # module version -> directory in the module cache
  # From outside any module, so that no go.mod/go.sum is touched.
  (cd "$TARN_IMAGES_CACHE/tmp" && GOFLAGS='' go mod download -json "$1@$2") | jq -r '.Dir // empty'
}

# prepare_source module version: a writable copy of the module's source whose
# go.mod builds outside its repository. Upstream's go.mod keeps its own
# replace directives (they pin the Kubernetes libraries, which is why
# `go install module/cmd/x@version` refuses it); replaces that point at a
# directory inside the repository (external-snapshotter's ./client) are not in
# the module zip, so they are redirected to the same module at the same
# version from the proxy.
prepare_source() {
  local mod=$1 ver=$2 dir src
  src=$SRC_DIR/$(echo "$mod" | tr '/' '_')@$ver
  if [ -f "$src/.prepared" ]; then
    echo "$src"
    return 0
  fi
  dir=$(module_dir "$mod" "$ver")
  [ -n "$dir" ] || die "go mod download $mod@$ver failed"
  rm -rf "$src"
  mkdir -p "$SRC_DIR"
  cp -r "$dir" "$src"
  chmod -R u+w "$src"
  local old
  for old in $(cd "$src" && go mod edit -json | jq -r '.Replace[]? | select(.New.Version == null) | .Old.Path'); do
    log "$mod: replace $old => $old@$ver (was a local path)"
    (cd "$src" && go mod edit -dropreplace="$old" -replace="$old=$old@$ver")
  done
  touch "$src/.prepared"
  echo "$src"
}

build_binary() { # name module version pkg -> path of the cached binary
  local name=$1 mod=$2 ver=$3 pkg=$4
  local bin=$BIN_DIR/$name-$ver
  if [ "$TARN_IMAGES_REFRESH" != 1 ] && [ -x "$bin" ]; then
    log "$name $ver: binary cached ($bin)"
    echo "$bin"
    return 0
  fi
  local src t0=$SECONDS
  src=$(prepare_source "$mod" "$ver")
  log "$name $ver: go build $mod/${pkg#./}"
  mkdir -p "$BIN_DIR"
  # nice: other people's builds share these two cores.
  (cd "$src" && nice -n 10 go build -trimpath -ldflags "-s -w -X main.version=$ver" -o "$bin.tmp" "$pkg") >&2
  go version -m "$bin.tmp" | grep -q 'CGO_ENABLED=0' || die "$name: binary is not static"
  mv "$bin.tmp" "$bin"
  log "$name $ver: built in $((SECONDS - t0))s ($(du -h "$bin" | cut -f1))"
  echo "$bin"
}

build_image() { # name module version bin image recipe
  local name=$1 mod=$2 ver=$3 bin=$4 image=$5 recipe=$6
  local ctx; ctx=$(mktemp -d "$TARN_IMAGES_CACHE/tmp/sidecar.XXXXXX")
  mkdir -p "$ctx/rootfs/tmp"
  chmod 1777 "$ctx/rootfs/tmp"
  cp "$bin" "$ctx/$name"
  sed "s/@NAME@/$name/g" "$IMAGES_DIR/sidecar.Dockerfile.in" >"$ctx/Dockerfile"
  local repo=${mod%/v[0-9]*}
  DOCKER_BUILDKIT=0 docker build -q \
    --label "$LABEL_NS.recipe=$recipe" \
    --label "$LABEL_NS.module=$mod@$ver" \
    --label "$LABEL_NS.go-version=$(go version -m "$bin" | awk 'NR == 1 { print $2 }')" \
    --label "$LABEL_NS.built=$(date -u +%Y-%m-%dT%H:%MZ)" \
    --label "org.opencontainers.image.source=https://$repo" \
    --label "org.opencontainers.image.version=$ver" \
    -t "$image" "$ctx" >"$ctx.log" 2>&1 || { cat "$ctx.log" >&2; die "building $image failed"; }
  rm -rf "$ctx" "$ctx.log"
  # The binary must start in its image: print its version.
  local out
  out=$(docker run --rm "$image" --version 2>&1 | head -n 1) || true
  case $out in *"$ver"*) ;; *) die "$image: '--version' printed '$out', want $ver";; esac
  log "$image: built ($out)"
}

sidecar() {
  local name mod ver pkg image recipe bin
  IFS='|' read -r name mod ver pkg image <<<"$1"
  recipe=$(printf '%s\n' "$mod" "$ver" "$pkg" "$(cat "$IMAGES_DIR/sidecar.Dockerfile.in")" | sha256sum | cut -c1-16)
  if fresh "$image" "$LABEL_NS.recipe" "$recipe"; then
    log "$image: cached"
    return 0
  fi
  # A real upstream image under that name (loaded from a tarball, say) is
  # used as it is, unless a refresh was asked for.
  if [ "$TARN_IMAGES_REFRESH" != 1 ] && image_exists "$image" &&
    [ -z "$(image_label "$image" "$LABEL_NS.recipe")" ]; then
    log "$image: exists and was not built here: kept"
    return 0
  fi
  bin=$(build_binary "$name" "$mod" "$ver" "$pkg")
  build_image "$name" "$mod" "$ver" "$bin" "$image" "$recipe"
}

crds() {
  local dir out=$TARN_IMAGES_OUT/crds
  dir=$(module_dir "$CRD_MODULE" "$CRD_VERSION")
  [ -n "$dir" ] && [ -d "$dir/config/crd" ] || die "no config/crd in $CRD_MODULE@$CRD_VERSION"
  rm -rf "$out"
  mkdir -p "$out"
  cp "$dir"/config/crd/*.yaml "$out/"
  chmod -R u+w "$out"
  printf '%s@%s config/crd\n' "$CRD_MODULE" "$CRD_VERSION" >"$out/SOURCE"
  log "snapshot CRDs ($CRD_MODULE@$CRD_VERSION): $out"
  echo "$out"
}

main() {
  mkdir -p "$TARN_IMAGES_CACHE/tmp"
  # The CRDs alone need no docker and no root: `make crds`.
  if [ "${1:-}" = crds ]; then
    crds
    return 0
  fi
  need_root
  local s
  for s in "${SIDECARS[@]}"; do
    sidecar "$s"
  done
  # The module copies are only needed while building.
  rm -rf "$SRC_DIR"
  crds >/dev/null
}

main "$@"
