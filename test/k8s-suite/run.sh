#!/usr/bin/env bash
# The Kubernetes "External Storage" e2e tests (k8s.io/kubernetes@$K8S_VERSION
# test/e2e/storage/external) against Tarn on the kind cluster of `make kind-up`.
#
#   1. build-e2e.sh: e2e.test, agnhost and ginkgo from the Go module proxy (cached)
#   2. images.sh: the test images (busybox, agnhost...) made locally, kind-loaded
#   3. two runs, each with its own log and JUnit report under $K8S_SUITE_OUT:
#        ext4  tarn-driver.yaml      every External Storage test (tarn-ext4 class)
#        xfs   tarn-driver-xfs.yaml  the tests that grow a filesystem, on tarn-xfs
#                                    (ext4 cannot grow here: see tarn-driver.yaml)
#   4. pass/fail/skip counts from the JUnit reports; exit 1 if a test failed
#
# Settings (environment):
#   K8S_SUITE_RUNS     runs to do, of "ext4 xfs" (default both)
#   K8S_SUITE_PROCS    parallel ginkgo processes of the ext4 run (default 3; xfs: 1)
#   K8S_SUITE_SLOW     1: run the [Slow] tests too (default 0)
#   K8S_SUITE_SKIP     ginkgo skip regexp (default: $DEFAULT_SKIP below)
#   K8S_SUITE_FOCUS    extra focus regexp ANDed in (default none), e.g. 'provisioning'
#   K8S_SUITE_TIMEOUT  ginkgo suite timeout per run (default 60m)
#   K8S_SUITE_OUT      output directory (default _output/k8s-suite)
#
# Usage: run.sh [all|build|images|test|report]   (default all)
source "$(dirname "$0")/../kind/lib.sh"

SUITE_DIR=$REPO_ROOT/test/k8s-suite
E2E_BIN_DIR=${E2E_BIN_DIR:-$TARN_KIND_CACHE/e2e-test-$K8S_VERSION}
K8S_SUITE_RUNS=${K8S_SUITE_RUNS:-ext4 xfs}
K8S_SUITE_PROCS=${K8S_SUITE_PROCS:-3}
K8S_SUITE_FOCUS=${K8S_SUITE_FOCUS:-}
K8S_SUITE_TIMEOUT=${K8S_SUITE_TIMEOUT:-60m}
K8S_SUITE_OUT=${K8S_SUITE_OUT:-$REPO_ROOT/_output/k8s-suite}

# Skipped by name (see README.md for why):
#   [Disruptive]  restart the kubelet or nodes (needs SSH to nodes)
#   [Serial]      need the cluster alone (another e2e may share it)
#   [Slow]        long (multiVolume, volume I/O, stress...): K8S_SUITE_SLOW=1 runs them
#   topology with immediate binding: Tarn provisions WaitForFirstConsumer
#                 claims only (per-node csi-provisioners without
#                 --node-deployment-immediate-binding): the claim stays Pending
#   Pre-provisioned Snapshot: a VolumeSnapshotContent the test makes by hand
#                 has no snapshot.storage.kubernetes.io/managed-by=<node>
#                 label, so no per-node csi-snapshotter takes it (distributed
#                 snapshotting); it never becomes ready
#   restoring snapshot to larger size pvc (xfs run; ext4 cannot grow here):
#                 its restore pod has no node selection, so it lands on either
#                 worker, and a restore on a node without the snapshot fails
#                 with NotFound, which csi-provisioner does not reschedule
#                 (see README.md: a Tarn issue)
DEFAULT_SKIP='\[Disruptive\]|\[Serial\]|\[Testpattern: Dynamic PV \(immediate binding\)\] topology'
DEFAULT_SKIP+='|\[Testpattern: Pre-provisioned Snapshot|restoring snapshot to larger size pvc'
[ "${K8S_SUITE_SLOW:-0}" = 1 ] || DEFAULT_SKIP+='|\[Slow\]'
K8S_SUITE_SKIP=${K8S_SUITE_SKIP:-$DEFAULT_SKIP}

# driver_of RUN / focus_of RUN
driver_of() { case $1 in ext4) echo "$SUITE_DIR/tarn-driver.yaml" ;; xfs) echo "$SUITE_DIR/tarn-driver-xfs.yaml" ;; *) die "unknown run $1" ;; esac; }
# The xfs run grows 1 GiB volumes to 2 GiB and more, all on the one node of
# ClientNodeName (a 4 GiB pool in kind): in parallel they run out of room
# (NodeExpandVolume: ResourceExhausted), so it runs them one at a time.
procs_of() { case $1 in xfs) echo 1 ;; *) echo "$K8S_SUITE_PROCS" ;; esac; }
focus_of() { case $1 in ext4) echo 'External.Storage' ;; xfs) echo 'External.Storage.*(volume-expand|restoring snapshot to larger size|expansion of pvcs created for ephemeral)' ;; esac; }

