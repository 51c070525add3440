#!/usr/bin/env bash
# crictl against a throw-away hulld: one PASS/FAIL line per crictl command (issue 7's
# check list). Part of CI (test/run.sh runs it with crictl v1.36.0 on PATH):
#
#   sudo test/crictl/check.sh
#
# Starts Debian's docker-registry on 127.0.0.1 (first free port from 5000) with temporary
# storage, pushes test/images/build.sh's busybox to it, builds hulld (or uses $HULLD),
# starts it with its own root/state dirs and socket and a CNI bridge inside a throw-away
# netns (nothing on the host network), then runs: version, pull, images, runp, pods,
# inspectp, create, start, ps, inspect, exec -s (output, exit code, timeout), exec
# (streaming), logs, stats, statsp, stop, rm, run (pod + container configs), rm -f, stopp
# (a container still running in the pod ends EXITED), rmp, rmi. Everything it
# started or created is removed on exit, failure or Ctrl-C.
#
# Exit code: 0 when every check passed; 1 when a check failed; 2 when the setup failed.
# Without a crictl on PATH: 0 for a developer, 2 under CI (CI=true) or with
# HULL_REQUIRE_CRI_TOOLS=1.
# Environment: HULLD (a hulld binary), CARGO_TARGET_DIR, HULL_GUEST_DIR (kernel and
# initramfs, default hulld's), TMPDIR (temp dirs, default /var/tmp and /run for hulld's
# state dir), CRICTL_CHECK_LOG_DIR
# (hulld's and the registry's logs, default /var/tmp/hull-crictl-logs/<UTC time>),
# CRICTL_CHECK_KEEP=1 (keep the temp dirs), CRICTL_CHECK_AFTER (a shell command run after
# the checks, before the teardown, with HULL_SOCK and HULL_IMAGE set: e.g.
# 'container_cri_bench "$HULL_SOCK" "$HULL_IMAGE" 20').
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
log() { printf '[crictl-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

if ! command -v crictl >/dev/null; then
    echo "crictl is not installed (no crictl on PATH)." >&2
    echo "Build it: PATH=\"\$(test/tools/cri-tools.sh 1.36.0):\$PATH\"." >&2
    # CI must test what users run: a missing binary is a failure there, not a pass.
    [[ ${CI:-} == true || ${HULL_REQUIRE_CRI_TOOLS:-0} == 1 ]] && exit 2
    echo "Nothing to check." >&2
    exit 0
fi
[[ $EUID -eq 0 ]] || die "run as root: hulld creates network namespaces, taps and VMs"
for tool in docker-registry umoci skopeo jq ip curl; do
    command -v "$tool" >/dev/null || die "missing $tool (packaging/deps.sh installs it)"
done

# shellcheck source-path=SCRIPTDIR source=../critest/lib.sh
source "$REPO/test/critest/lib.sh" # start_registry find_hulld start_hulld stop_pid kill_leftovers ...

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/hull-crictl.XXXXXX") || die "mktemp"
STATE=$(mktemp -d "${TMPDIR:-/run}/hcc.XXXX") || die "mktemp"
LOG_DIR=${CRICTL_CHECK_LOG_DIR:-/var/tmp/hull-crictl-logs/$(date -u +%Y%m%dT%H%M%SZ)}
SOCK=$STATE/hull.sock
NS=hullcrictl-$$
HULLD_PID="" REGISTRY_PID=""
mkdir -p "$LOG_DIR"

check_cleanup() {
    local rc=$? mnt
    trap '' INT TERM HUP PIPE
    set +e
    remove_pods
    stop_pid hulld "$HULLD_PID"
    stop_pid registry "$REGISTRY_PID"
    kill_leftovers
    for mnt in $(findmnt -rn -o TARGET | grep -E "^($WORK|$STATE)(/|$)" | sort -r); do
        umount -l "$mnt" || log "cannot unmount $mnt"
    done
    for mnt in /run/netns/hull-*; do
        [[ -d $STATE/sandboxes/${mnt#/run/netns/hull-} ]] && ip netns del "${mnt#/run/netns/}"
    done
    ip netns del "$NS" 2>/dev/null
    if [[ ${CRICTL_CHECK_KEEP:-0} == 1 ]]; then
        log "kept $WORK and $STATE"
    else
        rm -rf --one-file-system "$WORK" "$STATE"
    fi
    exit "$rc"
}
trap check_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_registry
"$REPO/test/images/build.sh" "$REGISTRY_ADDR" >"$LOG_DIR/images.log" 2>&1 ||
    die "test/images/build.sh failed: $(tail -3 "$LOG_DIR/images.log")"
IMAGE=$REGISTRY_ADDR/busybox:latest
find_hulld

ip netns add "$NS" || die "cannot create netns $NS"
ip netns exec "$NS" ip link set lo up || die "cannot set lo up in $NS"
mkdir -p "$WORK/cni" "$WORK/root" "$WORK/pods"
jq --arg ipam "$WORK/cni-ipam" '.name = "hullcrictl" | .plugins[0].bridge = "hcc0"
    | .plugins[0].ipam.ranges = [[{subnet: "10.66.0.0/24"}]] | .plugins[0].ipam.dataDir = $ipam' \
    "$REPO/packaging/cni/10-hull-bridge.conflist" >"$WORK/cni/10-hullcrictl.conflist" ||
    die "cannot write the CNI config"
{
    echo "root_dir = \"$WORK/root\""
    echo "state_dir = \"$STATE\""
    echo "socket = \"$SOCK\""
    echo "log_level = \"info\""
    if [[ -n ${HULL_GUEST_DIR:-} ]]; then
        echo "[vm]"
        echo "kernel = \"$HULL_GUEST_DIR/vmlinux\""
        echo "initramfs = \"$HULL_GUEST_DIR/initramfs.img\""
    fi
    echo "[cni]"
    echo "conf_dir = \"$WORK/cni\""
    echo "runtime_netns = \"/run/netns/$NS\""
    echo "[streaming]"
    echo "address = \"127.0.0.1:0\""
    echo "[registry.hosts.\"$REGISTRY_ADDR\"]"
    echo "plain_http = true"
} >"$WORK/config.toml"
start_hulld

CR=(crictl -r "unix://$SOCK" -i "unix://$SOCK" --timeout 120s)
PASSED=0 FAILED=0 OUT=""

# check <name> <condition (bash, sees $OUT and $RC)> -- <crictl args...>
check() {
    local name=$1 cond=$2
    shift 3
    OUT=$(timeout 180 "${CR[@]}" "$@" 2>"$WORK/stderr")
    RC=$?
    if eval "$cond"; then
        printf 'PASS  %-22s crictl %s\n' "$name" "$*"
        PASSED=$((PASSED + 1))
    else
        printf 'FAIL  %-22s crictl %s (exit %s)\n' "$name" "$*" "$RC"
        { head -n 10 <<<"$OUT"; grep -v 'level=warning' "$WORK/stderr" | head -n 5; } |
            while IFS= read -r line; do printf '        %s\n' "${line:0:400}"; done
        FAILED=$((FAILED + 1))
    fi
}
# shellcheck disable=SC2016 # evaluated in check()
ok='[[ $RC -eq 0 ]]'

pod_config() { # <name> <file>
    jq -n --arg name "$1" --arg logs "$WORK/pods/$1" '{
        metadata: {name: $name, namespace: "crictl-check", uid: ("uid-" + $name), attempt: 0},
        hostname: $name, log_directory: $logs, linux: {}}' >"$2"
}
container_config() { # <name> <file> <shell command>
    jq -n --arg name "$1" --arg image "$IMAGE" --arg cmd "$3" '{
        metadata: {name: $name}, image: {image: $image},
        command: ["/bin/sh", "-c", $cmd], log_path: ($name + ".log"), linux: {}}' >"$2"
}
pod_config pod1 "$WORK/pod1.json"
pod_config pod2 "$WORK/pod2.json"
# shellcheck disable=SC2016 # the container's shell expands it
container_config c1 "$WORK/c1.json" 'echo hello-from-c1; i=0; while true; do i=$((i+1)); sleep 1; done'
container_config c2 "$WORK/c2.json" 'echo hello-from-c2; sleep 3600'
container_config c3 "$WORK/c3.json" 'sleep 3600'

check version "$ok && grep -q 'RuntimeName:  *hull' <<<\"\$OUT\"" -- version
check pull "$ok" -- pull "$IMAGE"
check images "$ok && grep -q '$REGISTRY_ADDR/busybox' <<<\"\$OUT\"" -- images
check runp "$ok && [[ \$OUT =~ ^[0-9a-f]{32,64}$ ]]" -- runp "$WORK/pod1.json"
POD1=$OUT
[[ $RC -eq 0 ]] || POD1=""
check pods "$ok && grep -q '${POD1:0:13}.*Ready.*pod1' <<<\"\$OUT\"" -- pods
if [[ -n $POD1 ]]; then
    check inspectp "$ok && jq -e '.status.state == \"SANDBOX_READY\" and (.status.network.ip | length > 0)' <<<\"\$OUT\" >/dev/null" -- inspectp "$POD1"
    check create "$ok && [[ \$OUT =~ ^[0-9a-f]{32,64}$ ]]" -- create "$POD1" "$WORK/c1.json" "$WORK/pod1.json"
    C1=$OUT
    [[ $RC -eq 0 ]] || C1=""
    if [[ -n $C1 ]]; then
        check start "$ok" -- start "$C1"
        sleep 2
        check ps "$ok && grep -q '${C1:0:13}.*Running.*c1' <<<\"\$OUT\"" -- ps
        check inspect "$ok && jq -e '.status.state == \"CONTAINER_RUNNING\" and .status.image.image != \"\"' <<<\"\$OUT\" >/dev/null" -- inspect "$C1"
        check 'exec -s' "$ok && [[ \$OUT == 'hi from exec' ]]" -- exec -s "$C1" echo hi from exec
        check 'exec -s (exit code)' "[[ \$RC -ne 0 ]] && grep -q 'exited with 3' \"\$WORK/stderr\"" -- exec -s "$C1" sh -c 'exit 3'
        # shellcheck disable=SC2034 # read by the condition
        T0=$SECONDS
        # Bounded below the command's own 60 s, not near the 2 s timeout: what is checked is
        # that the timeout ended the exec, not how fast a loaded TCG guest answers.
        check 'exec -s (timeout)' "[[ \$RC -ne 0 && \$((SECONDS - T0)) -lt 50 ]]" -- exec -s --timeout 2 "$C1" sleep 60
        check 'exec (streaming)' "$ok && [[ \$OUT == streamed* ]]" -- exec "$C1" echo streamed
        check logs "$ok && [[ \$OUT == hello-from-c1* ]]" -- logs "$C1"
        check stats "$ok && grep -q '${C1:0:13}' <<<\"\$OUT\"" -- stats "$C1"
        check 'stats -o json' "$ok && jq -e '.stats[0].memory.workingSetBytes.value | tonumber > 0' <<<\"\$OUT\" >/dev/null" -- stats -o json "$C1"
        check statsp "$ok && grep -q '${POD1:0:13}' <<<\"\$OUT\"" -- statsp "$POD1"
        check stop "$ok" -- stop -t 2 "$C1"
        check 'ps -a (exited)' "$ok && grep -q '${C1:0:13}.*Exited' <<<\"\$OUT\"" -- ps -a
        check rm "$ok" -- rm "$C1"
        check 'ps -a (removed)' "$ok && ! grep -q '${C1:0:13}' <<<\"\$OUT\"" -- ps -a
    fi
    # A container left running: StopPodSandbox (the guest shuts down) must leave it EXITED.
    check 'create+start c3' "$ok && [[ \$OUT =~ ^[0-9a-f]{32,64}$ ]]" -- create "$POD1" "$WORK/c3.json" "$WORK/pod1.json"
    C3=$OUT
    [[ $RC -eq 0 ]] && timeout 60 "${CR[@]}" start "$C3" >/dev/null 2>&1
fi
check run "$ok && [[ \$OUT =~ [0-9a-f]{32,64}$ ]]" -- run "$WORK/c2.json" "$WORK/pod2.json"
C2=$(grep -oE '[0-9a-f]{32,64}$' <<<"$OUT" | tail -n1)
POD2=$(timeout 30 "${CR[@]}" pods -q --name pod2 2>/dev/null | head -n1)
sleep 2
check 'logs (run)' "$ok && [[ \$OUT == hello-from-c2* ]]" -- logs "${C2:-none}"
check 'rm -f (running)' "$ok" -- rm -f "${C2:-none}"
PODS=()
[[ -n $POD1 ]] && PODS+=("$POD1")
[[ -n $POD2 ]] && PODS+=("$POD2")
if [[ ${#PODS[@]} -gt 0 ]]; then
    check stopp "$ok" -- stopp "${PODS[@]}"
    check 'pods (notready)' "$ok && ! grep -q ' Ready ' <<<\"\$OUT\" && grep -q NotReady <<<\"\$OUT\"" -- pods
    [[ -n ${C3:-} ]] &&
        check 'ps -a (pod stopped)' "$ok && grep -q '${C3:0:13}.*Exited' <<<\"\$OUT\"" -- ps -a
    check rmp "$ok" -- rmp "${PODS[@]}"
fi
check 'pods (empty)' "$ok && [[ -z \$OUT ]]" -- pods -q
check rmi "$ok" -- rmi "$IMAGE"

echo "crictl check: $PASSED passed, $FAILED failed (hulld log: $LOG_DIR/hulld.log)"
if [[ -n ${CRICTL_CHECK_AFTER:-} ]]; then
    log "running CRICTL_CHECK_AFTER against this hulld"
    HULL_SOCK=$SOCK HULL_IMAGE=$IMAGE bash -c "$CRICTL_CHECK_AFTER" || log "CRICTL_CHECK_AFTER failed"
fi
[[ $FAILED -eq 0 ]]
