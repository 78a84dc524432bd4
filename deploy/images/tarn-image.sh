#!/usr/bin/env bash
# Builds Tarn's image from the project's Dockerfile with the local base images
# and checks it: the version it prints, `serve --help` in a privileged
# container, and test/image on it (no shell, no package manager, no program
# but those of runtime-programs, and each of those with its libraries).
#
#   IMAGE            tag to build (default tarn:$VERSION, as `make image`)
#   VERSION          stamped into the binary (default: git describe)
#   GO_IMAGE         builder; default tarn-local/golang:<host Go>-bookworm
#   TARN_BASE_IMAGE  runtime base; default tarn-local/tarn-runtime-base:bookworm,
#                    which already holds the runtime packages so the build runs
#                    no apt-get. Set it to debian:bookworm-slim to build exactly
#                    what `make image` builds (apt-get inside the build).
#
# Unlike the other images it is rebuilt on every run: BuildKit's layer cache
# makes an unchanged tree cost seconds, and a changed one must not be skipped.
source "$(dirname "$0")/lib.sh"

VERSION=${VERSION:-$(git -C "$REPO_ROOT" describe --tags --always --dirty 2>/dev/null || echo dev)}
IMAGE=${IMAGE:-tarn:$VERSION}
TARN_BASE_IMAGE=${TARN_BASE_IMAGE:-$LOCAL_PREFIX/tarn-runtime-base:$DEBIAN_SUITE}
# Our builder for the host's Go (base-images.sh), rather than whatever holds
# the public name: it carries this machine's GOPROXY and extra CAs.
GO_IMAGE=${GO_IMAGE:-$LOCAL_PREFIX/golang:$(go env GOVERSION | sed 's/^go//')-$DEBIAN_SUITE}

# Extra `docker run` arguments for privileged containers on this machine:
# the tarn-runc runtime where host-setup.sh had to register it.
PRIV=()
if docker info --format '{{json .Runtimes}}' | jq -e 'has("tarn-runc")' >/dev/null; then
  PRIV=(--runtime=tarn-runc)
fi

build() {
  image_exists "$TARN_BASE_IMAGE" || die "$TARN_BASE_IMAGE is missing: run base-images.sh (make images-base) first"
  image_exists "$GO_IMAGE" || die "$GO_IMAGE is missing: run base-images.sh (make images-base) first"
  log "$IMAGE: docker build (GO_IMAGE=$GO_IMAGE, BASE_IMAGE=$TARN_BASE_IMAGE)"
  local logf; logf=$(mktemp "$TARN_IMAGES_CACHE/tmp/tarn-build.XXXXXX")
  # BuildKit: the Dockerfile uses RUN --mount (host-setup.sh made sure the
  # client can). GOPROXY/GOFLAGS are left to the builder image's defaults.
  if ! DOCKER_BUILDKIT=1 docker build --progress=plain \
      --build-arg VERSION="$VERSION" \
      --build-arg GO_IMAGE="$GO_IMAGE" \
      --build-arg BASE_IMAGE="$TARN_BASE_IMAGE" \
      --label "$LABEL_NS.base-image=$TARN_BASE_IMAGE" \
      -t "$IMAGE" "$REPO_ROOT" >"$logf" 2>&1; then
    tail -n 60 "$logf" >&2
    die "docker build of $IMAGE failed (full log: $logf)"
  fi
  rm -f "$logf"
}

verify() {
  local got
  got=$(docker run --rm "$IMAGE" version)
  [ "$got" = "$VERSION" ] || die "$IMAGE: 'version' printed '$got', want '$VERSION'"
  log "$IMAGE: version prints $got"

  if ! docker run --rm --privileged "${PRIV[@]}" "$IMAGE" serve --help >/dev/null 2>&1; then
    docker run --rm --privileged "${PRIV[@]}" "$IMAGE" serve --help 2>&1 | tail -n 5 >&2 || true
    die "$IMAGE: 'serve --help' in a privileged container failed"
  fi
  log "$IMAGE: 'serve --help' runs in a privileged container ${PRIV[*]}"

  local out
  if ! out=$(cd "$REPO_ROOT" && TARN_TEST_IMAGE=$IMAGE go test -count=1 -run '^TestImage' ./test/image/ 2>&1); then
    printf '%s\n' "$out" >&2
    die "$IMAGE: test/image failed"
  fi
  log "$IMAGE: no shell or package manager, only $(grep -cv -e '^#' -e '^$' "$IMAGES_DIR/runtime-programs") programs of runtime-programs, each with its libraries"
}

main() {
  need_root
  mkdir -p "$TARN_IMAGES_CACHE/tmp"
  build
  verify
}

main "$@"
