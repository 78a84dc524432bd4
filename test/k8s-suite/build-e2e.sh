#!/usr/bin/env bash
# Builds, from the Go module proxy, what the Kubernetes external storage suite
# needs and caches it by version under $TARN_KIND_CACHE:
#
#   e2e-test-<v>/e2e.test   k8s.io/kubernetes/test/e2e compiled with `go test -c`
#   e2e-test-<v>/agnhost    k8s.io/kubernetes/test/images/agnhost (for the image)
#   e2e-test-<v>/ginkgo     the ginkgo CLI of the version e2e.test links (to run
#                           e2e.test in parallel processes)
#
# Same throw-away module trick as test/kind/build-binaries.sh: k8s.io/kubernetes
# replaces its staging modules with ./staging/ directories the module zip does
# not hold, so a scratch module requires it and pins each staging module to its
# published v0.X.Y twin. A directory that exists is complete (built aside,
# renamed); TARN_IMAGES_REFRESH=1 rebuilds.
source "$(dirname "$0")/../kind/lib.sh"

E2E_BIN_DIR=${E2E_BIN_DIR:-$TARN_KIND_CACHE/e2e-test-$K8S_VERSION}

build() {
  if [ "$TARN_IMAGES_REFRESH" != 1 ] && [ -x "$E2E_BIN_DIR/e2e.test" ] && [ -x "$E2E_BIN_DIR/agnhost" ] &&
     [ -x "$E2E_BIN_DIR/ginkgo" ]; then
    log "e2e.test $K8S_VERSION: cached in $E2E_BIN_DIR"; return 0
  fi
  local kmod staging=v0.${K8S_VERSION#v1.} minor work tmp kv edits=()
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  kmod=$(module_dir k8s.io/kubernetes "$K8S_VERSION")
  [ -n "$kmod" ] || die "go mod download k8s.io/kubernetes@$K8S_VERSION failed"
  mkdir -p "$TARN_KIND_CACHE/tmp"
  work=$(mktemp -d "$TARN_KIND_CACHE/tmp/e2ebuild.XXXXXX")
  tmp=$(mktemp -d "$TARN_KIND_CACHE/tmp/e2ebin.XXXXXX")
  edits+=(-go="$(go mod edit -json "$kmod/go.mod" | jq -r .Go)")
  edits+=(-require="k8s.io/kubernetes@$K8S_VERSION")
  while read -r kv; do edits+=(-godebug="$kv"); done < <(go mod edit -json "$kmod/go.mod" | jq -r '.Godebug[]? | "\(.Key)=\(.Value)"')
  while read -r kv; do edits+=(-replace="$kv=$kv@$staging"); done < <(
    go mod edit -json "$kmod/go.mod" | jq -r '.Replace[] | select(.New.Path | startswith("./staging/")) | .Old.Path')
  (cd "$work" && go mod init local/e2ebuild >/dev/null 2>&1 && go mod edit "${edits[@]}")

  # The framework logs and compares the client version: stamp it as
  # hack/lib/version.sh would.
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.gitTreeState=clean"
    ld+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "e2e.test $K8S_VERSION: resolving modules"
  (cd "$work" && go_env go list -test -deps k8s.io/kubernetes/test/e2e k8s.io/kubernetes/test/images/agnhost \
    github.com/onsi/ginkgo/v2/ginkgo >/dev/null)
  log "e2e.test $K8S_VERSION: go test -c k8s.io/kubernetes/test/e2e (long: ~10-20 min cold on 2 cores)"
  (cd "$work" && go_env go test -c -trimpath -ldflags "$ld" -o "$tmp/e2e.test" k8s.io/kubernetes/test/e2e)
  log "agnhost: go build k8s.io/kubernetes/test/images/agnhost"
  (cd "$work" && go_env go build -trimpath -ldflags "$ld" -o "$tmp/agnhost" k8s.io/kubernetes/test/images/agnhost)
  log "ginkgo: go build github.com/onsi/ginkgo/v2/ginkgo (the version kubernetes requires)"
  (cd "$work" && go_env go build -trimpath -ldflags '-s -w' -o "$tmp/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
  "$tmp/e2e.test" --help >/dev/null 2>&1 || die "e2e.test does not run"
  publish() { chmod 0755 "$1"; rm -rf "$2"; mv -T "$1" "$2"; }
  publish "$tmp" "$E2E_BIN_DIR"
  rm -rf "$work"
  log "e2e.test $K8S_VERSION: $(du -sh "$E2E_BIN_DIR" | cut -f1) in $E2E_BIN_DIR"
}

need_root
step "e2e.test $K8S_VERSION" build
