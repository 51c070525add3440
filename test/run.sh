#!/usr/bin/env bash
# hull's whole test suite, as root on Debian 12:
#
#   test/run.sh
#
# Installs what the tests need (packaging/deps.sh), builds the guest kernel (cached) and an
# initramfs with the current hull-agent, then runs the formatting and lint gates and every
# test in the workspace: unit tests, and integration tests that boot real guests under
# QEMU (TCG on hosts without VT-x/AMD-V), run real CNI plugins in namespaces they create,
# and pull from a real registry they start on 127.0.0.1. Then the clients users run against
# hulld: crictl's command check and critest, both built from cri-tools at a pinned version
# (test/tools/cri-tools.sh, cached by version), critest compared with its expected-results
# list (test/critest/expected-failures.txt).
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

# Go tools built in the background at low priority while the Rust steps run: they need
# nothing from them, their module downloads are network-bound, and on a cold machine they
# take ~12 minutes of CPU that the VM tests leave idle. Each is waited for (its log
# printed, its failure failing the run) before the step that needs it; cached, they are
# no-ops.
BG=$(mktemp -d)
# On exit (a failed step included) the background builds stop with the run. Nothing in
# here may fail: under `set -e` a failing command would make the run's exit status 1, even
# after every step passed (pkill finds nothing once a job has ended).
stop_background() {
    local j
    for j in $(jobs -p); do
        pkill -TERM -P "$j" 2>/dev/null || true
        kill "$j" 2>/dev/null || true
    done
    rm -rf "$BG" || true
}
trap stop_background EXIT
background() {
    local name=$1; shift
    log "== $name: started in the background (log follows when waited for)"
    (
        rc=0
        nice -n 15 "$@" >"$BG/$name.out" 2>"$BG/$name.log" || rc=$?
        echo "$rc" >"$BG/$name.rc"
    ) &
}
# Waits for a background job: its log to stderr, its stdout to stdout, its exit code.
wait_for() {
    local name=$1
    while [[ ! -e $BG/$name.rc ]]; do sleep 2; done
    cat "$BG/$name.log" >&2
    cat "$BG/$name.out"
    return "$(cat "$BG/$name.rc")"
}

CRI_TOOLS_VERSION=1.36.0
step "dependencies" packaging/deps.sh
background cri-tools test/tools/cri-tools.sh "$CRI_TOOLS_VERSION"
background k8s-build test/k8s/build.sh
step "guest kernel + initramfs" packaging/guest/build.sh all
# Python grpcio (pinned, from PyPI) for server/tests/clients.rs: a client that sends the
# socket path as :authority.
step "grpcio test client" test/tools/grpcio.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked
# hull-agent's binary for host-isolation pods (server/tests/host_pods.rs runs it in host
# mode from the target dir); cargo test builds only the test harnesses of a bin crate.
step "cargo build hull-agent" cargo build --locked -p hull-agent
step "cargo test" cargo test --workspace --locked

cri_tools() {
    local bin
    bin=$(wait_for cri-tools)
    export PATH="$bin:$PATH"
}
# Missing crictl/critest must fail these steps, not skip them. They use the hulld `cargo
# test` built (a `cargo build` would resolve features without the dev-dependencies' and
# rebuild half the tree).
export HULL_REQUIRE_CRI_TOOLS=1
export HULLD="${CARGO_TARGET_DIR:-$REPO/target}/debug/hulld"
step "cri-tools v$CRI_TOOLS_VERSION (crictl, critest)" cri_tools
step "crictl check" test/crictl/check.sh
# A hung critest must not eat CI's time: ginkgo's whole-suite limit (a quiet run: ~5 min).
step "critest v$CRI_TOOLS_VERSION" env CRITEST_TIMEOUT=30m test/critest/run.sh --expected test/critest/expected-failures.txt
# Real Kubernetes on hulld (test/k8s/README.md). The binaries are built once per version
# and cached (cold: see that README); the suite boots its pods' VMs like the tests above.
step "kubernetes binaries (test/k8s/build.sh)" wait_for k8s-build
step "kubernetes suite (test/k8s/run.sh)" test/k8s/run.sh
log "all tests passed"
