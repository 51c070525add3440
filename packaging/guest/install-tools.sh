#!/usr/bin/env bash
# Install the vhost-user helpers the QEMU backend runs next to each VM, pinned, with cargo:
#   vhost-device-vsock 0.3.0  (rust-vmm; guest vsock as a hybrid-vsock unix socket)
#   virtiofsd 1.14.0          (virtio-fs; needs libseccomp-dev and libcap-ng-dev)
# into $HULL_TOOLS_ROOT/bin (default /usr/local/cargo-tools/bin), where hull-vm (and
# hull-vmm's virtio-fs test) look for them after PATH. Idempotent: a tool already at the pinned version is kept. ~2 min each.
set -euo pipefail

ROOT="${HULL_TOOLS_ROOT:-/usr/local/cargo-tools}"
JOBS="${HULL_TOOLS_JOBS:-$(nproc)}"
log() { printf '[guest-tools %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

install_tool() {
    local name="$1" version="$2"
    if "$ROOT/bin/$name" --version 2>/dev/null | grep -qF "$version"; then
        log "$name $version already installed in $ROOT/bin"
        return
    fi
    log "installing $name $version into $ROOT/bin"
    cargo install "$name" --version "$version" --locked --root "$ROOT" -j"$JOBS"
}

for pkg in libseccomp-dev libcap-ng-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || { log "missing $pkg: apt-get install -y libseccomp-dev libcap-ng-dev"; exit 1; }
done
install_tool vhost-device-vsock 0.3.0
install_tool virtiofsd 1.14.0
