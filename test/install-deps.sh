#!/usr/bin/env bash
# Installs the OS packages that Tarn's tests need, only when something is
# missing, so that a warm machine pays nothing and a fresh Debian gets all.
set -euo pipefail

declare -A need=(
  [mkfs.ext4]=e2fsprogs
  [tune2fs]=e2fsprogs
  [filefrag]=e2fsprogs
  [mkfs.xfs]=xfsprogs
  [xfs_admin]=xfsprogs
  [xfs_growfs]=xfsprogs
  [mkfs.btrfs]=btrfs-progs
  [losetup]=util-linux
  [blkid]=util-linux
  [fsfreeze]=util-linux
  [mount]=mount
  [findmnt]=util-linux
  [make]=make
  # The race detector (make test-race) needs cgo.
  [gcc]=gcc
)

missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "install-deps: installing $pkgs"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
