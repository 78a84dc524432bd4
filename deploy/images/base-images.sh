#!/usr/bin/env bash
# Base images made without any container registry:
#
#   tarn-local/debian:bookworm-slim         minbase Debian (mmdebstrap + docker import),
#                                           also tagged debian:bookworm-slim when that
#                                           name is free
#   tarn-local/debian-build:bookworm        + ca-certificates, git (what the Go builder
#                                           needs to reach the module proxy)
#   tarn-local/tarn-runtime-base:bookworm   + the tools Tarn runs (mkfs, losetup, lvm...),
#                                           so the Tarn image builds with no apt at all
#   tarn-local/golang:<go version>-bookworm debian-build + the host's Go toolchain,
#                                           also tagged as the Dockerfile's GO_IMAGE
#                                           default (golang:1.26-bookworm) when free
#
# Each image carries a dev.tarn.images.recipe label (a hash of what it is made
# of); an image whose label matches is kept, so a second run costs seconds.
# TARN_IMAGES_REFRESH=1 rebuilds them (new Debian point release, say).
source "$(dirname "$0")/lib.sh"

# Bump when the way the rootfs images are made changes, so cached ones are
# rebuilt.
ROOTFS_RECIPE_VERSION=2

# The packages the runtime stage of the Dockerfile installs; read from the
# Dockerfile itself so the two lists cannot drift apart.
runtime_packages() {
  sed -n 's/^ *for p in \(.*\); do.*/\1/p' "$REPO_ROOT/Dockerfile" | head -n1
}

# Defaults of the Dockerfile's build arguments (the names we alias to).
dockerfile_default() { sed -n "s/^ARG $1=//p" "$REPO_ROOT/Dockerfile" | head -n1; }

# rootfs_image TAG "PKG,PKG,..." DESCRIPTION: build TAG from a minbase
# mmdebstrap tree plus the given packages, unless an image made from the same
# recipe exists.
rootfs_image() {
  local tag=$1 include=$2 desc=$3
  local recipe
  recipe=$(printf '%s\n' "$ROOTFS_RECIPE_VERSION" "$DEBIAN_SUITE" "$DEBIAN_MIRROR" \
    "$DEBIAN_SECURITY_MIRROR" "$include" "$(cat "$IMAGES_DIR/apt-slim.conf")" | sha256sum | cut -c1-16)
  if fresh "$tag" "$LABEL_NS.recipe" "$recipe"; then
    log "$tag: cached (debian $(image_label "$tag" "$LABEL_NS.debian-version"), built $(image_label "$tag" "$LABEL_NS.built"))"
    return 0
  fi
  log "$tag: mmdebstrap $DEBIAN_SUITE minbase${include:+ + $include}"
  local work tar ver built
  mkdir -p "$TARN_IMAGES_CACHE/tmp"
  work=$(mktemp -d "$TARN_IMAGES_CACHE/tmp/rootfs.XXXXXX")
  tar=$work/rootfs.tar
  local args=(
    --variant=minbase
    --mode=root
    --format=tar
    # Like the official slim images: no documentation or translations, and
    # the same filters stay in force for packages installed later.
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --aptopt='APT::Install-Recommends "false"'
    --aptopt='APT::Install-Suggests "false"'
    # Merged /usr made with directory symlinks, as debootstrap (and so the
    # official images) does, instead of the usrmerge package, which would
    # pull perl (50 MB) into every image.
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    # After every package is in: apt's cleaning policy for later layers.
    --customize-hook="upload $IMAGES_DIR/apt-slim.conf /etc/apt/apt.conf.d/apt-slim.conf"
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log'
    --customize-hook="cat \"\$1\"/etc/debian_version > '$work/debian_version'"
  )
  [ -n "$include" ] && args+=(--include="$include")
  # mmdebstrap prints its progress on stderr; keep it short unless it fails.
  if ! mmdebstrap "${args[@]}" "$DEBIAN_SUITE" "$tar" \
      "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" \
      "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main" \
      "deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main" >"$work/log" 2>&1; then
    tail -n 40 "$work/log" >&2
    rm -rf "$work"
    die "mmdebstrap failed for $tag"
  fi
  ver=$(cat "$work/debian_version")
  built=$(date -u +%Y-%m-%dT%H:%MZ)
  docker import \
    --change 'CMD ["bash"]' \
    --change "LABEL $LABEL_NS.recipe=$recipe $LABEL_NS.debian-suite=$DEBIAN_SUITE $LABEL_NS.debian-version=$ver $LABEL_NS.built=$built $LABEL_NS.packages=\"${include:-minbase}\" org.opencontainers.image.description=\"$desc\"" \
    "$tar" "$tag" >/dev/null
  rm -rf "$work"
  log "$tag: built (debian $ver)"
}

