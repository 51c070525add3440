#!/bin/bash
# Nested harness for hull-vmm: boots Debian's generic kernel (linux-image-amd64, which ships
# kvm.ko + kvm-amd.ko) under QEMU TCG with `-cpu max` (emulated AMD SVM) as a throw-away test
# host, with an initramfs built here containing hull-vmm and the hull guest kernel/initramfs;
# inside, hull-vmm boots the hull guest on real (nested) KVM. Prints the result and timing
# lines from inside and exits non-zero if the guest did not come up.
#
# usage: test/nested/run.sh --hull-vmm PATH [--guest-dir DIR] [--vcpus N] [--timeout SECS]
#                           [--guest-cmdline ARGS] [--compare-qemu]
#   --compare-qemu: also boot the same guest with QEMU microvm (KVM, vhost-vsock) inside the
#   same test host and print both boot-to-agent-ready times (the benchmark).
#   --shmem-thp MODE: set the test host's /sys/kernel/mm/transparent_hugepage/shmem_enabled
#   (hull-vmm's guest RAM is a memfd, i.e. shmem; anonymous memory, QEMU's, uses `enabled`).
#   env: HULL_NESTED_CACHE (default /var/cache/hull-nested): downloaded kernel package
#        HULL_NESTED_LOG (default /tmp/hull-nested-last.log): test host output
#
# Needs: qemu-system-x86_64, busybox-static, cpio, apt-get (for `apt-get download`), gzip.
set -euo pipefail

HULL_VMM=""
GUEST_DIR=/var/lib/hull/guest
VCPUS=1
TIMEOUT=600
GUEST_CMDLINE="loglevel=4 8250.nr_uarts=1"
COMPARE_QEMU=0
SHMEM_THP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --hull-vmm) HULL_VMM="$2"; shift 2 ;;
        --guest-dir) GUEST_DIR="$2"; shift 2 ;;
        --vcpus) VCPUS="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --guest-cmdline) GUEST_CMDLINE="$2"; shift 2 ;;
        --compare-qemu) COMPARE_QEMU=1; shift ;;
        --shmem-thp) SHMEM_THP="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

die() { echo "nested: $*" >&2; exit 1; }
[ -n "$HULL_VMM" ] || die "--hull-vmm PATH is required"
[ -x "$HULL_VMM" ] || die "hull-vmm binary not found at $HULL_VMM"
for f in vmlinux initramfs.img; do
    [ -f "$GUEST_DIR/$f" ] || die "guest $f missing in $GUEST_DIR (build it with packaging/guest first)"
done
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed"
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] && file -L "$BUSYBOX" | grep -q "statically linked" || BUSYBOX=/bin/busybox
file -L "$BUSYBOX" | grep -q "statically linked" || die "busybox-static not installed"

CACHE=${HULL_NESTED_CACHE:-/var/cache/hull-nested}
mkdir -p "$CACHE"
WORK=$(mktemp -d /tmp/hull-nested.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# 1. The test host kernel: Debian's generic kernel package (cached).
PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$PKG" ] || die "cannot resolve linux-image-amd64 (apt-get update?)"
DEB=$(ls "$CACHE"/"$PKG"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$DEB" ]; then
    echo "nested: downloading $PKG" >&2
    (cd "$CACHE" && apt-get download "$PKG" >/dev/null 2>&1) || die "apt-get download $PKG failed"
    DEB=$(ls "$CACHE"/"$PKG"_*.deb | head -1)
fi
echo "nested: test host kernel package $(basename "$DEB")" >&2
dpkg-deb -x "$DEB" "$WORK/pkg"
KVER=$(ls "$WORK/pkg/lib/modules" | head -1)
VMLINUZ="$WORK/pkg/boot/vmlinuz-$KVER"

# 2. The test host's initramfs: busybox, KVM modules, hull-vmm (+ its libraries), the guest.
R="$WORK/root"
mkdir -p "$R"/{bin,dev,proc,sys,tmp,lib/modules,guest,lib64,usr/lib}
cp "$BUSYBOX" "$R/bin/busybox"
MODULES="irqbypass ccp kvm kvm-amd"
[ "$COMPARE_QEMU" = 1 ] && MODULES="$MODULES vhost_iotlb vhost vsock vmw_vsock_virtio_transport_common vhost_vsock"
for m in $MODULES; do
    f=$(find "$WORK/pkg/lib/modules/$KVER" -name "$m.ko*" | head -1)
    [ -n "$f" ] || die "module $m not in $PKG"
    case "$f" in
        *.xz) xz -dc "$f" > "$R/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" > "$R/lib/modules/$m.ko" ;;
        *) cp "$f" "$R/lib/modules/$m.ko" ;;
    esac
