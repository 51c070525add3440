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
# Environment: HULLD (a hulld binary), CARGO_TARGET_DIR, CRITEST_LOG_DIR (default
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

ARGS=(--runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" --ginkgo.v
    --ginkgo.no-color --ginkgo.timeout="$TIMEOUT" --ginkgo.json-report="$LOG_DIR/report.json")
[[ -n $FOCUS ]] && ARGS+=(--ginkgo.focus="$FOCUS")
[[ -n $SKIP ]] && ARGS+=(--ginkgo.skip="$SKIP")
FLAKE_ATTEMPTS=${CRITEST_FLAKE_ATTEMPTS:-$([[ -n $EXPECTED ]] && echo 2 || echo 1)}
[[ $FLAKE_ATTEMPTS -gt 1 ]] && ARGS+=(--ginkgo.flake-attempts="$FLAKE_ATTEMPTS")
ARGS+=("$@")
log "$(critest --version 2>/dev/null | head -n1): output in $LOG_DIR/critest.log"
echo "critest ${ARGS[*]}" >"$LOG_DIR/critest.log"
START=$SECONDS
critest "${ARGS[@]}" >>"$LOG_DIR/critest.log" 2>&1 &
CRITEST_PID=$!
progress "$LOG_DIR/critest.log" "$CRITEST_PID"
wait "$CRITEST_PID"
CRITEST_RC=$?
CRITEST_PID=""
log "critest exited with $CRITEST_RC after $((SECONDS - START))s"

summarize "$LOG_DIR" | tee "$LOG_DIR/summary.txt"
FAILED=$(jq '[.[].SpecReports[]? | select(.LeafNodeType == "It" and
    (.State | IN("passed", "skipped", "pending") | not))] | length' "$LOG_DIR/report.json" 2>/dev/null)
if [[ -z $FAILED ]]; then
    log "critest wrote no report; see $LOG_DIR/critest.log"
    exit 2
fi
if [[ -n $EXPECTED ]]; then
    check_expected "$LOG_DIR/report.json" "$EXPECTED" "$FOCUS$SKIP" | tee "$LOG_DIR/expected.txt"
    exit "${PIPESTATUS[0]}"
fi
[[ $FAILED -eq 0 && $CRITEST_RC -eq 0 ]] && exit 0
exit 1
