#!/usr/bin/env bash
# Install everything hull needs to build, run and test on Debian 12, idempotently.
#
#   packaging/deps.sh            runtime + build + test dependencies
#
# Debian packages come from apt; two vhost-user backends come from crates.io with
# `cargo install` into /usr/local/cargo-tools (packaging/guest/install-tools.sh).
set -euo pipefail

# cargo from rustup may not be on a non-login shell's PATH.
export HOME="${HOME:-/root}"
export PATH="$PATH:$HOME/.cargo/bin"
log() { printf '[deps %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

APT_PACKAGES=(
    # building hull and its guest
    build-essential pkg-config protobuf-compiler
    linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio xz-utils kmod
    # vhost-user backends (virtiofsd needs these to build)
    libseccomp-dev libcap-ng-dev
    # running pod VMs and pod networks
    qemu-system-x86 iproute2 iptables containernetworking-plugins
    # tests: a real registry, test images, guest rootfs, the containerd baseline
    docker-registry skopeo umoci busybox-static apache2-utils zstd jq
    e2fsprogs erofs-utils containerd runc
    # server/tests/metrics.rs: hulld's Prometheus endpoint checked with the reference
    # Python client's text-format parser
    python3-prometheus-client
    # test/k8s: etcd for the API server, openssl for its certificates. Kubernetes and
    # crictl are built with the machine's Go (/usr/local/go, 1.26: Kubernetes 1.36 needs
    # 1.26; Debian 12's golang-go is 1.19)
    etcd-server openssl
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "Debian packages present"
fi

# Debian's docker-registry and containerd packages start services where systemd runs;
# hull's tests and benchmarks start their own instances on their own ports and dirs.

# vhost-device-vsock and virtiofsd, pinned, into /usr/local/cargo-tools/bin.
"$(dirname "${BASH_SOURCE[0]}")/guest/install-tools.sh"
log "done"
