#!/usr/bin/env bash
# build-image.sh — build, or find in the cache, the kernel + initramfs that
# test/vm/run.sh boots to run LVM tests (the host kernel has no device-mapper).
#
# Output: one line on stdout, the image directory, which holds
#   vmlinux          Debian's kernel as an uncompressed ELF (booted via its PVH entry)
#   initramfs.cpio   uncompressed newc archive: /init, LVM, mkfs, util-linux, modules
#   kver             the kernel release, e.g. 6.1.0-56-amd64
# Progress and errors go to stderr.
#
# Cache layout, under ${TARN_VM_CACHE:-${XDG_CACHE_HOME:-/var/cache}/tarn-vm}
# (~/.cache instead of /var/cache for a user who cannot write there):
#   debs/                      the kernel and busybox-static .debs (downloaded once)
#   <kver>-<hash>/             one image; <hash> covers this script, init, lvm.conf,
#                              the two .debs and the versions of the host packages
#                              copied in. Editing the harness or upgrading lvm2
#                              gives a new hash, hence a rebuild; otherwise the
#                              image is reused (the check costs ~0.05 s).
#
# Environment:
#   TARN_VM_CACHE          cache root (see above)
#   TARN_VM_REBUILD=1      rebuild even if the image is cached
#   TARN_VM_KERNEL_DEB     path of a linux-image-*.deb to use instead of Debian 12's
#   TARN_VM_EXTRA_BINS     more host executables to copy in, e.g. "jq sgdisk"
#
# Needs root the first time on a fresh machine: missing host packages are
# installed with apt-get (only when a tool is missing; nothing is done otherwise).
set -euo pipefail

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# /var/cache for root; a user without write access there gets ~/.cache.
default_cache=/var/cache
[ -w "$default_cache" ] || default_cache=$HOME/.cache
CACHE=${TARN_VM_CACHE:-${XDG_CACHE_HOME:-$default_cache}/tarn-vm}

