#!/usr/bin/env bash
# hull's whole test suite, as root on Debian 12:
#
#   test/run.sh
#
# Installs what the tests need (packaging/deps.sh), builds the guest kernel (cached) and an
# initramfs with the current hull-agent, then runs the formatting and lint gates and every
# test in the workspace: unit tests, and integration tests that boot real guests under
# QEMU (TCG on hosts without VT-x/AMD-V), run real CNI plugins in namespaces they create,
# and pull from a real registry they start on 127.0.0.1.
set -euo pipefail

# cargo from rustup may not be on a non-login shell's PATH.
export HOME="${HOME:-/root}"
export PATH="$PATH:$HOME/.cargo/bin:/usr/local/go/bin"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[test %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
[[ $EUID -eq 0 ]] || { log "the integration tests need root"; exit 1; }

step() {
    local name=$1; shift
    local start=$SECONDS
    log "== $name"
    "$@"
    log "== $name: done in $((SECONDS - start))s"
}

step "dependencies" packaging/deps.sh
step "guest kernel + initramfs" packaging/guest/build.sh all
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked
step "cargo test" cargo test --workspace --locked
# Real Kubernetes on hulld (test/k8s/README.md). The binaries are built once per version
# and cached (cold: see that README); the suite boots its pods' VMs like the tests above.
step "kubernetes binaries (test/k8s/build.sh)" test/k8s/build.sh
step "kubernetes suite (test/k8s/run.sh)" test/k8s/run.sh
log "all tests passed"
