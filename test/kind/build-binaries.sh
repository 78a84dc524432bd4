#!/usr/bin/env bash
# Every binary the kind harness needs, built from the Go module proxy (there
# is no registry or GitHub to download releases from) and cached by version
# under $TARN_KIND_CACHE:
#
#   kind-<v>/kind                        the kind CLI
#   kubernetes-<v>/{kubelet,kubeadm,kubectl,kube-apiserver,kube-controller-manager,
#                   kube-scheduler,kube-proxy}
#   aux-etcd-<v>-coredns-<v>-crictl-<v>/{etcd,coredns,pause,crictl}
#
# A directory that exists is complete (each is built in a temporary directory
# and renamed), so a second run costs nothing. TARN_IMAGES_REFRESH=1 rebuilds.
#
# Usage: build-binaries.sh [kind|kubernetes|aux|all]
source "$(dirname "$0")/lib.sh"

K8S_CMDS=(kubelet kubeadm kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
AUX_BINS=(etcd coredns pause crictl)

# cached DIR FILE...: true when every FILE exists in DIR and no refresh was asked for.
cached() {
  local dir=$1 f; shift
  [ "$TARN_IMAGES_REFRESH" = 1 ] && return 1
  for f in "$@"; do [ -x "$dir/$f" ] || return 1; done
}

# publish TMP DIR: atomically replace DIR by the finished TMP.
publish() { chmod 0755 "$1"; rm -rf "$2"; mv -T "$1" "$2"; }

kind_cli() {
  local dir; dir=$(dirname "$KIND_BIN")
  if cached "$dir" kind; then log "kind $KIND_VERSION: cached"; return 0; fi
  log "kind $KIND_VERSION: go install sigs.k8s.io/kind@$KIND_VERSION"
  local tmp; tmp=$(mktemp -d "$TARN_KIND_CACHE/tmp/kind.XXXXXX")
  # go install pkg@version builds outside any module: GOFLAGS must not carry -mod.
  (cd / && GOBIN=$tmp GOFLAGS='' GOTOOLCHAIN=local CGO_ENABLED=0 nice -n 10 \
    go install -trimpath -ldflags '-s -w' "sigs.k8s.io/kind@$KIND_VERSION")
  publish "$tmp" "$dir"
  "$KIND_BIN" version >&2
}

# Kubernetes from k8s.io/kubernetes@vX: that module's go.mod replaces its 31
# staging modules (k8s.io/api, client-go, ...) with ./staging/ directories that
# the module zip does not hold, so it cannot be `go install`ed. A throw-away
# module requires it and replaces each staging module with its published v0.X.Y
# twin instead.
kubernetes() {
  if cached "$K8S_BIN_DIR" "${K8S_CMDS[@]}"; then log "kubernetes $K8S_VERSION: cached"; return 0; fi
  local kmod staging=v0.${K8S_VERSION#v1.} minor work tmp
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  kmod=$(module_dir k8s.io/kubernetes "$K8S_VERSION")
  [ -n "$kmod" ] || die "go mod download k8s.io/kubernetes@$K8S_VERSION failed"
  work=$(mktemp -d "$TARN_KIND_CACHE/tmp/k8sbuild.XXXXXX")
  tmp=$(mktemp -d "$TARN_KIND_CACHE/tmp/k8sbin.XXXXXX")
  local edits=() kv
  edits+=(-go="$(go mod edit -json "$kmod/go.mod" | jq -r .Go)")
  edits+=(-require="k8s.io/kubernetes@$K8S_VERSION")
  while read -r kv; do edits+=(-godebug="$kv"); done < <(go mod edit -json "$kmod/go.mod" | jq -r '.Godebug[]? | "\(.Key)=\(.Value)"')
  while read -r kv; do edits+=(-replace="$kv=$kv@$staging"); done < <(
    go mod edit -json "$kmod/go.mod" | jq -r '.Replace[] | select(.New.Path | startswith("./staging/")) | .Old.Path')
  log "kubernetes $K8S_VERSION: $(( ${#edits[@]} - 2 )) go.mod edits (staging modules pinned to $staging)"
  (cd "$work" && go mod init local/k8sbuild >/dev/null 2>&1 && go mod edit "${edits[@]}")

  # The version variables are normally stamped by hack/lib/version.sh from git.
  # kubeadm derives the image tags it pulls and its version-skew checks from
  # them: left unset everything reports v0.0.0-master and kubeadm init fails.
  local ld="-s -w" pkg pkgs=()
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.gitTreeState=clean"
    ld+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for pkg in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$pkg"); done
  log "kubernetes $K8S_VERSION: resolving modules"
  (cd "$work" && go_env go list -deps "${pkgs[@]}" >/dev/null)
  log "kubernetes $K8S_VERSION: go build ${K8S_CMDS[*]} (the long one: ~7-14 min cold on 2 cores)"
  (cd "$work" && go_env go build -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}")
  "$tmp/kubeadm" version -o short | grep -qx "$K8S_VERSION" || die "kubeadm does not report $K8S_VERSION"
  publish "$tmp" "$K8S_BIN_DIR"
  rm -rf "$work"
  log "kubernetes $K8S_VERSION: $(du -sh "$K8S_BIN_DIR" | cut -f1) in $K8S_BIN_DIR"
}

# scratch_module DIR MODULE VERSION: a throw-away module in DIR requiring MODULE@VERSION.
scratch_module() {
  mkdir -p "$1"
  (cd "$1" && go mod init "local/$(basename "$1")" >/dev/null 2>&1 && go mod edit -require="$2@$3")
}

# etcd, coredns (only the plugins of kubeadm's Corefile), pause (the pod
# sandbox: a few lines of Go, upstream's is C) and crictl (kind's log export
# and debugging use it).
aux() {
  if cached "$AUX_BIN_DIR" "${AUX_BINS[@]}"; then log "etcd/coredns/pause/crictl: cached"; return 0; fi
  local work tmp
  work=$(mktemp -d "$TARN_KIND_CACHE/tmp/auxbuild.XXXXXX")
  tmp=$(mktemp -d "$TARN_KIND_CACHE/tmp/auxbin.XXXXXX")

  log "etcd $ETCD_VERSION"
  # go.etcd.io/etcd/server/v3's root package is the etcd command.
  scratch_module "$work/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  (cd "$work/etcd" && go_env go build -trimpath -ldflags '-s -w' -o "$tmp/etcd" go.etcd.io/etcd/server/v3)

  log "coredns $COREDNS_VERSION (plugins of kubeadm's Corefile only)"
  scratch_module "$work/coredns" github.com/coredns/coredns "$COREDNS_VERSION"
  {
    echo 'package main'
    echo
    echo 'import ('
    echo '	_ "github.com/coredns/coredns/core/dnsserver"'
    echo '	"github.com/coredns/coredns/coremain"'
    for p in cache errors forward health hosts kubernetes loadbalance log loop metrics ready reload; do
      echo "	_ \"github.com/coredns/coredns/plugin/$p\""
    done
    echo ')'
    echo
    echo 'func main() { coremain.Run() }'
  } >"$work/coredns/main.go"
  (cd "$work/coredns" && go_env go build -trimpath -ldflags '-s -w' -o "$tmp/coredns" .)

  log "pause"
  mkdir -p "$work/pause"
  (cd "$work/pause" && go mod init local/pause >/dev/null 2>&1)
  cat >"$work/pause/main.go" <<'GO'
// pause: the process holding a pod sandbox's namespaces. It waits for
// SIGINT/SIGTERM and reaps the zombies it inherits as PID 1.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
  (cd "$work/pause" && go_env go build -trimpath -ldflags '-s -w' -o "$tmp/pause" .)

  log "crictl $CRICTL_VERSION"
  (cd / && GOBIN=$tmp GOFLAGS='' GOTOOLCHAIN=local CGO_ENABLED=0 nice -n 10 go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION")

  publish "$tmp" "$AUX_BIN_DIR"
  rm -rf "$work"
  log "etcd/coredns/pause/crictl: $(du -sh "$AUX_BIN_DIR" | cut -f1) in $AUX_BIN_DIR"
}

main() {
  need_root
  mkdir -p "$TARN_KIND_CACHE/tmp"
  case ${1:-all} in
    kind) step "kind CLI $KIND_VERSION" kind_cli ;;
    kubernetes) step "kubernetes $K8S_VERSION binaries" kubernetes ;;
    aux) step "etcd, coredns, pause, crictl" aux ;;
    all)
      step "kind CLI $KIND_VERSION" kind_cli
      step "kubernetes $K8S_VERSION binaries" kubernetes
      step "etcd, coredns, pause, crictl" aux
      ;;
    *) die "usage: $0 [kind|kubernetes|aux|all]" ;;
  esac
}

main "$@"