done
copy_with_libs() {
    cp "$1" "$R/bin/$2"
    for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
}
copy_with_libs "$HULL_VMM" hull-vmm
if [ "$COMPARE_QEMU" = 1 ]; then
    copy_with_libs "$(command -v qemu-system-x86_64)" qemu-system-x86_64
    mkdir -p "$R/usr/share"
    cp -rL /usr/share/qemu "$R/usr/share/qemu"
fi
cp "$GUEST_DIR/vmlinux" "$GUEST_DIR/initramfs.img" "$R/guest/"
cat > "$R/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $MODULES; do insmod /lib/modules/\$m.ko 2>/dev/null || echo "NESTED insmod \$m failed"; done
[ -e /dev/kvm ] || { echo "NESTED-RESULT no-kvm"; poweroff -f; }
[ -n "$SHMEM_THP" ] && echo "$SHMEM_THP" > /sys/kernel/mm/transparent_hugepage/shmem_enabled
echo "NESTED thp: \$(cat /sys/kernel/mm/transparent_hugepage/enabled) shmem: \$(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled)"
echo "NESTED kvm ready, uptime \$(cut -d' ' -f1 /proc/uptime)"
start=\$(cut -d' ' -f1 /proc/uptime)
HULL_VMM_LOG=info hull-vmm --kernel /guest/vmlinux --initramfs /guest/initramfs.img \
    --memory-mib 256 --vcpus $VCPUS --rng --console-log /tmp/console.log \
    --vsock-cid 3 --vsock-uds /tmp/agent.vsock \
    --cmdline "$GUEST_CMDLINE" > /tmp/vmm.log 2>&1 &
pid=\$!
( sleep $TIMEOUT; kill \$pid 2>/dev/null ) &
ready=""
cready=""
while kill -0 \$pid 2>/dev/null; do
    if [ -z "\$cready" ] && grep -q "hull-agent ready" /tmp/console.log 2>/dev/null; then
        cready=\$(cut -d' ' -f1 /proc/uptime)
    fi
    if [ -z "\$ready" ] && ok=\$(hull-vmm --probe-vsock /tmp/agent.vsock --probe-port 1024 2>/dev/null); then
        ready=\$(cut -d' ' -f1 /proc/uptime)
        echo "NESTED-READY agent answered '\$ok' on vsock port 1024 at host uptime \$ready (hull-vmm started \$start)"
        grep VmRSS /proc/\$pid/status | sed 's/^/NESTED-RSS /'
        awk '/^[0-9a-f]+-[0-9a-f]+ /{g=(\$0 ~ /hull-guest-ram/)} /^Rss:/{if(g) gk+=\$2; else vk+=\$2} END{print "NESTED-RSS-SPLIT guest_ram_kb=" gk " vmm_other_kb=" vk}' /proc/\$pid/smaps
    fi
    if [ -n "\$ready" ] && [ -n "\$cready" ]; then
        kill -TERM \$pid
        break
    fi
    sleep 0.1
