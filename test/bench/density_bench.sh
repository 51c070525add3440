#!/usr/bin/env bash
# Density benchmark: how many idle pods a node holds and what each costs, hulld (a microVM
# per pod, QEMU backend here) next to Debian's containerd + runc on the same machine, the
# same CNI conflist and the same busybox image.
#
#   sudo test/bench/density_bench.sh                 # PODS="10 25 50" CONCURRENCY="1 4 8"
#   sudo PODS=10 CONCURRENCY=8 RUNTIMES=hull test/bench/density_bench.sh
#
# For each runtime, each N in PODS and each C in CONCURRENCY, server/examples/density_bench
# starts N idle pods (RunPodSandbox, then a busybox container that writes 200 log lines and
# `exec sleep`s) with C RunPodSandbox calls in flight and reports: RunPodSandbox p50/p99 and
# errors (there must be none); after SETTLE_SECS, host memory per pod by component (PSS from
# /proc/<pid>/smaps_rollup; guest RAM = the memfd mappings in smaps; the pod's files on
# tmpfs; the daemon's PSS growth / N) and the node's MemAvailable drop per pod; host CPU per
# idle pod over IDLE_SECS (the VMM and its helpers, or the shim, pause and sleep); the same
# memory again after every pod served EXECS ExecSync calls (1000 lines of output each) and
# 1000 more log lines; then every pod removed C at a time, and what was left behind
# (processes, run dirs, netns: must be nothing). A table of all runs at the end; the JSON of
# each run is kept in RESULTS (default /var/tmp/hull-density-<UTC time>).
#
# This is a benchmark, not a test: CI does not run it (it takes 30-90 minutes and its CPU
# and latency numbers depend on the machine's load, printed with each run).
#
# Environment: PODS, CONCURRENCY, RUNTIMES ("hull containerd"), IDLE_SECS (60),
# SETTLE_SECS (15), EXECS (3), MEMORY_LIMIT_MIB (0: no pod limit, hull's default VM size),
# HULLD and DENSITY_BENCH (prebuilt binaries; else cargo builds them into
# CARGO_TARGET_DIR), HULL_GUEST_DIR (kernel + initramfs), HULL_KERNEL_PARAMS,
# HULL_VM_CONFIG (extra lines for hulld's [vm] section), HULL_NODE_CONFIG (lines for its
# [node] section), TMPDIR (temp dir, default /var/tmp), RESULTS, KEEP=1 (keep the temp dir).
# Needs: root; apt packages containerd runc umoci skopeo jq gcc docker-registry curl;
# vhost-device-vsock + virtiofsd (packaging/guest/install-tools.sh); the guest
# (packaging/guest/build.sh). Everything it creates (processes, netns, bridge, iptables
# rules, CNI state, cgroups, mounts, dirs, the registry) is removed on exit, failure or Ctrl-C.

set -euo pipefail

