#!/bin/busybox sh
# meshd VM stage 1: PID 1 in the initramfs (built by xtask/src/vm/initramfs.rs).
# Mounts the host's / read-only over 9p with a tmpfs overlay on top, prepares the guest's mounts
# in it, and switch_roots into it to run the per-run script $RUN/guest.sh (written by qemu.rs).
# @KVER@ and @KMODDIR@ are filled in when the initramfs is built.
/bin/busybox mkdir -p /proc /sys /dev /host /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
	echo "meshd-init: $*"
	echo "MESHD_VM_INIT_FAILED: $*" > /dev/ttyS2
	poweroff -f
	sleep 10
}

RUN= OUT= KEEP=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	meshd.run=*) RUN="${arg#meshd.run=}" ;;
	meshd.out=*) OUT="${arg#meshd.out=}" ;;
	meshd.keep=*) KEEP="${arg#meshd.keep=}" ;;
	esac
done
[ -n "$RUN" ] && [ -n "$OUT" ] || fail "meshd.run= or meshd.out= missing from the kernel command line"

while read -r mod; do
	insmod "/modules/$mod" || fail "insmod $mod"
done < /modules.order

mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host \
	|| fail "mounting the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "mounting the overlay tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
	|| fail "mounting the overlay root"

R=/newroot
# Host paths the run needs (a checkout under /tmp, say) that the guest's own /tmp, /run and /dev
# would hide: moved aside, and back on top once those are mounted.
n=0
for p in $(echo "$KEEP" | tr ',' ' '); do
	mkdir -p "/keep/$n" && mount --bind "$R$p" "/keep/$n" || fail "keeping $p visible"
	n=$((n + 1))
done
mount -t proc proc $R/proc || fail "mounting /proc"
mount -t sysfs sysfs $R/sys || fail "mounting /sys"
mount -t devtmpfs devtmpfs $R/dev || fail "mounting /dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "mounting /tmp"
mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "mounting /run"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fail "mounting cgroup2"
mount -t bpf bpf $R/sys/fs/bpf || fail "mounting bpffs"
n=0
for p in $(echo "$KEEP" | tr ',' ' '); do
	mkdir -p "$R$p" && mount --move "/keep/$n" "$R$p" || fail "putting $p back"
	n=$((n + 1))
done
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null

mkdir -p "$R/usr/lib/modules/@KVER@"
mount --bind "/host@KMODDIR@" "$R/usr/lib/modules/@KVER@" || fail "bind-mounting the guest modules"
mkdir -p "$R$OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 meshdout "$R$OUT" \
	|| fail "mounting the writable out share at $OUT"

[ -f "$R$RUN/guest.sh" ] || fail "$RUN/guest.sh is not visible in the guest"
ip link set lo up
hostname meshd-vm
exec switch_root $R /bin/sh "$RUN/guest.sh"
fail "switch_root"
