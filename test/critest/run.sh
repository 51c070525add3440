#!/usr/bin/env bash
# Runs kubernetes-sigs' critest against a throw-away hulld, as root:
#
#   test/critest/run.sh [--expected FILE] [--focus REGEX] [--skip REGEX] [-- more critest flags]
#
# Starts Debian's docker-registry on 127.0.0.1:5000 (the next free port up to 5099 if
# taken) with temporary storage, builds critest's test images from local files and pushes
# them there (images.sh), builds hulld (`cargo build -p hulld`, or uses $HULLD), writes a
# config of its own (root, state, socket, CNI bridge hullcrit0 on 10.99.0.0/16, registry
# mirrors for registry.k8s.io, k8s.gcr.io and gcr.io), starts hulld, runs critest and
# prints a summary. Everything it started is torn down on exit, failure or Ctrl-C.
#
# Exit code: 0 when no spec failed (with --expected FILE: when exactly the specs FILE lists
# failed); 1 when a spec failed (with --expected: a spec failed that FILE does not list, or
# a listed one did not fail); 2 when the setup failed. Without a critest on PATH: 0 for a
# developer, 2 under CI (CI=true) or with HULL_REQUIRE_CRI_TOOLS=1.
#
# --expected FILE: the expected-results list (test/critest/expected-failures.txt): one
# failing spec a line, `<full spec name> | <reason>`; `#` comments and blank lines ignored.
# An unexpected failure or an unexpected pass fails the run, so the list stays true.
#
# Two passes: the whole suite with the default handler, then the mount-propagation specs
# with the `host` handler (see below).
#
# Environment: HULLD (a hulld binary), HULL_AGENT (hull-agent, default beside hulld),
# CARGO_TARGET_DIR, CRITEST_HOST_PASS=0 (no second pass), CRITEST_LOG_DIR (default
# /var/tmp/hull-critest-logs/<UTC time>), CRITEST_TIMEOUT (whole run, default 60m),
# HULL_LOG_LEVEL (hulld's log_level, default info), HULL_KERNEL / HULL_INITRAMFS (guest
# files; default $HULL_GUEST_DIR/{vmlinux,initramfs.img} if set, else hulld's defaults),
# CRITEST_FLAKE_ATTEMPTS (ginkgo's tries per spec, default 2 with --expected, else 1: a
# spec that passes on its second try is reported as flaky, not failed), CRITEST_KEEP=1
# (keep the temp dirs).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
log() { printf '[critest %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

FOCUS="" SKIP="" EXPECTED=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --expected) EXPECTED=${2:?--expected needs a file}; shift 2 ;;
        --focus) FOCUS=${2:?--focus needs a regex}; shift 2 ;;
        --skip) SKIP=${2:?--skip needs a regex}; shift 2 ;;
        --) shift; break ;;
        -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done

if ! command -v critest >/dev/null; then
    echo "critest is not installed (no critest on PATH)." >&2
    echo "Build it: PATH=\"\$(test/tools/cri-tools.sh 1.36.0):\$PATH\" (see test/critest/README.md)." >&2
    # CI must test what users run: a missing binary is a failure there, not a pass.
    [[ ${CI:-} == true || ${HULL_REQUIRE_CRI_TOOLS:-0} == 1 ]] && exit 2
    echo "Nothing to run." >&2
    exit 0
fi
if [[ -n $EXPECTED ]]; then
    [[ -f $EXPECTED ]] || die "--expected $EXPECTED: no such file"
    EXPECTED=$(realpath "$EXPECTED")
fi
if [[ -n ${HULL_GUEST_DIR:-} ]]; then
    HULL_KERNEL=${HULL_KERNEL:-$HULL_GUEST_DIR/vmlinux}
    HULL_INITRAMFS=${HULL_INITRAMFS:-$HULL_GUEST_DIR/initramfs.img}
fi
[[ $EUID -eq 0 ]] || die "run as root: hulld creates network namespaces, taps and VMs"
for tool in docker-registry umoci skopeo jq gcc ip curl; do
    command -v "$tool" >/dev/null || die "missing $tool (packaging/deps.sh installs it)"
done

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

