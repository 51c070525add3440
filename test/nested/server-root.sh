# Server mode of test/nested/run.sh (sourced by it): what the test host needs to run
# hulld's integration tests on hull-vmm, and the part of its init that runs them.
#
# The tests run as they do on the CI machine, with HULL_TEST_VMM=hull (hulld with
# `vm.vmm = "hull"` and VM templates on: see server/tests/sandbox_common/vmm.rs): hulld,
# hull-vmm and virtiofsd of this build, the real guest, the real CNI plugins (bridge,
# host-local, portmap, loopback) with iptables (nft) and the kernel modules they load on
# demand (kmod's modprobe, which the kernel calls), and for the tests that pull, Debian's
# docker-registry with test/images/build.sh's tools (bash, umoci, skopeo).
#
# A test binary finds hulld and its scripts by the absolute paths it was built with
# (CARGO_BIN_EXE_hulld, CARGO_MANIFEST_DIR): hulld (with hull-vmm beside it, where hulld
# looks for it) and the repo's test/images are copied to those same paths in the test host.
# Results come back on the serial console: `NESTED-SERVER-TEST <name> exit <code>` per
# binary, its output as `NESTED-SERVER <name>| <line>`.
# shellcheck shell=bash

# Module subtrees of the test host kernel that CNI and iptables may load (bridge, veth,
# nf_tables and its xt compat, nat, conntrack and what they depend on).
SERVER_MODULE_DIRS="kernel/net kernel/lib kernel/crypto kernel/arch/x86/crypto kernel/drivers/net/veth.ko"

# install_bin <root> <file> <path in the test host>: the file, and the libraries it links
# at their own paths.
install_bin() {
    local r=$1 src=$2 dest=$3 lib
    mkdir -p "$r$(dirname "$dest")"
    cp -L "$src" "$r$dest"
    # Debug info is most of a debug build's size; the test host unpacks all of it under TCG.
    case $(head -c 4 "$src" | od -An -c | tr -d ' ') in
        177ELF) strip --strip-debug "$r$dest" 2>/dev/null || true ;;
    esac
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*'); do
        mkdir -p "$r$(dirname "$lib")"
        cp -L "$lib" "$r$lib"
    done
}

# server_root <root> <unpacked kernel package> <kernel version> <hulld> <hull-vmm> <repo>
#   <test binaries...>: copies everything the tests need into the test host's root.
server_root() {
    local r=$1 pkg=$2 kver=$3 hulld=$4 vmm=$5 repo=$6 t p
    shift 6
    [ -n "$hulld" ] && [ -x "$hulld" ] || die "hulld not found (--hulld '$hulld')"
    # hulld at its own path (the tests have it built in), hull-vmm beside it.
    install_bin "$r" "$hulld" "$hulld"
    install_bin "$r" "$vmm" "$(dirname "$hulld")/hull-vmm"
    for t in "$@"; do
        [ -x "$t" ] || die "test binary $t missing"
        install_bin "$r" "$t" "/tests/$(test_name "$t")"
    done
    # The CNI plugins where the tests look for them, iptables (nft) with its extensions.
    for p in bridge host-local portmap loopback; do
        [ -x "/usr/lib/cni/$p" ] || die "/usr/lib/cni/$p missing: install containernetworking-plugins"
        install_bin "$r" "/usr/lib/cni/$p" "/usr/lib/cni/$p"
    done
    [ -x /usr/sbin/xtables-nft-multi ] || die "xtables-nft-multi missing: install iptables"
    install_bin "$r" /usr/sbin/xtables-nft-multi /usr/local/sbin/xtables-nft-multi
    for p in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
        ln -sf xtables-nft-multi "$r/usr/local/sbin/$p"
    done
    mkdir -p "$r/usr/lib/x86_64-linux-gnu"
    cp -a /usr/lib/x86_64-linux-gnu/xtables "$r/usr/lib/x86_64-linux-gnu/"
    cp /etc/protocols /etc/services "$r/etc/"
    # Modules on demand: kmod's modprobe (the kernel's usermode helper) over a depmod'ed
    # subset of the kernel package's modules.
    install_bin "$r" "$(command -v kmod || echo /bin/kmod)" /usr/local/sbin/kmod
    ln -sf kmod "$r/usr/local/sbin/modprobe"
    depmod -b "$pkg" "$kver" || die "depmod of the test host kernel's modules failed"
    local m="$pkg/lib/modules/$kver" d
    mkdir -p "$r/lib/modules/$kver"
    cp "$m"/modules.* "$r/lib/modules/$kver/"
    for d in $SERVER_MODULE_DIRS; do
        for p in "$m/$d" "$m/$d".*; do
            [ -e "$p" ] || continue
            mkdir -p "$r/lib/modules/$kver/$(dirname "$d")"
            cp -a "$p" "$r/lib/modules/$kver/$(dirname "$d")/"
        done
    done
    # The registry and the image tools (test/images/build.sh at the path the tests know).
    for p in /usr/bin/docker-registry /usr/bin/umoci /usr/bin/skopeo /bin/bash; do
        [ -x "$p" ] || die "$p missing (packaging/deps.sh installs it)"
        install_bin "$r" "$p" "/usr/local/bin/$(basename "$p")"
    done
    # The tests start the registry by this path.
    mkdir -p "$r/usr/bin"
    ln -sf /usr/local/bin/docker-registry "$r/usr/bin/docker-registry"
    mkdir -p "$r/etc/containers" "$r$repo/test"
    cp /etc/containers/policy.json "$r/etc/containers/"
    cp -a "$repo/test/images" "$r$repo/test/"
    echo "127.0.0.1 localhost" >"$r/etc/hosts"
    echo "root:x:0:" >"$r/etc/group"
}

# test_name <binary>: sandbox_vm-0123abcd -> sandbox_vm
test_name() {
    basename "$1" | sed 's/-[0-9a-f]\{16\}$//'
}

# server_init <timeout secs> <test args> <test binaries...>: the init fragment that runs
# each test binary with HULL_TEST_VMM=hull and reports it on the console.
server_init() {
    local timeout=$1 args=$2 t names=""
    shift 2
    for t in "$@"; do names="$names $(test_name "$t")"; done
    cat <<INIT
mkdir -p /run/netns /var/lib/cni /var/tmp /sys/fs/cgroup
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
export HULL_TEST_VMM=hull HULL_GUEST_DIR=/guest HOME=/root RUST_BACKTRACE=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo /usr/local/sbin/modprobe > /proc/sys/kernel/modprobe
mkdir -p /root
for name in$names; do
    echo "NESTED-SERVER-TEST-START \$name at uptime \$(cut -d' ' -f1 /proc/uptime)"
    timeout $timeout /tests/\$name --test-threads=1 $args > /tmp/\$name.log 2>&1
    rc=\$?
    sed "s/^/NESTED-SERVER \$name| /" /tmp/\$name.log
    echo "NESTED-SERVER-TEST \$name exit \$rc at uptime \$(cut -d' ' -f1 /proc/uptime)"
done
echo "NESTED-DONE"
poweroff -f
INIT
}
