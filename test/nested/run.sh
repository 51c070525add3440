#!/bin/bash
# Nested harness for hull-vmm: boots Debian's generic kernel (linux-image-amd64, which ships
# kvm.ko + kvm-amd.ko) under QEMU TCG with `-cpu max` (emulated AMD SVM) as a throw-away test
# host, with an initramfs built here; inside it, on real (nested) KVM:
#   1. pod: the `hull` Hypervisor backend (vm/src/hull) starts virtiofsd and hull-vmm for two
#      pods in turn, each with a tap NIC: the first creates the VM template (boot to
#      agent-ready, snapshot) and is restored from it, the second is restored from it
#      (--no-templates: both boot cold); for each the agent answers over the hybrid vsock,
#      SetupSandbox mounts the share and configures eth0, a busybox container runs from the
#      virtio-fs share, the test host pings the guest and sees the pod's own MAC; the pods'
#      MACs, boot ids and first random numbers all differ, each guest clock is the host's
#      (vm/examples/nested_pod, mode `pod`);
#   2. bench: N boots of the same guest with hull-vmm and (--compare-qemu) QEMU microvm on KVM,
#      launch to the agent's ready line, and N restores of one hull-vmm snapshot of it, launch
#      to the agent answering the hybrid-vsock handshake: p50/p90, ratios to QEMU, memory
#      outside guest RAM (mode `bench`).
# Or (--server-tests, server mode, instead of 1 and 2): hulld's integration test binaries,
# run in the test host with HULL_TEST_VMM=hull (hulld with vm.vmm = "hull", templates on;
# see test/nested/server-root.sh and test/nested/server-tests.sh, which builds them).
# Exits non-zero, saying why, if a prerequisite is missing or any check fails.
#
# usage: test/nested/run.sh --hull-vmm PATH --pod-client PATH [--guest-dir DIR] [--runs N]
#          [--compare-qemu] [--no-fs] [--no-net] [--timeout SECS] [--shmem-thp MODE]
#          [--guest-cmdline ARGS] [--icount SHIFT] [--no-templates]
#        test/nested/run.sh --hull-vmm PATH --hulld PATH --server-tests "BIN..."
#          [--test-args ARGS] [--guest-dir DIR] [--timeout SECS]
#   --hull-vmm: the hull-vmm binary (cargo build -p hull-vmm)
#   --pod-client: the nested_pod example (cargo build -p hull-vm --example nested_pod)
#   --no-fs/--no-net: leave the virtio-fs share / the NIC out of the pod check
#   --no-templates: the pod check boots both pods cold (the benchmark still restores)
#   --guest-cmdline ARGS: extra guest kernel arguments for the benchmark boots (both VMMs),
#     e.g. "loglevel=7" to see where boot time goes in the consoles the log keeps
#   --icount SHIFT: run the test host with QEMU's instruction counting (-icount
#     shift=SHIFT,sleep=off): its clock then advances 2^SHIFT ns per instruction and jumps over
#     idle time, so the benchmark counts work done and does not depend on the load of this
#     machine (wall-clock numbers on a shared 2-core host vary 3x from run to run). Caveat:
#     a nested boot now and then stalls under -icount (seen with QEMU and hull-vmm), so
#     the cargo test runs without it; the benchmark reports failed QEMU boots and goes on
#   --shmem-thp MODE: the test host's transparent_hugepage/shmem_enabled (guest RAM is a memfd)
#   --server-tests "BIN...": server mode with these test binaries (cargo test --no-run);
#     --hulld: the hulld they were built with; --test-args: passed to each binary (a filter);
#     --timeout: per binary
#   env: HULL_NESTED_CACHE (default /var/cache/hull-nested): the downloaded kernel package
#        HULL_NESTED_LOG (default /tmp/hull-nested-last.log): the whole test-host output
#        TMPDIR: where the test host initramfs is built (~300 MB while it runs)
#
# Needs (Debian packages): qemu-system-x86, busybox-static, cpio, gzip, xz-utils, zstd,
# iproute2, bc, apt (for `apt-get download linux-image-amd64`, reachable mirror); and
# virtiofsd (packaging/guest/install-tools.sh) unless --no-fs.
set -euo pipefail

