#!/usr/bin/env bash
# Installs what the benchmark needs beyond the test dependencies (fio for
# the data path, gnuplot for the plot), and only when it is missing.
set -euo pipefail

pkgs=()
command -v fio >/dev/null 2>&1 || pkgs+=(fio)
# gnuplot-nox: the PNG (cairo) terminal without pulling in X11.
command -v gnuplot >/dev/null 2>&1 || pkgs+=(gnuplot-nox)
[ "${#pkgs[@]}" -eq 0 ] && exit 0

echo "bench install-deps: installing ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