TIMEOUT=${CRITEST_TIMEOUT:-60m}
LOG_DIR=${CRITEST_LOG_DIR:-/var/tmp/hull-critest-logs/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$LOG_DIR" || die "cannot create $LOG_DIR"
# The state dir holds per-pod unix sockets: keep its path short (sun_path is 108 bytes).
WORK=$(mktemp -d /var/tmp/hull-critest.XXXXXX) || die "mktemp"
STATE=$(mktemp -d /run/hc.XXXX) || die "mktemp"
SOCK=$STATE/hull.sock
BRIDGE=hullcrit0
CNI_NET=hullcrit
HULLD_PID="" REGISTRY_PID=""

trap cleanup EXIT
# No output in these traps: after Ctrl-C a `| tee` may be gone (cleanup ignores SIGPIPE).
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

log "logs in $LOG_DIR"
start_registry
log "building test images (log: $LOG_DIR/images.log)"
"$HERE/images.sh" "$REGISTRY_ADDR" >"$LOG_DIR/images.log" 2>&1 ||
    die "building the test images failed; see $LOG_DIR/images.log"
find_hulld
write_config
start_hulld

# critest_pass <name> <report> [critest args...]: one critest run, with progress lines.
FLAKE_ATTEMPTS=${CRITEST_FLAKE_ATTEMPTS:-$([[ -n $EXPECTED ]] && echo 2 || echo 1)}
critest_pass() {
    local name=$1 report=$2 logf=$LOG_DIR/critest-$1.log
    shift 2
    local args=(--runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" --ginkgo.v
        --ginkgo.no-color --ginkgo.timeout="$TIMEOUT" --ginkgo.json-report="$report")
    [[ $FLAKE_ATTEMPTS -gt 1 ]] && args+=(--ginkgo.flake-attempts="$FLAKE_ATTEMPTS")
    args+=("$@")
    log "$(critest --version 2>/dev/null | head -n1), pass $name: output in $logf"
    echo "critest ${args[*]}" >"$logf"
    local start=$SECONDS
    critest "${args[@]}" >>"$logf" 2>&1 &
    CRITEST_PID=$!
    progress "$logf" "$CRITEST_PID"
    wait "$CRITEST_PID"
    PASS_RC=$?
    CRITEST_PID=""
    log "critest pass $name exited with $PASS_RC after $((SECONDS - start))s"
}

# Pass "vm": every spec with the default handler (pods are VMs, and host-isolation pods
# when they ask for the node's network, PID or IPC namespace), except the `rshared`
# mount-propagation spec: a mount made in a VM pod's container cannot appear on the node
# (see README.md). Pass "host": the mount-propagation specs again with the `host` handler
# (host isolation), where `rshared` works (CRITEST_HOST_PASS=0 leaves it out, as does a
# --focus that does not match those specs; --skip applies to both passes).
RSHARED="mount with 'rshared'"
ARGS=()
[[ -n $FOCUS ]] && ARGS+=(--ginkgo.focus="$FOCUS")
if [[ -n $SKIP ]]; then ARGS+=(--ginkgo.skip="$SKIP|$RSHARED"); else ARGS+=(--ginkgo.skip="$RSHARED"); fi
ARGS+=("$@")
critest_pass vm "$LOG_DIR/report.json" "${ARGS[@]}"
CRITEST_RC=$PASS_RC
ln -sf critest-vm.log "$LOG_DIR/critest.log"
REPORTS=("$LOG_DIR/report.json")
PROPAGATION="Container Mount Propagation runtime should support mount propagation mount with"
if [[ ${CRITEST_HOST_PASS:-1} != 0 ]] && [[ -z $FOCUS || $PROPAGATION =~ $FOCUS ]]; then
    HOST_ARGS=(--runtime-handler=host --ginkgo.focus="Container Mount Propagation")
    [[ -n $SKIP ]] && HOST_ARGS+=(--ginkgo.skip="$SKIP")
    critest_pass host "$LOG_DIR/report-host.json" "${HOST_ARGS[@]}" "$@"
    ((PASS_RC == 0)) || CRITEST_RC=$PASS_RC
    REPORTS+=("$LOG_DIR/report-host.json")
fi

{
    summarize "$LOG_DIR" report.json
    [[ ${#REPORTS[@]} -gt 1 ]] && echo && echo "host pass (--runtime-handler=host):" &&
        summarize "$LOG_DIR" report-host.json
} | tee "$LOG_DIR/summary.txt"
FAILED=0
for r in "${REPORTS[@]}"; do
    n=$(jq '[.[].SpecReports[]? | select(.LeafNodeType == "It" and
        (.State | IN("passed", "skipped", "pending") | not))] | length' "$r" 2>/dev/null)
    if [[ -z $n ]]; then
        log "critest wrote no report $r; see the critest logs in $LOG_DIR"
        exit 2
    fi
    FAILED=$((FAILED + n))
done
if [[ -n $EXPECTED ]]; then
    # The list covers both passes: the vm pass as a whole run (unless --focus/--skip), the
    # host pass as a narrowed one (its specs are the propagation specs only).
    {
        # The vm pass skips `rshared`: its entry (if any) is the host pass's.
        grep -vF "$RSHARED" "$EXPECTED" >"$WORK/expected-vm.txt"
        check_expected "$LOG_DIR/report.json" "$WORK/expected-vm.txt" "$FOCUS$SKIP"
        rc=$?
        if [[ ${#REPORTS[@]} -gt 1 ]]; then
            echo "host pass (--runtime-handler=host):"
            check_expected "$LOG_DIR/report-host.json" "$EXPECTED" narrowed || rc=1
        fi
        exit "$rc"
    } | tee "$LOG_DIR/expected.txt"
    exit "${PIPESTATUS[0]}"
fi
[[ $FAILED -eq 0 && $CRITEST_RC -eq 0 ]] && exit 0
exit 1
