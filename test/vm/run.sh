#!/usr/bin/env bash
# run.sh — run one command as root inside a throw-away QEMU VM that has
# device-mapper, the LVM tools and a fresh volume group, and exit with the
# command's exit status. The host kernel here has no device-mapper, so LVM
# tests cannot run on it directly.
#
#   test/vm/run.sh [options] [--] COMMAND [ARG...]
#
# As go test's runner (go test appends the test binary and its -test.* flags):
#   go test -exec "$PWD/test/vm/run.sh --" ./pkg/backend/lvm/
# (Give an absolute path: go test starts the runner in the package directory.)
#
# Options:
#   -c N       vCPUs (default 1, env TARN_VM_CPUS). Under TCG a second vCPU
#              mostly slows the boot; go test's parallel packages use the cores.
#   -m MIB     memory in MiB (default 1536, env TARN_VM_MEM). /tmp in the
#              guest is a tmpfs and counts against it.
#   -n N       number of virtio disks (default 1, env TARN_VM_DISKS), all PVs
#              of the volume group
#   -d SIZE    size of each sparse disk, truncate(1) syntax (default 16G, env
#              TARN_VM_DISK_SIZE); only written blocks use host space
#   -s DIR     share one more host directory (repeatable)
#
# What the command sees:
#   - cwd = the host's cwd. The module root (nearest go.mod above the cwd, else
#     the cwd itself) is shared read-write over 9p at the same path; so is the
#     directory of COMMAND when it lies outside (go test's $WORK/b001/).
#   - TARN_TEST_VG (default tarnvg) is a new VG over all disks; set it empty
#     to get bare disks. TARN_TEST_DISKS lists the disks, TARN_VM=1 is set.
#   - every TARN_* variable of the host, plus the names in TARN_VM_PASSENV
#     (default: $DEFAULT_PASSENV below). Nothing else: PATH, HOME and TMPDIR
#     are the guest's (TMPDIR=/tmp, a tmpfs).
#   - stdin is /dev/null; stdout and stderr both arrive on run.sh's stdout,
#     live.
#
# Exit status: the command's; 125 when the VM itself failed (image build,
# QEMU, boot, vgcreate, timeout): then the tail of the console is printed.
#
# Other environment:
#   TARN_VM_TIMEOUT   seconds before the VM is killed (default 3600)
#   TARN_VM_KEEP=1    keep the run directory (console.log, disks) and say where
#   TARN_VM_DEBUG=1   also stream the kernel console to stderr; implies KEEP
#   TARN_VM_APPEND    extra kernel command line
#   TARN_VM_9P_OPTS   extra 9p mount options for the shares, e.g. cache=loose
#   TARN_VM_MODULES   modules loaded at boot (default: $DEFAULT_MODULES below)
#   TARN_VM_ACCEL     tcg (default) or kvm where real hardware virtualization works
# and those of build-image.sh (TARN_VM_CACHE, TARN_VM_REBUILD...).
set -uo pipefail

DEFAULT_PASSENV="GOTRACEBACK GODEBUG GOMAXPROCS GOGC GOMEMLIMIT GORACE GOCOVERDIR"
DEFAULT_MODULES="virtio_blk dm-mod dm-thin-pool dm-snapshot"
VM_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)

say() { echo "tarn-vm: $*" >&2; }
usage() { sed -n '/^# run.sh/,/^set -uo/{/^set/d; s/^# \{0,1\}//; p}' "${BASH_SOURCE[0]}" >&2; exit 125; }

cpus=${TARN_VM_CPUS:-1} mem=${TARN_VM_MEM:-1536}
ndisks=${TARN_VM_DISKS:-1} disk_size=${TARN_VM_DISK_SIZE:-16G}
extra_shares=()
while [ $# -gt 0 ]; do
  case $1 in
    -c) cpus=$2; shift 2 ;;
    -m) mem=$2; shift 2 ;;
    -n) ndisks=$2; shift 2 ;;
    -d) disk_size=$2; shift 2 ;;
    -s) extra_shares+=("$2"); shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) say "unknown option $1"; usage ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage

# --- image -------------------------------------------------------------------
img=$("$VM_DIR/build-image.sh") || { say "building the VM image failed"; exit 125; }