PODS="${PODS:-10 25 50}"
CONCURRENCY="${CONCURRENCY:-1 4 8}"
RUNTIMES="${RUNTIMES:-hull containerd}"
IDLE_SECS="${IDLE_SECS:-60}"
SETTLE_SECS="${SETTLE_SECS:-15}"
EXECS="${EXECS:-3}"
MEMORY_LIMIT_MIB="${MEMORY_LIMIT_MIB:-0}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RESULTS="${RESULTS:-/var/tmp/hull-density-$(date -u +%Y%m%dT%H%M%SZ)}"
log() { echo "[density_bench $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root"
for t in containerd ctr runc umoci skopeo jq nsenter docker-registry curl; do
    command -v "$t" >/dev/null || die "$t missing (packaging/deps.sh installs it)"
done

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/dbb.XXXXXX")"
LOG_DIR="$WORK/logs"
# hulld's state dir holds per-pod unix sockets: keep its path short (sun_path).
HSTATE="$(mktemp -d /run/dbb.XXXX)"
NS="hulldensity-$$"
NET="hulldensity-$$"
C="$WORK/c"
HULLD_PID="" CONTAINERD_PID="" BENCH_PID="" REGISTRY_PID=""
CGROUPS_BEFORE="$(ls -d /sys/fs/cgroup/*/k8s.io 2>/dev/null || true)"
NETNS_BEFORE="$(ip netns list | awk '{print $1}' | sort)"
mkdir -p "$LOG_DIR" "$RESULTS"

# shellcheck source-path=SCRIPTDIR source=../critest/lib.sh
source "$ROOT/test/critest/lib.sh" # start_registry stop_pid

pids_mentioning() {
    local p
    for p in /proc/[0-9]*; do
        { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$1" && echo "${p#/proc/}"
    done
    return 0
}

drain_pods() {
    command -v crictl >/dev/null || return 0
    local p
    for p in $(timeout 20 crictl -r "unix://$1" pods -q 2>/dev/null); do
        timeout 60 crictl -r "unix://$1" stopp "$p" >/dev/null 2>&1 || true
        timeout 60 crictl -r "unix://$1" rmp "$p" >/dev/null 2>&1 || true
    done
}

stop_daemon() {
    [[ -n $1 ]] || return 0
    kill "$1" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cleanup() {
    local rc=$? p n
    set +e
    trap - EXIT INT TERM
    stop_daemon "$BENCH_PID"
    if [[ -n $CONTAINERD_PID ]] && kill -0 "$CONTAINERD_PID" 2>/dev/null; then
        drain_pods "$C/containerd.sock"
    fi
    stop_daemon "$CONTAINERD_PID"
    for p in $(pids_mentioning "$C/"); do kill -9 "$p" 2>/dev/null; done
    if [[ -n $HULLD_PID ]] && kill -0 "$HULLD_PID" 2>/dev/null; then
        drain_pods "$HSTATE/hull.sock"
    fi
    stop_daemon "$HULLD_PID"
    for p in $(pids_mentioning "$HSTATE/"); do kill -9 "$p" 2>/dev/null; done
    stop_daemon "$REGISTRY_PID"
    sleep 0.2
    for n in $(comm -13 <(echo "$NETNS_BEFORE") <(ip netns list | awk '{print $1}' | sort)); do
        [[ $n == cni-* && -n $CONTAINERD_PID ]] && ip netns del "$n" 2>/dev/null
        [[ -d $HSTATE/sandboxes/${n#hull-} || $n == "$NS" ]] && ip netns del "$n" 2>/dev/null
    done
    ip netns del "$NS" 2>/dev/null
    for p in /sys/fs/cgroup/*/k8s.io; do
        [[ -d $p ]] || continue
        find "$p" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
        grep -qxF "$p" <<<"$CGROUPS_BEFORE" || rmdir "$p" 2>/dev/null
    done
    grep -F -e " $WORK" -e " $HSTATE" /proc/mounts | awk '{print $2}' | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null; done
    cp "$WORK"/*.log "$LOG_DIR"/*.log "$RESULTS/" 2>/dev/null
    if [[ -n ${KEEP:-} ]]; then log "kept $WORK"; else rm -rf --one-file-system "$WORK"; fi
    rm -rf --one-file-system "$HSTATE"
    log "results and logs in $RESULTS"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n ${HULLD:-} && -n ${DENSITY_BENCH:-} ]]; then
    BENCH=$DENSITY_BENCH
else
    log "building hulld and the bench client (cargo, $CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build -q -p hulld --bin hulld --example density_bench)
    HULLD="$CARGO_TARGET_DIR/debug/hulld"
    BENCH="$CARGO_TARGET_DIR/debug/examples/density_bench"
fi

start_registry
"$ROOT/test/images/build.sh" "$REGISTRY_ADDR" >"$LOG_DIR/images.log" 2>&1 ||
    die "test/images/build.sh failed: $(tail -3 "$LOG_DIR/images.log")"
IMAGE=$REGISTRY_ADDR/busybox:latest

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
mkdir -p "$WORK/cni"
jq --arg name "$NET" --arg ipam "$WORK/ipam" '.name = $name | .plugins[0].bridge = "hdens0"
    | .plugins[0].ipam.ranges = [[{subnet: "10.79.0.0/22"}]] | .plugins[0].ipam.dataDir = $ipam' \
    "$ROOT/packaging/cni/10-hull-bridge.conflist" >"$WORK/cni/10-density.conflist"

run_bench() {
    local rc=0
    "$@" &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    return "$rc"
}

wait_socket() {
    for _ in $(seq 300); do
        [[ -S "$1" ]] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

FAILED=0
# bench_matrix <runtime> <socket> <daemon pid> <label> [density_bench args...]
bench_matrix() {
    local rt=$1 sock=$2 pid=$3 label=$4 n c out
    shift 4
    for n in $PODS; do
        for c in $CONCURRENCY; do
            out="$RESULTS/$rt-$n-$c.json"
            log "$label: $n pods, $c in flight (load $(cut -d' ' -f1-3 /proc/loadavg))"
            run_bench "$BENCH" --socket "$sock" --runtime "$rt" --daemon-pid "$pid" \
                --pods "$n" --concurrency "$c" --image "$IMAGE" --log-dir "$WORK/podlogs" \
                --prefix "d$n-$c" --idle-secs "$IDLE_SECS" --settle-secs "$SETTLE_SECS" \
                --execs "$EXECS" --memory-limit-mib "$MEMORY_LIMIT_MIB" --label "$label" \
                --json "$out" "$@" || { FAILED=1; log "$label: $n pods, $c in flight FAILED"; }
            rm -rf "$WORK/podlogs"
        done
    done
}

# --- hulld -------------------------------------------------------------------------------
if [[ " $RUNTIMES " == *" hull "* ]]; then
    {
        echo "root_dir = \"$WORK/h\""
        echo "state_dir = \"$HSTATE\""
        echo "socket = \"$HSTATE/hull.sock\""
        echo "log_level = \"warn\""
        echo "[vm]"
        if [[ -n ${HULL_GUEST_DIR:-} ]]; then
            echo "kernel = \"$HULL_GUEST_DIR/vmlinux\""
            echo "initramfs = \"$HULL_GUEST_DIR/initramfs.img\""
        fi
        # 8 TCG guests booting at once on a loaded 2-core host take minutes, not seconds.
        echo "agent_timeout_secs = 600"
        [[ -n ${HULL_KERNEL_PARAMS:-} ]] && echo "kernel_params = \"$HULL_KERNEL_PARAMS\""
        [[ -n ${HULL_VM_CONFIG:-} ]] && echo "$HULL_VM_CONFIG"
        if [[ -n ${HULL_NODE_CONFIG:-} ]]; then
            echo "[node]"
            echo "$HULL_NODE_CONFIG"
        fi
        echo "[cni]"
        echo "conf_dir = \"$WORK/cni\""
        echo "bin_dirs = [\"/usr/lib/cni\"]"
        echo "runtime_netns = \"/run/netns/$NS\""
        echo "[streaming]"
        echo "address = \"127.0.0.1:0\""
        echo "[registry.hosts.\"$REGISTRY_ADDR\"]"
        echo "plain_http = true"
    } >"$WORK/hull.toml"
    setsid "$HULLD" --config "$WORK/hull.toml" >"$WORK/hulld.log" 2>&1 </dev/null &
    HULLD_PID=$!
    wait_socket "$HSTATE/hull.sock" "$HULLD_PID" ||
        die "hulld did not start: $(tail -5 "$WORK/hulld.log")"
    accel=$(grep -qwE 'vmx|svm' /proc/cpuinfo && echo KVM || echo TCG)
    bench_matrix hull "$HSTATE/hull.sock" "$HULLD_PID" \
        "hulld (QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), $accel)" \
        --state-dir "$HSTATE"
    stop_daemon "$HULLD_PID"
    HULLD_PID=""
    left=$(pids_mentioning "$HSTATE/sandboxes/"; ls "$HSTATE/sandboxes" 2>/dev/null)
    [[ -z $left ]] || { FAILED=1; log "hulld left behind: $left"; }
fi

# --- containerd + runc ---------------------------------------------------------------------
if [[ " $RUNTIMES " == *" containerd "* ]]; then
    log "building a local pause image"
    mkdir -p "$WORK/pause"
    cat >"$WORK/pause/pause.c" <<'CSRC'
/* Like Kubernetes' pause: sleep until SIGINT/SIGTERM, reap children. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
CSRC
    umoci init --layout "$WORK/oci"
    umoci new --image "$WORK/oci:pause"
    umoci unpack --image "$WORK/oci:pause" "$WORK/bundle" >/dev/null
    gcc -static -Os -s -o "$WORK/bundle/rootfs/pause" "$WORK/pause/pause.c" || die "gcc failed"
    umoci repack --image "$WORK/oci:pause" "$WORK/bundle"
    umoci config --image "$WORK/oci:pause" --config.entrypoint /pause
    skopeo copy -q "oci:$WORK/oci:pause" "docker-archive:$WORK/pause.tar:localhost/hull-pause:bench"
    # containerd runs in the bench netns, where 127.0.0.1 is not the registry's: the busybox
    # image goes in from an archive, under the same name hulld pulls.
    skopeo copy -q --src-tls-verify=false "docker://$IMAGE" "docker-archive:$WORK/busybox.tar:$IMAGE"

    mkdir -p "$C"
    cat >"$C/config.toml" <<TOML
version = 2
root = "$C/root"
state = "$C/state"
[grpc]
  address = "$C/containerd.sock"
[ttrpc]
  address = "$C/containerd-ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/hull-pause:bench"
  # Root has no CAP_SYS_RESOURCE here: never ask runc for a lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
TOML
    # nsenter, not `ip netns exec` (which remounts /sys and hides the cgroup mounts from runc).
    setsid nsenter --net="/run/netns/$NS" containerd --config "$C/config.toml" \
        >"$WORK/containerd.log" 2>&1 </dev/null &
    CONTAINERD_PID=$!
    wait_socket "$C/containerd.sock" "$CONTAINERD_PID" ||
        die "containerd did not start: $(tail -5 "$WORK/containerd.log")"
    ctr -a "$C/containerd.sock" -n k8s.io image import "$WORK/pause.tar" >/dev/null
    ctr -a "$C/containerd.sock" -n k8s.io image import "$WORK/busybox.tar" >/dev/null
    bench_matrix containerd "$C/containerd.sock" "$CONTAINERD_PID" \
        "containerd $(containerd --version | awk '{print $3}') + runc $(runc --version | head -1 | awk '{print $3}')"
fi

# --- side by side ----------------------------------------------------------------------
echo
echo "Density, MiB and % of one core per pod (load average at the end of each idle window)"
jq -rs '
  def mib: if . == null then "-" else (. / 1024 * 10 | round / 10 | tostring) end;
  def f0: if . == null then "-" else (. | round | tostring) end;
  def f3: if . == null then "-" else (. * 1000 | round / 1000 | tostring) end;
  (["runtime", "N", "C", "Run p50 ms", "Run p99 ms", "errors", "idle MiB", "after exec MiB",
    "MemAvail drop", "CPU %", "load"] | @tsv),
  (sort_by(.runtime, .pods, .concurrency)[] |
    [.runtime, .pods, .concurrency, (.run_pod_sandbox_ms.p50 | f0), (.run_pod_sandbox_ms.p99 | f0),
     (.errors | length), (.memory_idle.total_kib | mib), (.memory_after_exercise.total_kib | mib),
     (.memory_idle.mem_available_drop_kib | mib), (.cpu_idle.pct_core_per_pod | f3),
     (.cpu_idle.loadavg_after // "" | split(" ")[0])] | @tsv)
' "$RESULTS"/*.json | column -t -s $'\t'
echo
echo "Memory per idle pod by component (MiB), each runtime's largest N, first concurrency"
jq -rs '
  def mib: (. / 1024 * 10 | round / 10 | tostring);
  group_by(.runtime)[] | max_by(.pods) as $m | map(select(.pods == $m.pods))[0] |
  "\(.label), \(.pods) pods: " + ((.memory_idle.components_kib // {}) | to_entries |
    map("\(.key) \(.value | mib)") | join(", ")) +
  ", guest RAM \(.memory_idle.guest_ram_kib | mib), tmpfs \(.memory_idle.tmpfs_kib | mib)" +
  ", daemon share \(.memory_idle.daemon_share_kib | mib)"
' "$RESULTS"/*.json
exit "$FAILED"
