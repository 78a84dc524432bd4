#!/usr/bin/env bash
# lvm-vm.sh — the LVM thin-pool row of the snapshot-cost measurement. The
# host kernel has no device-mapper, so the bench's lvm backend runs inside
# the project's VM (test/vm): tarn and the bench are built here (static, the
# guest runs them from the shared module directory), the bench makes a
# thin pool in the VM's volume group and measures snapshot and restore of
# volumes holding 10 MiB, 1 GiB and 4 GiB, and its figures are then merged
# into test/bench/results (latest.json, latest.md, snapshot-vs-size.png).
#
#   test/bench/lvm-vm.sh            # full sizes, then merge into test/bench/results
#   test/bench/lvm-vm.sh --smoke    # toy sizes, nothing merged: checks the harness
#
# The thin pool must hold the largest volume, its snapshot and its restore
# at their virtual sizes (Tarn counts them so): 13 GiB for 4 GiB of data, in
# the VM's 16 GiB default disk. TARN_VM_DISK_SIZE (or more disks with
# TARN_VM_DISKS) gives more room; only what is written takes host space
# (about 5 GiB at full size). Extra bench flags: BENCH_FLAGS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

mode=full
[ "${1:-}" = --smoke ] && mode=smoke
out=_output/bench-lvm-$mode
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
mkdir -p _output
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$version" -o _output/tarn ./cmd/tarn
CGO_ENABLED=0 go build -trimpath -o _output/bench ./test/bench
rm -rf "$out"

args=(--tarn _output/tarn --backend lvm --plot=false --out "$out")
[ "$mode" = smoke ] && args+=(--smoke)
# shellcheck disable=SC2206 # BENCH_FLAGS is a list of flags
args+=(${BENCH_FLAGS:-})
status=0
TARN_VM_DISK_SIZE=${TARN_VM_DISK_SIZE:-16G} test/vm/run.sh -- _output/bench "${args[@]}" || status=$?
# 3: a target was missed; the figures are written all the same.
if [ "$status" != 0 ] && [ "$status" != 3 ]; then
  echo "lvm-vm: the bench failed in the VM (status $status)" >&2
  exit "$status"
fi
if [ "$mode" = full ]; then
  go run ./test/bench --merge "$out/latest.json" --out test/bench/results
fi
exit "$status"
