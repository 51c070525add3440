# Shared functions of test/k8s/run.sh (sourced): logging, the test runner, processes,
# waiting, and the clean-up that runs on every exit.
# Globals from run.sh: HERE REPO WORK STATE LOG_DIR BIN NETNS RUN.
# shellcheck shell=bash

log() { printf '[k8s %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# ---- the test runner -------------------------------------------------------------------
# Each test is a function run in a subshell: `fail MSG` ends it with MSG, any other
# non-zero exit fails it too. `t NAME FUNCTION [ARGS]` runs one and counts it.
PASSED=0 FAILED=0
FAILURES=()
fail() { log "  FAIL: $*"; exit 1; }
note() { log "  $*"; }
t() {
    local name=$1 start=$SECONDS rc
    shift
    log "--- $name"
    # In the background, so that a signal reaches the suite's trap (and the clean-up)
    # without waiting for the test to end.
    ("$@") &
    TEST_PID=$!
    wait "$TEST_PID"
    rc=$?
    TEST_PID=""
    if ((rc == 0)); then
        PASSED=$((PASSED + 1))
        log "ok   $name ($((SECONDS - start))s)"
    else
        FAILED=$((FAILED + 1))
        FAILURES+=("$name")
        log "FAILED $name ($((SECONDS - start))s)"
    fi
    return 0
}

# wait_for SECONDS WHAT CMD...: polls CMD every second until it succeeds; fails the test
# with WHAT (and CMD's last output) when it does not within SECONDS.
wait_for() {
    local secs=$1 what=$2 deadline out
    shift 2
    deadline=$((SECONDS + secs))
    while :; do
        if out=$("$@" 2>&1); then
            return 0
        fi
        ((SECONDS < deadline)) || fail "$what: not within ${secs}s (last: ${out:0:600})"
        sleep 1
    done
}

# ---- processes ---------------------------------------------------------------------------
# logf NAME: the log file of process NAME in the current scenario.
logf() { echo "$LOG_DIR/$SCEN-$1.log"; }

# start_proc NAME CMD...: runs CMD in its own session, output in $(logf NAME); its pid
# goes to PIDS (stopped in reverse order by cleanup) and to $STATE/pids for the record.
declare -A PID_OF=()
PIDS=()
start_proc() {
    local name=$1
    shift
    setsid "$@" >"$(logf "$name")" 2>&1 &
    PID_OF[$name]=$!
    PIDS+=("$name")
    echo "$name ${PID_OF[$name]}" >>"$WORK/pids"
}

# stop_pid WHAT PID [GRACE]: SIGTERM, then SIGKILL after GRACE (default 10) seconds.
stop_pid() {
    local what=$1 pid=$2 grace=${3:-10} _
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq $((grace * 5))); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.2
    done
    log "$what (pid $pid) ignored SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

stop_proc() {
    local name=$1 grace=${2:-10}
    [[ -n ${PID_OF[$name]:-} ]] || return 0
    stop_pid "$name" "${PID_OF[$name]}" "$grace"
    unset "PID_OF[$name]"
}

alive() { [[ -n ${PID_OF[$1]:-} ]] && kill -0 "${PID_OF[$1]}" 2>/dev/null; }

# wait_up NAME SECONDS CMD...: waits for CMD to succeed while process NAME lives.
wait_up() {
    local name=$1 secs=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || die "$name exited; see $(logf "$name"): $(tail -n 5 "$(logf "$name")")"
        ((SECONDS < deadline)) || die "$name not up within ${secs}s; see $(logf "$name")"
        sleep 0.5
    done
    log "$name up (pid ${PID_OF[$name]})"
}

# ---- host settings kubelet changes -------------------------------------------------------
# kubelet sets these host-wide sysctls (its "kernel tunables"); the suite puts them back.
KERNEL_TUNABLES=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
save_sysctls() {
    local k
    : >"$WORK/sysctls"
    for k in "${KERNEL_TUNABLES[@]}"; do
        echo "$k=$(sysctl -n "$k")" >>"$WORK/sysctls"
    done
}
restore_sysctls() {
    [[ -s $WORK/sysctls ]] || return 0
    local kv
    while read -r kv; do
        sysctl -q -w "$kv" >/dev/null || log "cannot restore $kv"
    done <"$WORK/sysctls"
}

# ---- clean-up ----------------------------------------------------------------------------
# Processes whose command line names our temp dirs (VMMs, virtiofsd outlive hulld by
# design): end them by pid.
kill_leftovers() {
    local sig dir pid pids
    for sig in TERM KILL; do
        pids=()
        for dir in /proc/[0-9]*; do
            pid=${dir#/proc/}
            [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
            { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -e "$STATE" -e "$WORK" && pids+=("$pid")
        done
        [[ ${#pids[@]} -eq 0 ]] && return 0
        log "SIG$sig to processes left behind: ${pids[*]}"
        kill -"$sig" "${pids[@]}" 2>/dev/null
        sleep 2
    done
}

# remove_cgroups ROOT: the cgroup tree kubelet made under ROOT, in every v1 hierarchy and
# the unified one (children first).
remove_cgroups() {
    local root=$1 d
    for d in /sys/fs/cgroup/*"$root" /sys/fs/cgroup"$root"; do
        [[ -d $d ]] || continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
        [[ -d $d ]] && log "cgroup $d is still there (processes left in it?)"
    done
    return 0
}

cleanup() {
    local rc=$? n mnt id
    trap '' INT TERM HUP PIPE
    set +e
    log "cleaning up"
    if [[ -n ${TEST_PID:-} ]]; then
        pkill -TERM -P "$TEST_PID" 2>/dev/null
        kill -TERM "$TEST_PID" 2>/dev/null
    fi
    # Kubelets and the control plane first (they would restart what we remove), then the
    # pods through each hulld, then hulld, the registries and whatever is left.
    for ((n = ${#PIDS[@]} - 1; n >= 0; n--)); do
        case ${PIDS[n]} in
            hulld-* | registry*) ;;
            *) stop_proc "${PIDS[n]}" ;;
        esac
    done
    for n in "${!HULL_SOCKS[@]}"; do
        remove_pods "$n"
    done
    for ((n = ${#PIDS[@]} - 1; n >= 0; n--)); do
        stop_proc "${PIDS[n]}" 15
    done
    kill_leftovers
    for id in $(cat "$WORK"/*/pod-ids 2>/dev/null | sort -u); do
        [[ -e /run/netns/hull-$id ]] && { log "removing netns hull-$id"; ip netns del "hull-$id"; }
    done
    for mnt in $(findmnt -rn -o TARGET | grep -E "^($WORK|$STATE)(/|$)" | sort -r); do
        umount -l "$mnt" || log "cannot unmount $mnt"
    done
    for n in "${CGROUP_ROOTS[@]}"; do remove_cgroups "$n"; done
    restore_sysctls
    if [[ ${K8S_KEEP:-0} == 1 ]]; then
        log "kept $WORK and $STATE (K8S_KEEP=1)"
    else
        rm -rf --one-file-system "$WORK" "$STATE"
    fi
    log "logs in $LOG_DIR"
    exit "$rc"
}

# kubelet_warnings: kubelet's warnings and errors about the runtime (CRI calls, PLEG,
# stats, images, sandboxes), but for the pull failures the tests cause on purpose,
# normalised (ids, times, numbers) and counted, into
# $LOG_DIR/kubelet-warnings.txt, and printed.
kubelet_warnings() {
    local f out=$LOG_DIR/kubelet-warnings.txt
    ls "$LOG_DIR"/*-kubelet-*.log >/dev/null 2>&1 || return 0
    for f in "$LOG_DIR"/*-kubelet-*.log; do
        grep -E '^[EW][0-9]{4} ' "$f" |
            grep -iE 'runtime|cri|rpc|sandbox|container|image|pleg|stats|cgroup|hull' |
            grep -vE 'no-such-image|/private/busybox|pod="default/(missing|noauth)"|pod="(missing|noauth)"' |
            sed -E 's/^([EW])[0-9]{4} [0-9:.]+ +[0-9]+ /\1 /
                s/[0-9a-f]{32,64}/<id>/g
                s/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/<uid>/g
                s/[0-9]+(\.[0-9]+)?(ms|s|µs)\b/<t>/g
                s/"[a-z0-9-]+-[a-z0-9]{5}"/"<pod>"/g' |
            cut -c1-400
    done | sort | uniq -c | sort -rn >"$out"
    log "kubelet warnings/errors about the runtime ($(wc -l <"$out") kinds, $out):"
    head -n 40 "$out" >&2
}
