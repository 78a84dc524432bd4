#!/usr/bin/env bash
# Substitutes for the images the Kubernetes storage e2e tests run, made with
# no registry and loaded into the kind cluster under the exact names the
# e2e framework asks for (k8s.io/kubernetes test/utils/image/manifest.go):
#
#   registry.k8s.io/e2e-test-images/busybox:1.37.0-1       Debian's busybox-static
#   registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7    the local Debian slim image
#   registry.k8s.io/e2e-test-images/nginx:1.14-4           the local Debian slim image
#   registry.k8s.io/e2e-test-images/agnhost:2.56           busybox + agnhost built from the module
#
# The storage tests only run shell commands (sh, dd, md5sum, mount, stat, ls,
# grep, sleep...) in busybox/jessie-dnsutils/nginx, and agnhost's own
# subcommands (mounttest, pause...) in agnhost. jessie-dnsutils and nginx
# need GNU coreutils: the block-mode multiVolume tests write with
# `dd oflag=nocache`, which busybox's dd refuses.
# registry.k8s.io/pause:3.10.1 is already in the node image. Each image carries a recipe label: an
# unchanged recipe is not rebuilt; `kind load` skips nodes that have it.
#
# Usage: images.sh [build|load|all]     (build needs build-e2e.sh's agnhost)
source "$(dirname "$0")/../kind/lib.sh"

E2E_BIN_DIR=${E2E_BIN_DIR:-$TARN_KIND_CACHE/e2e-test-$K8S_VERSION}
IMAGES_RECIPE_VERSION=1
E2E_REG=registry.k8s.io/e2e-test-images
BUSYBOX_IMAGE=$E2E_REG/busybox:1.37.0-1
DEBIAN_ALIASES=("$E2E_REG/jessie-dnsutils:1.7" "$E2E_REG/nginx:1.14-4")
DEBIAN_SLIM=$LOCAL_PREFIX/debian:$DEBIAN_SUITE-slim
AGNHOST_IMAGE=$E2E_REG/agnhost:2.56

# busybox_rootfs DIR: busybox-static from the Debian mirror (apt-get download,
# cached by version) with every applet linked in /bin, and the few files a
# container expects.
busybox_rootfs() {
  local dir=$1 debdir=$TARN_KIND_CACHE/e2e-images ver deb
  ver=$(apt-cache policy busybox-static | sed -n 's/^ *Candidate: //p')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    apt-get update -qq
    ver=$(apt-cache policy busybox-static | sed -n 's/^ *Candidate: //p')
  fi
  mkdir -p "$debdir"
  deb=$(find "$debdir" -name "busybox-static_*${ver#*:}_*.deb" | head -n1)
  if [ -z "$deb" ]; then
    (cd "$debdir" && apt-get download -qq -o APT::Sandbox::User=root "busybox-static=$ver" >&2)
    deb=$(find "$debdir" -name "busybox-static_*${ver#*:}_*.deb" | head -n1)
  fi
  [ -n "$deb" ] || die "apt-get download busybox-static failed"
  local x; x=$(mktemp -d)
  dpkg-deb -x "$deb" "$x"
  mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev}
  chmod 1777 "$dir/tmp"
  install -m 0755 "$x/bin/busybox" "$dir/bin/busybox"
  rm -rf "$x"
  local a
  for a in $("$dir/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$dir/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
  echo "$deb"
}

# import DIR TAG RECIPE CHANGE...: docker import DIR as TAG with a recipe label.
import() {
  local dir=$1 tag=$2 recipe=$3; shift 3
  local changes=(--change "LABEL $LABEL_NS.recipe=$recipe") c
  for c in "$@"; do changes+=(--change "$c"); done
  tar -C "$dir" --numeric-owner --owner=0 --group=0 -c . | docker import "${changes[@]}" - "$tag" >/dev/null
}

build() {
  [ -x "$E2E_BIN_DIR/agnhost" ] || die "$E2E_BIN_DIR/agnhost missing: run build-e2e.sh first"
  image_exists "$DEBIAN_SLIM" || die "$DEBIAN_SLIM missing: run make images-base"
  local t
  for t in "${DEBIAN_ALIASES[@]}"; do docker tag "$DEBIAN_SLIM" "$t"; done
  local recipe debver
  debver=$(apt-cache policy busybox-static | sed -n 's/^ *Candidate: //p')
  recipe=$(printf '%s\n' "$IMAGES_RECIPE_VERSION" "$debver" "$(sha256sum <"$E2E_BIN_DIR/agnhost")" \
    "$(sed -n '/^busybox_rootfs()/,/^}/p' "$0")" | sha256sum | cut -c1-16)
  local all_fresh=1
  for t in "$BUSYBOX_IMAGE" "$AGNHOST_IMAGE"; do
    [ "$TARN_IMAGES_REFRESH" != 1 ] && [ "$(image_label "$t" "$LABEL_NS.recipe")" = "$recipe" ] || all_fresh=0
  done
  if [ $all_fresh = 1 ]; then log "e2e images: cached (recipe $recipe)"; return 0; fi
  local work; work=$(mktemp -d "$TARN_KIND_CACHE/tmp/e2eimg.XXXXXX")
  log "busybox rootfs from $(basename "$(busybox_rootfs "$work/rootfs")")"
  import "$work/rootfs" "$BUSYBOX_IMAGE" "$recipe" 'CMD ["sh"]'
  # agnhost: the image's layout (/agnhost, /agnhost-2, /uploads, the user
  # and group the image defines) on the busybox rootfs.
  install -m 0755 "$E2E_BIN_DIR/agnhost" "$work/rootfs/agnhost"
  ln -s agnhost "$work/rootfs/agnhost-2"
  mkdir -p "$work/rootfs/uploads"
  echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$work/rootfs/etc/passwd"
  printf 'user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >>"$work/rootfs/etc/group"
  import "$work/rootfs" "$AGNHOST_IMAGE" "$recipe" 'ENTRYPOINT ["/agnhost"]' 'CMD ["pause"]'
  rm -rf "$work"
  log "e2e images: built (recipe $recipe)"
}

load() {
  "$KIND_BIN" get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER" || die "no kind cluster $KIND_CLUSTER (make kind-up)"
  # kind load skips the nodes that already hold the same image ID.
  "$KIND_BIN" load docker-image --name "$KIND_CLUSTER" "$BUSYBOX_IMAGE" "${DEBIAN_ALIASES[@]}" "$AGNHOST_IMAGE"
}

need_root
case ${1:-all} in
  build) step "e2e images" build ;;
  load) step "kind load e2e images" load ;;
  all) step "e2e images" build; step "kind load e2e images" load ;;
  *) die "usage: $0 [build|load|all]" ;;
esac