HULL_VMM=""
POD_CLIENT=""
GUEST_DIR=${HULL_GUEST_DIR:-/var/lib/hull/guest}
RUNS=3
TIMEOUT=600
COMPARE_QEMU=0
POD_OPTS="--fs --net tap0"
SHMEM_THP=""
BENCH_CMDLINE=""
ICOUNT=""
TEMPLATES=1
SERVER_TESTS=""
HULLD=""
TEST_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --hull-vmm) HULL_VMM="$2"; shift 2 ;;
        --pod-client) POD_CLIENT="$2"; shift 2 ;;
        --guest-dir) GUEST_DIR="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --compare-qemu) COMPARE_QEMU=1; shift ;;
        --no-fs) POD_OPTS=${POD_OPTS/--fs/}; shift ;;
        --no-net) POD_OPTS=${POD_OPTS/--net tap0/}; shift ;;
        --shmem-thp) SHMEM_THP="$2"; shift 2 ;;
        --guest-cmdline) BENCH_CMDLINE="$2"; shift 2 ;;
        --icount) ICOUNT="-icount shift=$2,sleep=off"; shift 2 ;;
        --no-templates) TEMPLATES=0; POD_OPTS="$POD_OPTS --no-templates"; shift ;;
        --server-tests) SERVER_TESTS="$2"; shift 2 ;;
        --hulld) HULLD="$2"; shift 2 ;;
        --test-args) TEST_ARGS="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

die() { echo "nested: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found: install $2"; }
[ -n "$HULL_VMM" ] && [ -x "$HULL_VMM" ] || die "hull-vmm binary not found (--hull-vmm '$HULL_VMM'): cargo build -p hull-vmm"
if [ -n "$SERVER_TESTS" ]; then
    # shellcheck source-path=SCRIPTDIR source=server-root.sh
    source "$(dirname "${BASH_SOURCE[0]}")/server-root.sh"
    COMPARE_QEMU=0
else
    [ -n "$POD_CLIENT" ] && [ -x "$POD_CLIENT" ] ||
        die "pod client not found (--pod-client '$POD_CLIENT'): cargo build -p hull-vm --example nested_pod"
fi
for f in vmlinux initramfs.img; do
    [ -f "$GUEST_DIR/$f" ] || die "guest $f missing in $GUEST_DIR (build it with packaging/guest/build.sh)"
done
need qemu-system-x86_64 qemu-system-x86
need cpio cpio; need gzip gzip; need xz xz-utils; need zstd zstd; need bc bc
need apt-get apt; need dpkg-deb dpkg
IPROUTE=$(command -v ip || true)
[ -n "$IPROUTE" ] && [ "$(basename "$(readlink -f "$IPROUTE")")" != busybox ] ||
    die "ip (iproute2) not found: install iproute2"
BUSYBOX=/bin/busybox
BUSYBOX_LDD=$(LC_ALL=C ldd "$BUSYBOX" 2>&1 || true)
[ -x "$BUSYBOX" ] && [[ "$BUSYBOX_LDD" == *"not a dynamic"* ]] ||
    die "$BUSYBOX is missing or not static: install busybox-static"
VIRTIOFSD=""
if [[ "$POD_OPTS" == *--fs* ]]; then
    for d in $(echo "$PATH" | tr : ' ') /usr/local/cargo-tools/bin /usr/libexec /root/.cargo/bin; do
        [ -x "$d/virtiofsd" ] && { VIRTIOFSD="$d/virtiofsd"; break; }
    done
    [ -n "$VIRTIOFSD" ] || die "virtiofsd not found: run packaging/guest/install-tools.sh (or pass --no-fs)"
fi