run_one() {
  local run=$1 out=$K8S_SUITE_OUT/$1 focus procs
  focus=$(focus_of "$run")
  procs=$(procs_of "$run")
  [ -n "$K8S_SUITE_FOCUS" ] && focus="$focus.*($K8S_SUITE_FOCUS)"
  rm -rf "$out"; mkdir -p "$out"
  log "run $run: focus '$focus', skip '$K8S_SUITE_SKIP', $procs processes, log $out/e2e.log"
  local t0=$SECONDS rc=0 pid
  # ginkgo runs e2e.test in K8S_SUITE_PROCS processes and merges their
  # reports; the framework writes the JUnit file (junit_01.xml) to -report-dir.
  # The tests' kubectl calls use the cluster's kubectl, not whatever is in PATH.
  nice -n 5 "$E2E_BIN_DIR/ginkgo" --procs="$procs" --timeout="$K8S_SUITE_TIMEOUT" \
    --focus="$focus" --skip="$K8S_SUITE_SKIP" --no-color -v --poll-progress-after=5m \
    --output-dir="$out" \
    "$E2E_BIN_DIR/e2e.test" -- \
    -kubeconfig="$KIND_KUBECONFIG" -kubectl-path="$KUBECTL_BIN" -provider=skeleton \
    -storage.testdriver="$(driver_of "$run")" \
    -report-dir="$out" -disable-log-dump \
    >"$out/e2e.log" 2>&1 &
  pid=$!
  # The ginkgo CLI leaves interrupts to its processes (a terminal signals the
  # whole group): pass ours on, so that they clean up (namespaces, volumes)
  # and still write the report.
  trap 'kill -INT $(pgrep -P '"$pid"') 2>/dev/null || true' INT TERM
  wait "$pid" || rc=$?
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || rc=$?; done
  trap - INT TERM
  echo "$((SECONDS - t0))" >"$out/duration"
  log "run $run: ginkgo exit $rc after $(( (SECONDS - t0) / 60 ))m$(( (SECONDS - t0) % 60 ))s"
}

# report: counts per run from junit_01.xml (External Storage specs only:
# the report lists every spec of e2e.test, the unselected ones as skipped).
report() {
  local run failed=0
  for run in $K8S_SUITE_RUNS; do
    python3 - "$K8S_SUITE_OUT/$run" "$run" <<'PY' || failed=1
import sys, os, xml.etree.ElementTree as ET
out, run = sys.argv[1], sys.argv[2]
f = os.path.join(out, "junit_01.xml")
if not os.path.exists(f):
    print(f"[{run}] no JUnit report in {out}: the run did not finish (see {out}/e2e.log)")
    sys.exit(1)
passed, failed, skipped, skipped_reasons = [], [], 0, {}
for tc in ET.parse(f).getroot().iter("testcase"):
    name = tc.get("name", "")
    if "External Storage" not in name:
        continue
    status = tc.get("status", "")
    sk = tc.find("skipped")
    if tc.find("failure") is not None or tc.find("error") is not None or status in ("failed", "panicked", "interrupted", "timedout", "aborted"):
        failed.append(name)
    elif sk is not None or status in ("skipped", "pending"):
        msg = (sk.get("message") if sk is not None else "") or ""
        if msg.startswith("skipped - "):  # skipped by the test itself (capability, pattern)
            skipped += 1
            reason = msg[len("skipped - "):].strip().splitlines()[0][:110]
            skipped_reasons[reason] = skipped_reasons.get(reason, 0) + 1
        # else: not selected by focus/skip
    else:
        passed.append(name)
dur = open(os.path.join(out, "duration")).read().strip() if os.path.exists(os.path.join(out, "duration")) else "?"
print(f"[{run}] passed {len(passed)}, failed {len(failed)}, skipped at run time {skipped} ({dur}s)")
for r, n in sorted(skipped_reasons.items(), key=lambda x: -x[1])[:15]:
    print(f"[{run}]   skip x{n}: {r}")
for n in failed:
    print(f"[{run}] FAIL: {n}")
sys.exit(1 if failed or not passed else 0)
PY
  done
  return $failed
}

test_runs() {
  [ -s "$KIND_KUBECONFIG" ] || die "no $KIND_KUBECONFIG: make kind-up first"
  "$KUBECTL_BIN" --kubeconfig "$KIND_KUBECONFIG" get storageclass tarn-ext4 tarn-xfs >/dev/null ||
    die "StorageClasses tarn-ext4/tarn-xfs missing: is Tarn deployed (make kind-up)?"
  if pgrep -f 'test/e2e' >/dev/null; then warn "a test/e2e run shares the cluster (its volumes take pool capacity too)"; fi
  local run
  for run in $K8S_SUITE_RUNS; do run_one "$run"; done
}

need_root
case ${1:-all} in
  build) bash "$SUITE_DIR/build-e2e.sh" ;;
  images) bash "$SUITE_DIR/images.sh" all ;;
  test) step "k8s external storage suite" test_runs; report ;;
  report) report ;;
  all)
    bash "$SUITE_DIR/build-e2e.sh"
    bash "$SUITE_DIR/images.sh" all
    step "k8s external storage suite" test_runs
    report
    ;;
  *) die "usage: $0 [all|build|images|test|report]" ;;
esac