done
wait \$pid; code=\$?
end=\$(cut -d' ' -f1 /proc/uptime)
echo "NESTED-HULL console-ready=\${cready:-none} start=\$start"
if [ -x /bin/qemu-system-x86_64 ]; then
    qstart=\$(cut -d' ' -f1 /proc/uptime)
    qemu-system-x86_64 -L /usr/share/qemu -M microvm,accel=kvm,acpi=off,rtc=off -cpu host -smp $VCPUS -m 256M \
        -nodefaults -no-user-config -nographic -no-reboot -serial file:/tmp/qconsole.log \
        -kernel /guest/vmlinux -initrd /guest/initramfs.img \
        -append "console=ttyS0 reboot=t panic=-1 $GUEST_CMDLINE" \
        -device vhost-vsock-device,guest-cid=3 > /tmp/qemu.log 2>&1 &
    qpid=\$!
    qready=""
    n=0
    while kill -0 \$qpid 2>/dev/null && [ \$n -lt $((TIMEOUT * 10)) ]; do
        if grep -q "hull-agent ready" /tmp/qconsole.log 2>/dev/null; then
            qready=\$(cut -d' ' -f1 /proc/uptime)
            grep VmRSS /proc/\$qpid/status | sed 's/^/NESTED-QEMU-RSS /'
            break
        fi
        n=\$((n + 1)); sleep 0.1
    done
    kill \$qpid 2>/dev/null; wait \$qpid
    echo "NESTED-QEMU start=\$qstart ready=\${qready:-none}"
    echo "NESTED ----- qemu console -----"; cat /tmp/qconsole.log; cat /tmp/qemu.log
fi
echo "NESTED ----- guest console -----"; cat /tmp/console.log
echo "NESTED ----- hull-vmm log -----"; cat /tmp/vmm.log
echo "NESTED-RESULT exit=\$code start=\$start ready=\${ready:-none} end=\$end"
poweroff -f
INIT
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/host-initrd.gz"

# 3. Boot the test host under TCG with emulated SVM.
echo "nested: booting test host ($KVER) under QEMU TCG -cpu max" >&2
t0=$(date +%s.%N)
timeout $((2 * TIMEOUT + 300)) qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 2048 \
    -kernel "$VMLINUZ" -initrd "$WORK/host-initrd.gz" \
    -append "console=ttyS0 quiet panic=-1" \
    -nographic -no-reboot -nodefaults -serial stdio > "$WORK/host.log" 2>&1 || true
t1=$(date +%s.%N)
LOG=${HULL_NESTED_LOG:-/tmp/hull-nested-last.log}
tr -d '\r' < "$WORK/host.log" | sed -n '/^NESTED/,$p' > "$LOG"
grep -a "^NESTED-" "$LOG" || true
echo "nested: full test-host output (guest console, hull-vmm log) in $LOG" >&2
echo "nested: test host wall time $(echo "$t1 - $t0" | bc) s" >&2
RESULT=$(grep -a "NESTED-RESULT" "$WORK/host.log" | tr -d '\r' || true)
[ -n "$RESULT" ] || die "test host produced no result (see output above)"
echo "$RESULT" | grep -q "ready=none" && die "the guest agent never answered on vsock"
read -r START READY <<<"$(echo "$RESULT" | sed -E 's/.*start=([0-9.]+) ready=([0-9.]+).*/\1 \2/')"
echo "nested: hull-vmm boot to agent-ready: $(echo "$READY - $START" | bc) s (test-host time, nested KVM under TCG)"
HULL=$(grep -a "^NESTED-HULL" "$LOG" | sed -E 's/.*console-ready=([0-9.]+) start=([0-9.]+).*/\2 \1/' || true)
if [ -n "$HULL" ] && ! echo "$HULL" | grep -q none; then
    read -r HS HR <<<"$HULL"
    echo "nested: hull-vmm launch to 'hull-agent ready' on the console: $(echo "$HR - $HS" | bc) s"
fi
QEMU=$(grep -a "^NESTED-QEMU start" "$LOG" || true)
if [ -n "$QEMU" ]; then
    echo "$QEMU" | grep -q "ready=none" && die "QEMU microvm never reached agent-ready"
    read -r QS QR <<<"$(echo "$QEMU" | sed -E 's/.*start=([0-9.]+) ready=([0-9.]+).*/\1 \2/')"
    echo "nested: QEMU microvm launch to 'hull-agent ready' on the console: $(echo "$QR - $QS" | bc) s"
fi
echo "nested: PASS" >&2
