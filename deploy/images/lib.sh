# Shared helpers for the deploy/images scripts. Sourced, never run.
# shellcheck shell=bash

set -euo pipefail

IMAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$IMAGES_DIR/../.." && pwd)

# Everything that is expensive to make again lives under one directory that
# survives `git clean` and fresh clones: sidecar binaries keyed by version,
# and the temporary rootfs tarballs while an image is being imported.
TARN_IMAGES_CACHE=${TARN_IMAGES_CACHE:-/var/cache/tarn-images}
# Build outputs the deploy/ manifests consume (CRDs), ignored by git.
TARN_IMAGES_OUT=${TARN_IMAGES_OUT:-$REPO_ROOT/_output}
# Set to 1 to rebuild images and binaries that already exist.
TARN_IMAGES_REFRESH=${TARN_IMAGES_REFRESH:-0}

# Debian release and mirrors used by mmdebstrap. deb.debian.org is the one
# package source this setup relies on (besides the Go module proxy).
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Our own names for the images we make. The public names (debian:..., golang:...)
# are only added as aliases when nothing else holds them.
LOCAL_PREFIX=${LOCAL_PREFIX:-tarn-local}
LABEL_NS=dev.tarn.images

log()  { printf '\033[1m[images]\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33m[images] WARNING:\033[0m %s\n' "$*" >&2; }
die()  { printf '\033[1;31m[images] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# step NAME CMD...: run a step and report its wall time.
step() {
  local name=$1 t0=$SECONDS; shift
  log "-- $name"
  "$@"
  log "-- $name done in $((SECONDS - t0))s"
}

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap, docker and apt need it)"; }

# apt_ensure PKG...: install the Debian packages that are missing, running
# apt-get update only when there is something to install.
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_label() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# fresh IMAGE [LABEL VALUE]: true when IMAGE exists (and carries LABEL=VALUE)
# and no refresh was asked for.
fresh() {
  [ "$TARN_IMAGES_REFRESH" = 1 ] && return 1
  image_exists "$1" || return 1
  [ $# -lt 3 ] || [ "$(image_label "$1" "$2")" = "$3" ]
}

# alias_public OURS PUBLIC: give OURS the public name PUBLIC unless some other
# image (a real pulled one, say) already holds that name. A public name that
# points at an older image of ours is moved along.
alias_public() {
  local ours=$1 public=$2 id_ours id_pub
  id_ours=$(docker image inspect -f '{{.Id}}' "$ours")
  if image_exists "$public"; then
    id_pub=$(docker image inspect -f '{{.Id}}' "$public")
    if [ "$id_pub" = "$id_ours" ]; then
      return 0
    elif [ -z "$(image_label "$public" "$LABEL_NS.recipe")" ]; then
      log "$public exists and is not ours: left as it is (using it)"
      return 0
    fi
  fi
  docker tag "$ours" "$public"
  log "tagged $ours as $public"
}