# --- run directory: disks, control files, console log --------------------------
# A run.sh killed with SIGKILL (go test does that to a hung test) cannot
# clean up; remove such leftovers, recognised by their owner being gone.
for d in "${TMPDIR:-/tmp}"/tarn-vm.*; do
  [ -f "$d/owner" ] && ! kill -0 "$(cat "$d/owner")" 2>/dev/null && rm -rf "$d"
done
run=$(mktemp -d "${TMPDIR:-/tmp}/tarn-vm.XXXXXX") || exit 125
[ -n "${TARN_VM_KEEP:-}${TARN_VM_DEBUG:-}" ] || echo $$ > "$run/owner"
qemu_pid="" watchdog_pid="" tail_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
finish() {
  [ -n "$qemu_pid" ] && { kill -KILL "$qemu_pid"; wait "$qemu_pid"; } 2>/dev/null
  [ -n "$watchdog_pid" ] && kill "$watchdog_pid" 2>/dev/null
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
  if [ -n "${TARN_VM_KEEP:-}${TARN_VM_DEBUG:-}" ]; then say "run directory kept: $run"; else rm -rf "$run"; fi
}
trap finish EXIT
# Any of these ends the VM (finish kills QEMU). go test sends SIGQUIT when its
# own -timeout has long expired.
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 131' QUIT; trap 'exit 143' TERM

# Single-quote a string for the guest's sh.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# --- shares: module root, extra dirs, the command's directory -------------------
cwd=$(pwd -P)
root=$cwd
while [ "$root" != / ] && [ ! -f "$root/go.mod" ]; do root=$(dirname "$root"); done
[ -f "$root/go.mod" ] || root=$cwd
shares=("$root")
for d in "${extra_shares[@]}"; do
  shares+=("$(cd "$d" 2>/dev/null && pwd -P)") || { say "-s $d: no such directory"; exit 125; }
done
under_share() { local s; for s in "${shares[@]}"; do [[ "$1/" == "$s"/* ]] && return 0; done; return 1; }

prog=$1; shift
if [[ "$prog" == */* ]]; then
  # A path: make it absolute (physical, as the guest mounts physical paths)
  # and share its directory if no share holds it. For go test that is
  # $WORK/b001/, which also receives -test.coverprofile and testlog output.
  [ -e "$prog" ] || { say "$prog: no such file"; exit 125; }
  pdir=$(cd "$(dirname "$prog")" && pwd -P)
  prog="$pdir/$(basename "$prog")"
  under_share "$pdir" || shares+=("$pdir")
fi
# A coverage directory passed in for `go build -cover` binaries must be
# writable in the guest too.
if [[ " ${TARN_VM_PASSENV:-$DEFAULT_PASSENV} " == *" GOCOVERDIR "* ]] && [ -d "${GOCOVERDIR:-}" ]; then
  d=$(cd "$GOCOVERDIR" && pwd -P)
  under_share "$d" || shares+=("$d")
fi
# A share mounted over one of the guest's own directories would hide it
# (a share of /tmp would also turn the guest's TMPDIR into slow 9p).
for s in "${shares[@]}"; do
  case $s in
    /|/tmp|/run|/dev|/proc|/sys|/usr|/etc|/bin|/sbin|/lib|/lib64|/root)
      say "cannot share $s with the guest (it has its own); run from a subdirectory"; exit 125 ;;
  esac
done

# Mount parents before children: sort by length.
i=0
while read -r s; do
  echo "s$i $s"
  i=$((i + 1))
done < <(printf '%s\n' "${shares[@]}" | sort -u | awk '{ print length, $0 }' | sort -n | cut -d' ' -f2-) > "$run/shares"

{
  echo "TARN_VM_CWD=$(shq "$cwd")"
  echo "TARN_TEST_VG=$(shq "${TARN_TEST_VG-tarnvg}")"
  echo "TARN_VM_MODULES=$(shq "${TARN_VM_MODULES:-$DEFAULT_MODULES}")"
  echo "TARN_VM_9P_OPTS=$(shq "${TARN_VM_9P_OPTS:-}")"
} > "$run/config"

# Environment for the command: TARN_* and the allow-list.
{
  for name in $(compgen -e | grep '^TARN_') ${TARN_VM_PASSENV:-$DEFAULT_PASSENV}; do
    [ "$name" = TARN_TEST_VG ] && continue   # the guest's own, see config
    [ -n "${!name+set}" ] && echo "export $name=$(shq "${!name}")"
  done
} > "$run/env"