CACHE=${HULL_NESTED_CACHE:-/var/cache/hull-nested}
mkdir -p "$CACHE"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hull-nested.XXXXXX")
QPID=""
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# 1. The test host kernel: Debian's generic kernel package (cached).
PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$PKG" ] || die "cannot resolve linux-image-amd64 (run apt-get update)"
DEB=$(ls "$CACHE"/"$PKG"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$DEB" ]; then
    echo "nested: downloading $PKG" >&2
    (cd "$CACHE" && apt-get download "$PKG" >/dev/null 2>&1) ||
        die "apt-get download $PKG failed (is a Debian mirror reachable?)"
    DEB=$(ls "$CACHE"/"$PKG"_*.deb | head -1)
fi
echo "nested: test host kernel package $(basename "$DEB")" >&2
dpkg-deb -x "$DEB" "$WORK/pkg"
KVER=$(ls "$WORK/pkg/lib/modules" | head -1)
VMLINUZ="$WORK/pkg/boot/vmlinuz-$KVER"

# 2. The test host's initramfs: busybox, modules, the programs (+ their libraries), the guest.
R="$WORK/root"
mkdir -p "$R"/{bin,usr/local/bin,lib/modules,guest,lib64,usr/lib,etc}
cp "$BUSYBOX" "$R/bin/busybox"
MODULES="irqbypass ccp kvm kvm-amd tun"
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
    cp "$1" "$R/usr/local/bin/$2"
    for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
}
copy_with_libs "$HULL_VMM" hull-vmm
[ -n "$POD_CLIENT" ] && copy_with_libs "$POD_CLIENT" nested_pod
copy_with_libs "$IPROUTE" ip
TMPFS_SIZE=1800m
MEM=2048
if [ -n "$SERVER_TESTS" ]; then
    need depmod kmod
    # shellcheck disable=SC2086 # a list of paths
    server_root "$R" "$WORK/pkg" "$KVER" "$HULLD" "$HULL_VMM" "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)" $SERVER_TESTS
    TMPFS_SIZE=3000m
    MEM=4096
fi
[ -n "$VIRTIOFSD" ] && copy_with_libs "$VIRTIOFSD" virtiofsd
# A boot takes about 0.5 s of test-host time; under -icount that is tens of seconds of
# real time, so the per-boot limit is tighter there (a hung boot must not eat the run).
BOOT_TIMEOUT=120
[ -n "$ICOUNT" ] && BOOT_TIMEOUT=5
QEMU_OPT=""
if [ "$COMPARE_QEMU" = 1 ]; then
    copy_with_libs "$(command -v qemu-system-x86_64)" qemu-system-x86_64
    mkdir -p "$R/usr/share"
    cp -rL /usr/share/qemu "$R/usr/share/qemu"
    QEMU_OPT="--qemu /usr/local/bin/qemu-system-x86_64"