golang_image() {
  local goroot gover want tag recipe base_id public
  goroot=$(go env GOROOT)
  gover=$(go env GOVERSION)            # go1.26.8
  gover=${gover#go}
  want=$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$REPO_ROOT/go.mod")
  if [ "$(printf '%s\n%s\n' "$want" "$gover" | sort -V | head -n1)" != "$want" ]; then
    die "host Go $gover is older than go.mod's go $want: install a newer Go in $goroot"
  fi
  public=$(dockerfile_default GO_IMAGE)
  tag=$LOCAL_PREFIX/golang:$gover-$DEBIAN_SUITE
  base_id=$(docker image inspect -f '{{.Id}}' "$LOCAL_PREFIX/debian-build:$DEBIAN_SUITE")
  # The small part of the build context: the Dockerfile and the CAs this
  # machine adds to Debian's (what lets the builder reach the module proxy
  # through a proxy that re-signs HTTPS).
  local ctx nca
  mkdir -p "$TARN_IMAGES_CACHE/tmp"
  ctx=$(mktemp -d "$TARN_IMAGES_CACHE/tmp/golang.XXXXXX")
  cp "$IMAGES_DIR/golang.Dockerfile" "$ctx/"
  nca=$(bash "$IMAGES_DIR/host-extra-cas.sh" "$ctx/extra-cas")
  nca=${nca:-0}
  recipe=$(printf '%s\n' "$gover" "$base_id" "$(go env GOPROXY)" "$(go env GOSUMDB)" \
    "$(cd "$ctx" && find . -type f | sort | xargs cat | sha256sum)" |
    sha256sum | cut -c1-16)
  if fresh "$tag" "$LABEL_NS.recipe" "$recipe"; then
    log "$tag: cached"
    rm -rf "$ctx"
  else
    log "$tag: Go $gover from $goroot on $LOCAL_PREFIX/debian-build:$DEBIAN_SUITE"
    # The context is a tar stream: the small files from a temporary
    # directory plus GOROOT renamed to go/, with no copy of the toolchain on disk.
    local top
    top=$(basename "$goroot")
    [ "$nca" -gt 0 ] && log "$tag: also trusting $nca CA certificate(s) this machine adds to Debian's"
    tar -c -C "$ctx" . \
        -C "$(dirname "$goroot")" --transform "s,^$top\(/\|\$\),go\1," "$top" |
      DOCKER_BUILDKIT=0 docker build -q -f golang.Dockerfile \
        --build-arg BASE="$LOCAL_PREFIX/debian-build:$DEBIAN_SUITE" \
        --build-arg GO_VERSION="$gover" \
        --build-arg GOPROXY="$(go env GOPROXY)" \
        --build-arg GOSUMDB="$(go env GOSUMDB)" \
        --label "$LABEL_NS.recipe=$recipe" \
        --label "$LABEL_NS.go-version=$gover" \
        --label "$LABEL_NS.built=$(date -u +%Y-%m-%dT%H:%MZ)" \
        -t "$tag" - >"$ctx.log" 2>&1 || { cat "$ctx.log" >&2; die "building $tag failed"; }
    rm -rf "$ctx" "$ctx.log"
    docker run --rm "$tag" go version >&2
  fi
  case $public in
    golang:"${gover%.*}"-*) ;;
    *) warn "the Dockerfile's GO_IMAGE default is $public but the host has Go $gover: aliasing anyway";;
  esac
  alias_public "$tag" "$public"
}

main() {
  need_root
  local pkgs public
  pkgs=$(runtime_packages)
  [ -n "$pkgs" ] || die "could not read the runtime package list from $REPO_ROOT/Dockerfile"
  rootfs_image "$LOCAL_PREFIX/debian:$DEBIAN_SUITE-slim" "" \
    "Debian $DEBIAN_SUITE minbase, built locally with mmdebstrap"
  public=$(dockerfile_default BASE_IMAGE)
  alias_public "$LOCAL_PREFIX/debian:$DEBIAN_SUITE-slim" "$public"
  rootfs_image "$LOCAL_PREFIX/debian-build:$DEBIAN_SUITE" "ca-certificates,git" \
    "Debian $DEBIAN_SUITE minbase + ca-certificates and git, base of the Go builder"
  rootfs_image "$LOCAL_PREFIX/tarn-runtime-base:$DEBIAN_SUITE" "${pkgs// /,}" \
    "Debian $DEBIAN_SUITE minbase + the tools Tarn runs ($pkgs)"
  golang_image
}

main "$@"