say() { echo "build-image: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# 1. Host tools. The guest runs the host's own binaries (copied with their
#    libraries), so host and guest use the same lvm2 and e2fsprogs versions.
# ---------------------------------------------------------------------------

# tool -> Debian package that provides it
declare -A HOST_TOOL=(
  [qemu-system-x86_64]=qemu-system-x86
  [lvm]=lvm2
  [dmsetup]=dmsetup
  [thin_check]=thin-provisioning-tools
  [mkfs.ext4]=e2fsprogs
  [mkfs.xfs]=xfsprogs
  [blkid]=util-linux
  [fsfreeze]=util-linux
  [setpriv]=util-linux
  [flock]=util-linux
  [losetup]=mount
  [modprobe]=kmod
  [depmod]=kmod
  [cpio]=cpio
  [xz]=xz-utils
  [dash]=dash
)

has_tool() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

install_host_packages() {
  local missing=() t
  for t in "${!HOST_TOOL[@]}"; do has_tool "$t" || missing+=("${HOST_TOOL[$t]}"); done
  # qboot (tiny firmware that jumps straight to the kernel) ships in qemu-system-data.
  [ -f /usr/share/qemu/qboot.rom ] || missing+=(qemu-system-data)
  [ ${#missing[@]} -eq 0 ] && return 0

  local pkgs
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  [ "$(id -u)" = 0 ] || die "missing host packages, run as root: apt-get install --no-install-recommends $pkgs"
  say "installing $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs > /dev/null
}
install_host_packages

# Packages whose executables (all of */bin and */sbin) go into the guest.
COPY_PKGS="lvm2 dmsetup thin-provisioning-tools e2fsprogs xfsprogs util-linux mount kmod dash bash"
# Not worth their size or meaningless without daemons: xfs_scrub pulls in
# 37 MB of ICU; the LVM daemons and report tools need services we do not run.
SKIP_BIN_RE='/(xfs_scrub|xfs_scrub_all|lvmpolld|lvmdump|lvmsadc|lvmsar|fsck\.cramfs|mkfs\.cramfs|e4defrag)$'

# Kernel modules to ship. modprobe --show-depends adds their dependencies and
# soft dependencies (e.g. crc32c before libcrc32c). Only the 9p and dm ones are
# loaded at boot; ext4, xfs, loop, dm-zero... load on demand through /sbin/modprobe.
MODULES="virtio_pci virtio_blk 9pnet_virtio 9p
  dm-mod dm-thin-pool dm-snapshot dm-zero dm-mirror loop
  ext4 xfs crc32c-intel crc32c_generic"

# ---------------------------------------------------------------------------
# 2. The .debs: Debian 12's kernel and busybox-static, fetched with
#    `apt-get download` (no installation: the host keeps its own kernel).
# ---------------------------------------------------------------------------
mkdir -p "$CACHE/debs"

newest_deb() { # glob -> newest matching .deb in the cache, or nothing
  compgen -G "$CACHE/debs/$1" | sort -V | tail -n 1 || true
}

apt_download() { # package
  # The package lists may never have been fetched on a fresh machine.
  if ! apt-cache show "$1" >/dev/null 2>&1; then
    say "apt-get update (no package list knows $1)"
    apt-get update -qq >&2
  fi
  say "downloading $1"
  # Sandbox::User=root: _apt may not be allowed to write into the cache dir,
  # and apt would warn about downloading unsandboxed.
  (cd "$CACHE/debs" && apt-get download -qq -o APT::Sandbox::User=root "$1" >&2) ||
    die "apt-get download $1 failed"
}

kernel_deb=${TARN_VM_KERNEL_DEB:-$(newest_deb 'linux-image-[0-9]*.deb')}
if [ -z "$kernel_deb" ]; then
  # linux-image-amd64 is a metapackage; its Depends names the real kernel
  # package (linux-image-6.1.0-NN-amd64). Once downloaded, the kernel stays
  # pinned: delete $CACHE/debs/linux-image-* to follow Debian's updates.
  apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq >&2
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a kernel package"
  apt_download "$kpkg"
  kernel_deb=$(newest_deb 'linux-image-[0-9]*.deb')
fi
busybox_deb=$(newest_deb 'busybox-static_*.deb')
if [ -z "$busybox_deb" ]; then
  apt_download busybox-static
  busybox_deb=$(newest_deb 'busybox-static_*.deb')
fi
[ -f "$kernel_deb" ] && [ -f "$busybox_deb" ] || die "kernel or busybox .deb missing"

# Kernel release from the package name: linux-image-6.1.0-56-amd64 -> 6.1.0-56-amd64.
kver=$(basename "$kernel_deb"); kver=${kver%%_*}; kver=${kver#linux-image-}

# ---------------------------------------------------------------------------
# 3. Cache lookup.
# ---------------------------------------------------------------------------
hash=$( {
  cat "$VM_DIR/build-image.sh" "$VM_DIR/init" "$VM_DIR/lvm.conf"
  basename "$kernel_deb"; basename "$busybox_deb"
  # shellcheck disable=SC2086
  dpkg-query -W $COPY_PKGS libc6
  echo "${TARN_VM_EXTRA_BINS:-}"
} | sha256sum | cut -c1-12)
IMG="$CACHE/$kver-$hash"

cached() { [ -z "${TARN_VM_REBUILD:-}" ] && [ -f "$IMG/ok" ]; }
if cached; then echo "$IMG"; exit 0; fi

# Parallel go test packages all call us at once: build once, the others wait
# and then find the image.
exec 8>"$CACHE/.lock"
flock 8
if cached; then echo "$IMG"; exit 0; fi

say "building $IMG"
start=$(date +%s.%N)
WORK=$(mktemp -d "$CACHE/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------------------
# 4. Kernel: unpack the .deb, index its modules, pull vmlinux out of vmlinuz.
# ---------------------------------------------------------------------------
dpkg-deb -x "$kernel_deb" "$WORK/kernel"
[ -d "$WORK/kernel/lib/modules/$kver" ] || die "$kernel_deb has no lib/modules/$kver"
# The .deb ships no modules.dep (its postinst generates it); modprobe needs it.
depmod -b "$WORK/kernel" "$kver"

# Why not boot vmlinuz (bzImage) directly: its decompressor would inflate
# ~60 MB of kernel inside the guest, which is slow under TCG emulation. QEMU
# can boot the uncompressed ELF through its PVH note (CONFIG_PVH=y in Debian),
# so decompress it here instead. The payload sits after the setup code; find
# it by the compressor's magic bytes (as scripts/extract-vmlinux does) and keep
# the first candidate that decompresses to an ELF file.
unpack_vmlinux() {
  local vmlinuz="$WORK/kernel/boot/vmlinuz-$kver" i off
  # (bash strings cannot hold NUL, so xz's magic is cut short before its \0.)
  local magics=($'\xfd7zXZ' $'\x28\xb5\x2f\xfd' $'\x1f\x8b\x08')
  local tools=('xz -dc' 'zstd -dc' 'gzip -dc')
  for i in 0 1 2; do
    for off in $(LC_ALL=C grep -obUaF -- "${magics[$i]}" "$vmlinuz" | cut -d: -f1); do
      tail -c "+$((off + 1))" "$vmlinuz" | ${tools[$i]} > "$WORK/vmlinux" 2>/dev/null || true
      [ "$(head -c 4 "$WORK/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] && return 0
    done
  done
  return 1
}
unpack_vmlinux || die "could not find the compressed kernel inside vmlinuz-$kver"

# ---------------------------------------------------------------------------
# 5. Root filesystem tree, laid out merged-/usr like Debian 12.
# ---------------------------------------------------------------------------
ROOT="$WORK/root"
mkdir -p "$ROOT"/usr/{bin,sbin,lib/x86_64-linux-gnu,lib64} "$ROOT"/{etc/lvm,proc,sys,dev,run,tmp,mnt,root}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$ROOT/$d"; done

declare -A copied
# copy_in PATH: copy a host file to the same path in the tree (through the
# merged-/usr symlinks). A symlink is kept as a symlink and its target copied
# too; an ELF file brings along every library ldd lists.
copy_in() {
  local f=$1 lib
  [ -n "${copied[$f]:-}" ] && return 0
  copied[$f]=1
  [ -e "$f" ] || return 0
  cp -P --parents "$f" "$ROOT"
  if [ -L "$f" ]; then
    copy_in "$(readlink -f "$f")"
    return 0
  fi
  if [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    for lib in $(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
      copy_lib "$lib"
    done
  fi
}
# copy_lib PATH: a shared library, dereferenced, under the name the loader uses.
copy_lib() {
  [ -n "${copied[$1]:-}" ] && return 0
  copied[$1]=1
  cp -L --parents "$1" "$ROOT"
}

# shellcheck disable=SC2086
for f in $(dpkg -L $COPY_PKGS | grep -E '^(/usr)?/s?bin/[^/]+$' | grep -vE "$SKIP_BIN_RE" | sort -u); do
  copy_in "$f"
done
for t in ${TARN_VM_EXTRA_BINS:-}; do
  p=$(command -v "$t" || true); [ -n "$p" ] || die "TARN_VM_EXTRA_BINS: $t not found on the host"
  copy_in "$p"
done
# All of glibc's own libraries (not gconv), so a cgo test binary that needs
# e.g. libresolv finds it: the guest has the same glibc as the host compiler.
for f in $(dpkg -L libc6 | grep -E '^(/usr)?/lib(64)?/([^/]+/)?[^/]+\.so(\.[0-9]+)*$'); do
  [ -f "$f" ] && copy_lib "$f"
done

# busybox fills the gaps (cat, cp, sleep, stty, poweroff, ...). It never
# replaces a real tool copied above: Go code and the CSI driver expect
# util-linux mount/losetup/blkid behaviour, not busybox's.
dpkg-deb -x "$busybox_deb" "$WORK/busybox"
cp "$WORK/busybox/bin/busybox" "$ROOT/usr/bin/busybox"
for applet in $("$ROOT/usr/bin/busybox" --list); do
  [ -e "$ROOT/usr/bin/$applet" ] || [ -e "$ROOT/usr/sbin/$applet" ] || ln -s busybox "$ROOT/usr/bin/$applet"
done
ln -sfn dash "$ROOT/usr/bin/sh"   # as on Debian; xfs_info and friends are sh scripts

# Kernel modules with their dependencies, plus a fresh index for the guest's modprobe.
for m in $MODULES; do
  modprobe -d "$WORK/kernel" -S "$kver" --show-depends "$m" || die "module $m not in kernel $kver"
done | awk '$1 == "insmod" { print $2 }' | sort -u | while read -r ko; do
  rel=${ko#"$WORK/kernel/"}
  mkdir -p "$ROOT/$(dirname "$rel")"
  cp "$ko" "$ROOT/$rel"
done
cp "$WORK/kernel/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$kver/"
depmod -b "$ROOT" "$kver"

# Configuration.
cp "$VM_DIR/lvm.conf" "$ROOT/etc/lvm/lvm.conf"
cp /etc/mke2fs.conf "$ROOT/etc/mke2fs.conf"   # Debian's mkfs.ext4 defaults
echo 'root:x:0:0:root:/root:/bin/sh' > "$ROOT/etc/passwd"
printf 'root:x:0:\ndisk:x:6:\n' > "$ROOT/etc/group"
ln -s ../proc/self/mounts "$ROOT/etc/mtab"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost\n' > "$ROOT/etc/hosts"
install -m 0755 "$VM_DIR/init" "$ROOT/init"

# Uncompressed on purpose: the kernel unpacks a plain cpio at memcpy speed,
# while gunzip/unzstd would run under emulation and cost more than they save.
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$WORK/initramfs.cpio"

# Publish atomically, then keep only the three newest images.
mkdir "$WORK/img"
mv "$WORK/vmlinux" "$WORK/initramfs.cpio" "$WORK/img/"
echo "$kver" > "$WORK/img/kver"
touch "$WORK/img/ok"
rm -rf "$IMG"
mv "$WORK/img" "$IMG"
ls -1dt "$CACHE"/*-*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf

say "built in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s:" \
  "kernel $kver, initramfs $(du -m "$IMG/initramfs.cpio" | cut -f1) MB"
echo "$IMG"
