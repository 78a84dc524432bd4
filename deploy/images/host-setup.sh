#!/usr/bin/env bash
# Makes this machine able to build the images, doing only what is missing:
#   * Debian packages: docker.io (dockerd, containerd, runc), mmdebstrap, jq,
#     libcap2-bin (capsh), ca-certificates;
#   * a running dockerd (started in the background when nothing runs it);
#   * BuildKit for `docker build`: Tarn's Dockerfile uses RUN --mount. A docker
#     CLI >= 23 without the buildx plugin falls back to the legacy builder,
#     which rejects it, so the plugin is built from the Go module proxy and
#     installed in /usr/local/lib/docker/cli-plugins;
#   * where the capability bounding set is reduced, the runc-capbnd shim as the
#     extra docker runtime "tarn-runc", without which --privileged containers
#     cannot start on such a machine; with TARN_RUNC_DEFAULT=1 (the kind
#     harness, test/kind, sets it) also as docker's default runtime, because
#     kind starts its privileged node containers with no way to pick a runtime.
source "$(dirname "$0")/lib.sh"

BUILDX_VERSION=${BUILDX_VERSION:-v0.38.2}
BUILDX_MODULE=github.com/docker/buildx
CLI_PLUGINS=/usr/local/lib/docker/cli-plugins
SHIM=/usr/local/libexec/tarn/runc-capbnd
DAEMON_JSON=/etc/docker/daemon.json
TARN_RUNC_DEFAULT=${TARN_RUNC_DEFAULT:-0}

packages() {
  local want=(mmdebstrap jq libcap2-bin ca-certificates)
  # An engine from elsewhere (docker-ce, say) is used as it is.
  command -v dockerd >/dev/null || want+=(docker.io)
  apt_ensure "${want[@]}"
  command -v go >/dev/null || die "go not found in PATH (expected the host toolchain, e.g. /usr/local/go/bin)"
}

docker_up() {
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  if [ -d /run/systemd/system ] && systemctl cat docker.service >/dev/null 2>&1; then
    log "starting docker.service"
    systemctl start docker.service
  else
    # No init system to ask: run it detached from this shell, logging to a
    # file. fd 9 is images.sh's lock: dockerd must not inherit (and hold) it.
    log "starting dockerd in the background (log: /var/log/dockerd.log)"
    setsid -f dockerd </dev/null >>/var/log/dockerd.log 2>&1 9>&-
  fi
  local _
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  tail -n 20 /var/log/dockerd.log >&2 || true
  die "dockerd did not come up within 60s"
}

# cli_major: major version of the docker client.
cli_major() { docker version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1; }

buildkit() {
  if docker buildx version >/dev/null 2>&1; then
    return 0
  fi
  local major; major=$(cli_major)
  if [ -n "$major" ] && [ "$major" -lt 23 ]; then
    # Debian's docker.io 20.10 client: BuildKit is built in and used with
    # DOCKER_BUILDKIT=1, which the scripts and `make image` set.
    return 0
  fi
  local bin=$TARN_IMAGES_CACHE/bin/docker-buildx-$BUILDX_VERSION
  if [ ! -x "$bin" ]; then
    log "docker client $major has no buildx plugin: building $BUILDX_MODULE@$BUILDX_VERSION"
    local gobin; gobin=$(mktemp -d "$TARN_IMAGES_CACHE/tmp/buildx.XXXXXX")
    GOBIN=$gobin CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS='' nice -n 10 go install -trimpath \
      -ldflags "-s -w -X $BUILDX_MODULE/version.Version=$BUILDX_VERSION -X $BUILDX_MODULE/version.Package=$BUILDX_MODULE" \
      "$BUILDX_MODULE/cmd/buildx@$BUILDX_VERSION"
    mv "$gobin/buildx" "$bin"
    rm -rf "$gobin"
  fi
  install -D -m 0755 "$bin" "$CLI_PLUGINS/docker-buildx"
  docker buildx version >/dev/null || die "docker buildx does not work after installing $CLI_PLUGINS/docker-buildx"
  log "installed docker buildx $BUILDX_VERSION in $CLI_PLUGINS"
}

# The bounding set is full when it holds every capability the kernel knows.
bounding_set_reduced() {
  local bnd last
  bnd=$((16#$(awk '$1 == "CapBnd:" { print $2 }' /proc/self/status)))
  last=$(cat /proc/sys/kernel/cap_last_cap)
  [ "$bnd" -ne $(((1 << (last + 1)) - 1)) ]
}

# daemon_json JQ-FILTER [ARGS...]: edit /etc/docker/daemon.json and make
# dockerd reload it (SIGHUP re-reads runtimes and default-runtime; running
# containers are untouched).
daemon_json() {
  mkdir -p "$(dirname "$DAEMON_JSON")"
  [ -s "$DAEMON_JSON" ] || echo '{}' >"$DAEMON_JSON"
  jq "$@" "$DAEMON_JSON" >"$DAEMON_JSON.tmp"
  mv "$DAEMON_JSON.tmp" "$DAEMON_JSON"
  local pid; pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  [ -n "$pid" ] && kill -HUP "$pid"
}

# wait_docker_info GO-TEMPLATE JQ-TEST: until dockerd reports the change.
wait_docker_info() {
  local _
  for _ in $(seq 1 20); do
    docker info --format "$1" | jq -e "$2" >/dev/null && return 0
    sleep 0.5
  done
  return 1
}

privileged_runtime() {
  bounding_set_reduced || return 0
  if ! cmp -s "$IMAGES_DIR/runc-capbnd" "$SHIM"; then
    install -D -m 0755 "$IMAGES_DIR/runc-capbnd" "$SHIM"
  fi
  if ! docker info --format '{{json .Runtimes}}' | jq -e 'has("tarn-runc")' >/dev/null; then
    log "capability bounding set is reduced: registering $SHIM as docker runtime tarn-runc"
    daemon_json --arg p "$SHIM" '.runtimes["tarn-runc"] = {path: $p}'
    wait_docker_info '{{json .Runtimes}}' 'has("tarn-runc")' ||
      die "dockerd did not pick up the tarn-runc runtime from $DAEMON_JSON"
  fi
  [ "$TARN_RUNC_DEFAULT" = 1 ] || return 0
  [ "$(docker info --format '{{.DefaultRuntime}}')" = tarn-runc ] && return 0
  # Every container of the engine then goes through the shim; on this
  # machine it only removes capabilities that could not be granted anyway.
  log "making tarn-runc docker's default runtime (kind's privileged node containers need it)"
  daemon_json '.["default-runtime"] = "tarn-runc"'
  wait_docker_info '{{json .DefaultRuntime}}' '. == "tarn-runc"' ||
    die "dockerd did not switch its default runtime to tarn-runc ($DAEMON_JSON)"
}

main() {
  need_root
  mkdir -p "$TARN_IMAGES_CACHE/tmp" "$TARN_IMAGES_CACHE/bin"
  packages
  docker_up
  buildkit
  privileged_runtime
}

main "$@"
