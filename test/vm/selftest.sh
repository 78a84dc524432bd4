#!/bin/sh
# selftest.sh — checks, inside the test VM, the LVM and filesystem operations
# Tarn's LVM backend relies on. Run from the module root:
#
#   test/vm/run.sh -- test/vm/selftest.sh        (or: make vm-selftest)
#
# Every step prints the guest time it finished at, so slow steps stand out.
# Any failing step ends the script with a non-zero status.
set -eu

[ -n "${TARN_VM:-}" ] || { echo "selftest.sh runs inside the VM: test/vm/run.sh -- $0" >&2; exit 2; }
vg=${TARN_TEST_VG:?TARN_TEST_VG is empty: the self-test needs the volume group}

t0=$(cut -d' ' -f1 /proc/uptime)
step() { awk -v t0="$t0" -v what="$*" '{ printf "  %6.2fs  %s\n", $1 - t0, what }' /proc/uptime; }
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "selftest: kernel $(uname -r), $(lvm version | sed -n 's/^ *LVM version: *//p'), vg $vg"

lvcreate -qq -y --type thin-pool -L 2g -n pool "$vg" --addtag tarn-pool
step "thin pool"
lvcreate -qq -y --thin -V 1g -n vol1 "$vg/pool" --addtag tarn-volume --addtag "tarn-id=vol1"
step "thin LV (1g virtual) with tags"
mkfs.ext4 -q -F "/dev/$vg/vol1"
step "mkfs.ext4"
mkdir -p /mnt/vol1 /mnt/snap1
mount "/dev/$vg/vol1" /mnt/vol1
step "mount (loads ext4)"
echo "before snapshot" > /mnt/vol1/data
dd if=/dev/urandom of=/mnt/vol1/blob bs=1M count=8 2>/dev/null
sync
step "write 8 MiB + sync"

fsfreeze --freeze /mnt/vol1
fsfreeze --unfreeze /mnt/vol1
step "fsfreeze + unfreeze"

# A thin snapshot of the mounted origin: the dm suspend it involves freezes and
# thaws the filesystem by itself, so the snapshot is consistent.
lvcreate -qq -y --snapshot -n snap1 "$vg/vol1" --addtag tarn-snapshot --addtag "tarn-id=snap1"
step "thin snapshot of the mounted origin, with tags"
echo "after snapshot" > /mnt/vol1/data

# Thin snapshots are created with the activation-skip flag; -K overrides it.
lvchange -qq -ay -K "$vg/snap1"
mount -o ro "/dev/$vg/snap1" /mnt/snap1
[ "$(cat /mnt/snap1/data)" = "before snapshot" ] || fail "snapshot holds '$(cat /mnt/snap1/data)'"
cmp -s /mnt/vol1/blob /mnt/snap1/blob || fail "snapshot blob differs from origin"
umount /mnt/snap1
step "snapshot content checked"

# The report the backend will parse. Check it names our LVs and tags.
lvs --reportformat json --units b --nosuffix \
  -o lv_name,lv_size,lv_tags,pool_lv,origin,data_percent,lv_attr "$vg" > /tmp/lvs.json
cat /tmp/lvs.json
for want in '"lv_name":"pool"' '"lv_name":"vol1"' '"lv_name":"snap1"' \
            '"lv_size":"1073741824"' 'tarn-id=vol1' 'tarn-id=snap1' '"origin":"vol1"' '"pool_lv":"pool"'; do
  tr -d ' \n' < /tmp/lvs.json | grep -qF -- "$want" || fail "lvs JSON lacks $want"
done
step "lvs --reportformat json"

# Known kernel 6.1 behaviour, reported but not asserted: a snapshot while the
# origin's filesystem is frozen by FIFREEZE fails (dm's own freeze collides
# with the user's; kernels from ~6.6 nest them). A backend must not freeze
# and then snapshot; dm's suspend already gives consistency.
fsfreeze --freeze /mnt/vol1
if lvcreate -qq -y --snapshot -n frozen "$vg/vol1" 2>/tmp/frozen.err; then
  echo "  note: snapshot of a frozen filesystem works on $(uname -r)"
  lvremove -qq -y "$vg/frozen"
else
  echo "  note: snapshot of a frozen filesystem fails on $(uname -r): $(grep -m1 -o 'suspend.*' /tmp/frozen.err || head -n1 /tmp/frozen.err)"
fi
fsfreeze --unfreeze /mnt/vol1
step "probe: snapshot while frozen"

umount /mnt/vol1
lvremove -qq -y "$vg/snap1" "$vg/vol1" "$vg/pool"
[ -z "$(lvs --noheadings -o lv_name "$vg")" ] || fail "LVs left after lvremove"
step "umount + lvremove"
echo "selftest: OK"
