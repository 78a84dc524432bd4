#!/usr/bin/env bash
# Assembles the root file system of Tarn's image in DEST: the programs of
# runtime-programs as this Debian stage of the Dockerfile has them, the
# shared libraries and dynamic loader they load (as ldd resolves them), the
# data files they read, and the empty directories they write in. Nothing
# else: the image is FROM scratch plus DEST plus /tarn, so that a container
# of it has no shell and no package manager.
#
#   runtime-rootfs.sh LIST DEST
#
# Paths are copied where they really are (merged /usr: /usr/sbin/lvm, not
# /sbin/lvm) and the top-level directory links are made again, so that a
# program finds its helpers and libraries by the same paths as in Debian.
set -euo pipefail

list=$1
dest=$2
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C

die() { echo "runtime-rootfs: $*" >&2; exit 1; }

declare -A copied=()

# copy PATH: PATH into DEST at its real directory, and if it is a link,
# what it points to as well.
copy() {
  local dir base src target
  dir=$(readlink -f "$(dirname "$1")")
  base=$(basename "$1")
  src=$dir/$base
  [ -z "${copied[$src]:-}" ] || return 0
  [ -e "$src" ] || [ -L "$src" ] || die "$1 does not exist"
  copied[$src]=1
  mkdir -p "$dest$dir"
  cp -a "$src" "$dest$dir/"
  if [ -L "$src" ]; then
    target=$(readlink "$src")
    case $target in /*) ;; *) target=$dir/$target ;; esac
    copy "$target"
  fi
}

# libraries PROGRAM: the loader and every library PROGRAM loads, each as
# ldd finds it; a library ldd cannot find fails the build here rather than
# the program in production.
libraries() {
  local out
  if ! out=$(ldd "$1" 2>&1); then
    case $out in *"not a dynamic executable"*) return 0 ;; esac
    die "ldd $1: $out"
  fi
  case $out in *"not found"*) die "ldd $1: $out" ;; esac
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

mkdir -p "$dest"
n=0
while read -r name _; do
  case $name in "" | "#"*) continue ;; esac
  path=$(command -v "$name") || die "$name is not installed in this stage (runtime-programs lists it)"
  copy "$path"
  while read -r lib; do
    copy "$lib"
  done < <(libraries "$(readlink -f "$path")")
  n=$((n + 1))
done <"$list"
[ "$n" -gt 0 ] || die "$list lists no program"

# The defaults compiled into mke2fs lack what Debian's mke2fs.conf turns on
# (64bit, metadata_csum...); lvm reads lvm.conf and its profiles unless
# LVM_SYSTEM_DIR points elsewhere (the LVM deploy does).
copy /etc/mke2fs.conf
copy /etc/lvm

# mount-utils probes umount in a new directory under /tmp; LVM makes its
# lock directory under /run/lock (the LVM deploy mounts the host's there).
install -d -m 1777 "$dest/tmp"
install -d -m 0755 "$dest/run/lock"
# What the mount checks of e2fsprogs and xfsprogs fall back to, as the
# Debian image has it.
ln -s /proc/mounts "$dest/etc/mtab"

for top in bin sbin lib lib64; do
  if [ -L "/$top" ] && [ ! -e "$dest/$top" ]; then
    ln -s "$(readlink "/$top")" "$dest/$top"
  fi
done
echo "runtime-rootfs: $n programs, $(find "$dest" -type f | wc -l) files, $(du -sh "$dest" | cut -f1)"