fi
cp "$GUEST_DIR/vmlinux" "$GUEST_DIR/initramfs.img" "$R/guest/"
echo "root:x:0:0:root:/:/bin/sh" > "$R/etc/passwd"
# (iproute2 ip by full path: busybox sh prefers its own applets over PATH.)
# Stage 1 moves everything to a tmpfs and switch_roots there: virtiofsd's namespace sandbox
# pivot_roots, which the kernel refuses on the initial rootfs.
cat > "$R/init" <<INIT
#!/bin/busybox sh
B=/bin/busybox
\$B mkdir -p /newroot && \$B mount -t tmpfs -o size=$TMPFS_SIZE tmpfs /newroot
for d in /*; do case \$d in /proc|/sys|/dev|/newroot|/init) ;; *) \$B cp -a \$d /newroot/ ;; esac; done
\$B mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/run
exec \$B switch_root /newroot /init2
INIT
cat > "$R/init2" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $MODULES; do insmod /lib/modules/\$m.ko 2>/dev/null || echo "NESTED insmod \$m failed"; done
[ -e /dev/kvm ] || { echo "NESTED-RESULT no /dev/kvm in the test host (kvm_amd did not load: no SVM?)"; poweroff -f; }
[ -n "$SHMEM_THP" ] && echo "$SHMEM_THP" > /sys/kernel/mm/transparent_hugepage/shmem_enabled
echo "NESTED thp: \$(cat /sys/kernel/mm/transparent_hugepage/enabled) shmem: \$(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled)"
ip link set lo up
{ IP=/usr/local/bin/ip; \$IP tuntap add dev tap0 mode tap && \$IP addr add 10.199.0.1/24 dev tap0 && \$IP link set tap0 up; } 2>&1 |
    sed 's/^/NESTED tap0: /'
echo "NESTED kvm ready, uptime \$(cut -d' ' -f1 /proc/uptime)"
INIT
if [ -n "$SERVER_TESTS" ]; then
    # shellcheck disable=SC2086 # a list of paths
    server_init "$TIMEOUT" "$TEST_ARGS" $SERVER_TESTS >> "$R/init2"
else
    cat >> "$R/init2" <<INIT
export HULL_VMM_LOG=info
timeout $TIMEOUT nested_pod pod --dir /tmp/pod --kernel /guest/vmlinux --initramfs /guest/initramfs.img \
    --hull-vmm /usr/local/bin/hull-vmm --virtiofsd /usr/local/bin/virtiofsd $POD_OPTS > /tmp/pod.log 2>&1
echo "NESTED-POD-EXIT \$?"
cat /tmp/pod.log
for f in /tmp/pod/run1/hull-vmm.log /tmp/pod/run1/virtiofsd.log /tmp/pod/run2/hull-vmm.log /tmp/pod/run2/virtiofsd.log; do
    [ -f \$f ] && { echo "NESTED ----- \$f -----"; cat \$f; }
done
{ timeout $TIMEOUT nested_pod bench --dir /tmp/bench --kernel /guest/vmlinux --initramfs /guest/initramfs.img \
    --hull-vmm /usr/local/bin/hull-vmm --runs $RUNS $QEMU_OPT --cmdline-extra "$BENCH_CMDLINE" \
    --boot-timeout $BOOT_TIMEOUT; echo "NESTED-BENCH-EXIT \$?"; } 2>&1
for f in /tmp/bench/hull-0-vmm.log /tmp/bench/template-vmm.log /tmp/bench/restore-0-vmm.log; do
    [ -f \$f ] && { echo "NESTED ----- \$f -----"; cat \$f; }
done
echo "NESTED-DONE"
poweroff -f
INIT
fi
chmod +x "$R/init" "$R/init2"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/host-initrd.gz"

# 3. Boot the test host under TCG with emulated SVM.
echo "nested: booting test host ($KVER) under QEMU TCG -cpu max" >&2
# The emulated test host now and then stalls for good: its one vCPU halts and no timer
# interrupt ever wakes it (QEMU TCG with nested SVM; seen during both hull-vmm and QEMU boots,
# ~1 run in 5 on this loaded machine). Then QEMU uses no CPU while the harness waits for
# timeouts that never fire inside the test host. Detect that (under 2 s of CPU in a minute)
# and start the test host over, once, saying so.
STALL_WINDOW=60
# Pod mode: the pod check and the benchmark, each within TIMEOUT; server mode: each binary.
HOST_TIMEOUT=$((2 * TIMEOUT + 300))
if [ -n "$SERVER_TESTS" ]; then
    # shellcheck disable=SC2086 # a list of paths
    set -- $SERVER_TESTS
    HOST_TIMEOUT=$(($# * TIMEOUT + 300))
fi
run_test_host() {
    timeout $((HOST_TIMEOUT)) qemu-system-x86_64 -accel tcg $ICOUNT -cpu max -smp 1 -m $MEM \
        -kernel "$VMLINUZ" -initrd "$WORK/host-initrd.gz" \
        -append "console=ttyS0 quiet panic=-1" \
        -nographic -no-reboot -nodefaults -serial stdio > "$WORK/host.log" 2>&1 &
    QPID=$!
    # Every 5 s: a quiet interval is one with under 1/6 s of CPU (2 s a minute).
    local quiet_max=$((STALL_WINDOW / 5)) quiet=0 last=-1 cpu qemu_pid
    local min_ticks=$(($(getconf CLK_TCK) / 6))
    while kill -0 "$QPID" 2>/dev/null; do
        sleep 5 & wait $! || true
        qemu_pid=$(pgrep -P "$QPID" -f qemu-system-x86_64 | head -1 || true)
        [ -n "$qemu_pid" ] && [ -r "/proc/$qemu_pid/stat" ] || continue
        cpu=$(awk '{print $14 + $15}' "/proc/$qemu_pid/stat")
        if [ "$last" -ge 0 ] && [ $((cpu - last)) -lt "$min_ticks" ]; then
            quiet=$((quiet + 1))
        else
            quiet=0
        fi
        last=$cpu
        if [ "$quiet" -ge "$quiet_max" ]; then
            local saved="${HULL_NESTED_LOG:-/tmp/hull-nested-last.log}.stalled"
            tr -d '\r' < "$WORK/host.log" > "$saved"
            echo "nested: the test host stalled (under 2 s of CPU in ${STALL_WINDOW} s); its output is in $saved, last lines:" >&2
            tail -3 "$saved" >&2
            kill "$QPID" "$qemu_pid" 2>/dev/null
            wait "$QPID" 2>/dev/null || true
            QPID=""
            return 1
        fi
    done
    wait "$QPID" 2>/dev/null || true
    QPID=""
    return 0
}
t0=$(date +%s.%N)
if ! run_test_host; then
    echo "nested: NESTED-STALL: starting the test host over (attempt 2 of 2)" >&2
    run_test_host || die "the test host stalled twice (TCG nested-SVM stall)"
fi
t1=$(date +%s.%N)
LOG=${HULL_NESTED_LOG:-/tmp/hull-nested-last.log}
tr -d '\r' < "$WORK/host.log" | sed -n '/^NESTED/,$p' > "$LOG"
grep -a -E "^NESTED-(POD |POD-PATH|POD-UNIQUE|POD-EXIT|BENCH-P50|BENCH-RATIO|BENCH-SNAPSHOT|BENCH-EXIT|BENCH hull|RESULT|METRICS)" "$LOG" || true
echo "nested: full test-host output (guest consoles, hull-vmm logs) in $LOG" >&2
echo "nested: test host wall time $(echo "$t1 - $t0" | bc) s" >&2
grep -aq "^NESTED-RESULT" "$LOG" && die "$(grep -a '^NESTED-RESULT' "$LOG")"
grep -aq "^NESTED-DONE" "$LOG" || die "the test host did not finish (timeout or crash; see $LOG)"
if [ -n "$SERVER_TESTS" ]; then
    # Every binary ran and passed; its `test result` line and failures are shown.
    grep -a -E '^NESTED-SERVER [^|]*\| (test result|test .* FAILED|---- )' "$LOG" || true
    grep -a '^NESTED-SERVER-TEST ' "$LOG"
    failed=""
    # shellcheck disable=SC2086 # a list of paths
    for t in $SERVER_TESTS; do
        name=$(test_name "$t")
        grep -aq "^NESTED-SERVER-TEST $name exit 0 " "$LOG" || failed="$failed $name"
    done
    [ -z "$failed" ] || die "server tests failed on hull-vmm:$failed (output in $LOG)"
    echo "nested: PASS" >&2
    exit 0
fi
grep -aq "^NESTED-POD-EXIT 0" "$LOG" && grep -aq "^NESTED-POD PASS" "$LOG" ||
    die "pod check failed: $(grep -a -A3 '^NESTED-POD-EXIT' "$LOG" | tr '\n' ' ')"
if [ "$TEMPLATES" = 1 ]; then
    grep -aq "^NESTED-POD-PATH pod 1: template-created+restored" "$LOG" &&
        grep -aq "^NESTED-POD-PATH pod 2: template-restored" "$LOG" &&
        grep -aq "^NESTED-POD-PATH pod 3: template-restored" "$LOG" ||
        die "the pods did not start from a VM template: $(grep -a '^NESTED-POD-PATH' "$LOG" | tr '\n' ' ')"
fi
grep -aq "^NESTED-BENCH-EXIT 0" "$LOG" ||
    die "benchmark failed: $(grep -a -B5 '^NESTED-BENCH-EXIT' "$LOG" | tr '\n' ' ')"
grep -aq "^NESTED-BENCH-P50 hull-vmm-restore" "$LOG" || die "no hull-vmm restore measured"
echo "nested: PASS" >&2
