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
export PATH="$PATH:$HOME/.cargo/bin"
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
# Python grpcio (pinned, from PyPI) for server/tests/clients.rs: a client that sends the
# socket path as :authority.
step "grpcio test client" test/tools/grpcio.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked
step "cargo test" cargo test --workspace --locked
log "all tests passed"