{
  printf 'exec %s' "$(shq "$prog")"
  for a in "$@"; do printf ' %s' "$(shq "$a")"; done
  echo
} > "$run/cmd"

# --- QEMU ----------------------------------------------------------------------
accel=${TARN_VM_ACCEL:-tcg}
kernel_args=(
  console=ttyS0 quiet loglevel=4
  # A panic (e.g. init failing) reboots at once, and -no-reboot turns that
  # into QEMU exiting, instead of a VM that hangs until the timeout.
  panic=-1
  # Skip work nobody needs here and that is slow to emulate: PS/2 probing,
  # CPU bug mitigations, crypto self-tests, audit, AppArmor, the TSC watchdog.
  i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd
  mitigations=off cryptomgr.notests audit=0 apparmor=0 tsc=reliable nowatchdog
  8250.nr_uarts=2 rdinit=/init
)
# shellcheck disable=SC2206 # split on purpose: several kernel parameters
kernel_args+=(${TARN_VM_APPEND:-})
# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
qemu=(
  qemu-system-x86_64
  -accel "$accel" -smp "$cpus" -m "$mem"
  # -cpu max offers SSE4.2, so the crc32c-intel module loads (ext4, xfs and
  # dm-persistent-data use crc32c).
  -cpu "$([ "$accel" = kvm ] && echo host || echo max)"
  # q35 has HPET and the ACPI PM timer to calibrate the TSC against; qboot
  # instead of SeaBIOS jumps to the kernel's PVH entry without probing disks
  # and option ROMs.
  -machine q35 -bios /usr/share/qemu/qboot.rom
  -nodefaults -no-user-config -display none -no-reboot
  -kernel "$img/vmlinux" -initrd "$img/initramfs.cpio" -append "${kernel_args[*]}"
  -chardev "file,id=console,path=$run/console.log" -serial chardev:console
  # signal=off: a ^C in the terminal goes to run.sh, which stops QEMU.
  -chardev stdio,id=output,signal=off -serial chardev:output
  -fsdev "local,id=tarnctl,path=${run//,/,,},security_model=none"
  -device virtio-9p-pci,fsdev=tarnctl,mount_tag=tarnctl
)
while read -r tag path; do
  # security_model=none: the host files keep plain ownership (root here),
  # no xattr mapping; the guest's root writes as QEMU's user.
  # (A comma inside a QEMU option value is written as two.)
  qemu+=(-fsdev "local,id=$tag,path=${path//,/,,},security_model=none"
         -device "virtio-9p-pci,fsdev=$tag,mount_tag=$tag")
done < "$run/shares"
for ((i = 0; i < ndisks; i++)); do
  truncate -s "$disk_size" "$run/disk$i.img" || exit 125
  # cache=unsafe: the disk is deleted afterwards, never wait for a host
  # fsync. discard=unmap: lvremove/blkdiscard give the space back.
  qemu+=(-drive "if=none,id=disk$i,file=$run/disk$i.img,format=raw,cache=unsafe,discard=unmap"
         -device "virtio-blk-pci,drive=disk$i")
done

if [ -n "${TARN_VM_DEBUG:-}" ]; then
  : > "$run/console.log"
  tail -n +1 -f "$run/console.log" >&2 &
  tail_pid=$!
fi

# QEMU dies with run.sh even if run.sh is SIGKILLed (setpriv --pdeathsig),
# so no orphan VM keeps burning a core.
setpriv --pdeathsig KILL -- "${qemu[@]}" < /dev/null &
qemu_pid=$!
setpriv --pdeathsig KILL -- sleep "${TARN_VM_TIMEOUT:-3600}" &
watchdog_pid=$!
# (stderr of wait: bash would report "Killed" for a job it reaps.)
wait -n "$qemu_pid" "$watchdog_pid" 2>/dev/null
if kill -0 "$qemu_pid" 2>/dev/null; then
  say "timeout: the VM ran longer than ${TARN_VM_TIMEOUT:-3600} s"
  kill -KILL "$qemu_pid"
fi
wait "$qemu_pid" 2>/dev/null; qemu_rc=$?
qemu_pid=""

status=$(cat "$run/status" 2>/dev/null)
if ! [[ "$status" =~ ^[0-9]+$ ]]; then
  say "the VM ended without an exit status (QEMU exited $qemu_rc); console:"
  tail -n 30 "$run/console.log" | sed 's/^/  | /' >&2
  exit 125
fi
exit "$status"
