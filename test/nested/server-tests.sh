#!/usr/bin/env bash
# hulld's integration tests on hull-vmm: builds hulld, hull-vmm and the server test binaries
# (cargo, into $CARGO_TARGET_DIR or target/), then runs them inside the nested test host
# (test/nested/run.sh --server-tests), where KVM boots stock guests, with
# HULL_TEST_VMM=hull: hulld with `vm.vmm = "hull"` and VM templates on, driven through the
# CRI as on the CI machine with QEMU.
#
#   test/nested/server-tests.sh [TEST...] [-- TEST-BINARY ARGS]
#
# TEST: server/tests/<TEST>.rs; default: the tests where the VMM makes a difference (see
# test/nested/README.md, "The server suite on hull-vmm"). After --: passed to every test
# binary (e.g. a name filter). Environment: HULL_NESTED_SERVER_TIMEOUT (seconds per test
# binary, default 1200), HULL_GUEST_DIR, and run.sh's (HULL_NESTED_CACHE, HULL_NESTED_LOG).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
log() { printf '[nested-server %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# sandbox_vm: two pods (the first makes the template), IPs, traffic, hostPort, kill -9 of
#   hulld and reattach, Stop/Remove, leak checks;
# sandbox_failures: each RunPodSandbox step failing leaves nothing, a hung guest's stop;
# container_cri: a container from a pulled image, ExecSync, logs, Stop/Remove;
# streaming: exec, attach and port-forward (SPDY and WebSocket);
# container_restart: kill -9 of hulld with containers running, reattach, logs go on.
TESTS=(sandbox_vm sandbox_failures container_cri streaming container_restart)
ARGS=""
if [[ $# -gt 0 ]]; then
    TESTS=()
    while [[ $# -gt 0 && $1 != -- ]]; do TESTS+=("$1"); shift; done
    [[ ${1:-} == -- ]] && { shift; ARGS="$*"; }
fi
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

start=$SECONDS
# The whole workspace's test build, as `cargo test --workspace` makes it (a no-op after it
# in CI): the same features, so nothing is rebuilt, and hulld and hull-vmm come with it
# (integration tests of their crates run them).
log "building the workspace's tests (hulld, hull-vmm, the server test binaries)"
names=$(printf '%s\n' "${TESTS[@]}" | jq -R . | jq -s -c .)
bins=$(cargo test --workspace --locked --no-run --message-format=json |
    jq -r --argjson names "$names" 'select(.reason == "compiler-artifact" and .profile.test == true
        and .target.kind == ["test"] and (.package_id | test("server|hulld"))
        and (.target.name | IN($names[])) and .executable != null) | .executable')
[[ $(wc -w <<<"$bins") -eq ${#TESTS[@]} ]] || { log "error: expected ${#TESTS[@]} test binaries (${TESTS[*]}), got: $bins"; exit 1; }
for b in hulld hull-vmm; do
    [[ -x $TARGET/debug/$b ]] || { log "error: $TARGET/debug/$b was not built"; exit 1; }
done
log "built in $((SECONDS - start))s"

# shellcheck disable=SC2086 # one line of paths
exec test/nested/run.sh --hull-vmm "$TARGET/debug/hull-vmm" --hulld "$TARGET/debug/hulld" \
    --server-tests "$(echo $bins)" --test-args "$ARGS" --timeout "${HULL_NESTED_SERVER_TIMEOUT:-1200}"
