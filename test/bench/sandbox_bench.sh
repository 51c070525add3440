#!/usr/bin/env bash
# RunPodSandbox benchmark: hulld (microVM per pod, QEMU backend) next to Debian's
# containerd + runc, both with the same CNI conflist (bridge + host-local + portmap from
# /usr/lib/cni), both inside a throw-away netns so the host network is not touched.
#
#   sudo test/bench/sandbox_bench.sh            # RUNS=20 by default
#
# Each side: RUNS sequential RunPodSandbox calls through the same CRI client
# (server/examples/sandbox_bench.rs), each followed by Stop + Remove; p50/p90 of the
# client-side RunPodSandbox time, and for hulld of each phase it reports (netns, cni,
# tap_tc, vm_start, agent_ready = guest boot, agent_setup). Then both side by side, and
# the ratios "hull without guest boot / containerd total", "hull host side (netns, CNI,
# tap+tc, VMM spawn: no guest code) / containerd total" and "hull total / containerd
# total" (p50 and p90).
#
# Needs: root, the guest in /var/lib/hull/guest (packaging/guest/build.sh) or
# HULL_GUEST_DIR, apt packages containerd runc umoci skopeo jq gcc (the pause image is
# a static C binary built here; busybox-static is the fallback), vhost-device-vsock +
# virtiofsd (see vm/src/qemu).
# containerd gets its own root/state/socket under a temp dir, runs in the throw-away netns
# (nsenter), and is configured for this kind of host: cgroupfs driver (SystemdCgroup =
# false: no systemd here) and restrict_oom_score_adj = true. Without the latter, runc
# fails every sandbox with "can't get final child's PID from pipe: EOF": containerd's
# CRI asks for oom_score_adj -998 for the pause process, and lowering it needs
# CAP_SYS_RESOURCE, which root lacks on this host, so runc's init dies while writing it.
#
# Environment: RUNS (20), SKIP_HULL=1 / SKIP_CONTAINERD=1 (one side only), HULLD and
# SANDBOX_BENCH (prebuilt binaries; else cargo builds them into CARGO_TARGET_DIR),
# HULL_GUEST_DIR, HULL_KERNEL_PARAMS (extra guest kernel parameters, e.g. no_timer_check
# against "IO-APIC + timer doesn't work" panics of TCG guests on a loaded host), TMPDIR
# (where the temp dir goes, default /var/tmp), KEEP=1 (keep the temp dir with the logs).
# Everything the script creates (processes, netns, bridge, iptables rules, CNI state,
# cgroups, mounts, dirs) is removed on exit, also on failure or Ctrl-C.

set -euo pipefail

RUNS="${RUNS:-20}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
log() { echo "[sandbox_bench $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root"
for t in containerd ctr runc umoci skopeo jq nsenter; do
    command -v "$t" >/dev/null || die "$t missing (apt-get install $t)"
done

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/sbb.XXXXXX")"
# hulld's state dir holds per-pod unix sockets: keep its path short (sun_path).
HSTATE="$(mktemp -d /run/sbb.XXXX)"
NS="hullbench-$$"
NET="hullbench-$$"
C="$WORK/c"
HULLD_PID="" CONTAINERD_PID="" BENCH_PID=""
CGROUPS_BEFORE="$(ls -d /sys/fs/cgroup/*/k8s.io 2>/dev/null || true)"
NETNS_BEFORE="$(ip netns list | awk '{print $1}' | sort)"

# Pids of processes whose command line mentions $1 (our unique temp paths only).
pids_mentioning() {
    local p
    for p in /proc/[0-9]*; do
        { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$1" && echo "${p#/proc/}"
    done
    return 0
}

# Stops and removes every pod a runtime still has (crictl, when installed).
drain_pods() {
    command -v crictl >/dev/null || return 0
    local p
    for p in $(timeout 20 crictl -r "unix://$1" pods -q 2>/dev/null); do
        timeout 60 crictl -r "unix://$1" stopp "$p" >/dev/null 2>&1 || true
        timeout 60 crictl -r "unix://$1" rmp "$p" >/dev/null 2>&1 || true
    done
}

stop_pid() {
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
    stop_pid "$BENCH_PID"
    if [[ -n $CONTAINERD_PID ]] && kill -0 "$CONTAINERD_PID" 2>/dev/null; then
        drain_pods "$C/containerd.sock"
    fi
    stop_pid "$CONTAINERD_PID"
    # Shims (and their pause processes) outlive containerd: ours name our socket dir.
    for p in $(pids_mentioning "$C/"); do kill -9 "$p" 2>/dev/null; done
    if [[ -n $HULLD_PID ]] && kill -0 "$HULLD_PID" 2>/dev/null; then
        drain_pods "$HSTATE/hull.sock"
    fi
    stop_pid "$HULLD_PID"
    # VMs and their helpers outlive hulld: theirs name our state dir.
    for p in $(pids_mentioning "$HSTATE/"); do kill -9 "$p" 2>/dev/null; done
    sleep 0.2
    # Pod netns containerd made (cni-*) and hulld made (hull-*) during this run.
    for n in $(comm -13 <(echo "$NETNS_BEFORE") <(ip netns list | awk '{print $1}' | sort)); do
        [[ $n == cni-* || $n == hull-* || $n == "$NS" ]] && ip netns del "$n" 2>/dev/null
    done
    # The bridge, its veths and every iptables rule the plugins added live in $NS.
    ip netns del "$NS" 2>/dev/null
    rm -f /var/lib/cni/results/"$NET"-* 2>/dev/null
    for p in /sys/fs/cgroup/*/k8s.io; do
        [[ -d $p ]] || continue
        find "$p" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
        grep -qxF "$p" <<<"$CGROUPS_BEFORE" || rmdir "$p" 2>/dev/null
    done
    grep -F -e " $WORK" -e " $HSTATE" /proc/mounts | awk '{print $2}' | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null; done
    if [[ -n ${KEEP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    rm -rf "$HSTATE"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n ${HULLD:-} && -n ${SANDBOX_BENCH:-} ]]; then
    BENCH=$SANDBOX_BENCH
else
    log "building hulld and the bench client (cargo, $CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build -q -p hulld --bin hulld --example sandbox_bench -j2)
    HULLD="$CARGO_TARGET_DIR/debug/hulld"
    BENCH="$CARGO_TARGET_DIR/debug/examples/sandbox_bench"
fi
export SANDBOX_BENCH_LOG_DIR="$WORK/logs"

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
mkdir -p "$WORK/cni"
cat >"$WORK/cni/10-bench.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$NET",
  "plugins": [
    { "type": "bridge", "bridge": "hbench0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.77.0.0/24" }]],
                "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$WORK/ipam" } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON

# Runs the bench client in the background and waits, so INT/TERM reach our traps at once
# (bash runs traps only after a foreground command returns).
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

# --- hulld -------------------------------------------------------------------------------
if [[ -z "${SKIP_HULL:-}" ]]; then
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
        [[ -n ${HULL_KERNEL_PARAMS:-} ]] && echo "kernel_params = \"$HULL_KERNEL_PARAMS\""
        echo "[cni]"
        echo "conf_dir = \"$WORK/cni\""
        echo "bin_dirs = [\"/usr/lib/cni\"]"
        echo "runtime_netns = \"/run/netns/$NS\""
        echo "[streaming]"
        echo "address = \"127.0.0.1:0\""
    } >"$WORK/hull.toml"
    setsid "$HULLD" --config "$WORK/hull.toml" >"$WORK/hulld.log" 2>&1 </dev/null &
    HULLD_PID=$!
    wait_socket "$HSTATE/hull.sock" "$HULLD_PID" ||
        die "hulld did not start: $(tail -5 "$WORK/hulld.log")"
    log "hulld: $RUNS pods"
    accel=$(grep -qwE 'vmx|svm' /proc/cpuinfo && echo KVM || echo TCG)
    run_bench env SANDBOX_BENCH_JSON="$WORK/hull.json" "$BENCH" "$HSTATE/hull.sock" "$RUNS" \
        "hulld (QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), $accel)"
    stop_pid "$HULLD_PID"
    HULLD_PID=""
fi

# --- containerd + runc ---------------------------------------------------------------------
if [[ -z "${SKIP_CONTAINERD:-}" ]]; then
    log "building a local pause image"
    mkdir -p "$WORK/pause"
    cat >"$WORK/pause/pause.c" <<'C'
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
C
    umoci init --layout "$WORK/oci"
    umoci new --image "$WORK/oci:pause"
    umoci unpack --image "$WORK/oci:pause" "$WORK/bundle" >/dev/null
    if command -v gcc >/dev/null && gcc -static -Os -s -o "$WORK/bundle/rootfs/pause" "$WORK/pause/pause.c"; then
        entry=(--config.entrypoint /pause)
    else
        log "no gcc: the pause process is busybox-static's sleep"
        mkdir -p "$WORK/bundle/rootfs/bin"
        cp /bin/busybox "$WORK/bundle/rootfs/bin/busybox"
        entry=(--config.entrypoint /bin/busybox --config.cmd sleep --config.cmd 2147483647)
    fi
    umoci repack --image "$WORK/oci:pause" "$WORK/bundle"
    umoci config --image "$WORK/oci:pause" "${entry[@]}"
    skopeo copy -q "oci:$WORK/oci:pause" "docker-archive:$WORK/pause.tar:localhost/hull-pause:bench"

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
    # nsenter, not `ip netns exec`: the latter also remounts /sys, which hides the cgroup
    # mounts from runc ("no cgroup mount found in mountinfo").
    setsid nsenter --net="/run/netns/$NS" containerd --config "$C/config.toml" \
        >"$WORK/containerd.log" 2>&1 </dev/null &
    CONTAINERD_PID=$!
    wait_socket "$C/containerd.sock" "$CONTAINERD_PID" ||
        die "containerd did not start: $(tail -5 "$WORK/containerd.log")"
    ctr -a "$C/containerd.sock" -n k8s.io image import "$WORK/pause.tar" >/dev/null
    log "containerd: $RUNS pods"
    run_bench env SANDBOX_BENCH_JSON="$WORK/containerd.json" "$BENCH" "$C/containerd.sock" "$RUNS" \
        "containerd $(containerd --version | awk '{print $3}') + runc $(runc --version | head -1 | awk '{print $3}')" ||
        die "containerd side failed; containerd log: $(tail -5 "$WORK/containerd.log")"
fi

# --- side by side ----------------------------------------------------------------------
[[ -s $WORK/hull.json && -s $WORK/containerd.json ]] || exit 0
echo
echo "RunPodSandbox, $RUNS sequential runs, ms"
jq -rn --slurpfile h "$WORK/hull.json" --slurpfile c "$WORK/containerd.json" '
  def f: if . == null then "-" else (. * 10 | round / 10 | tostring) end;
  def row($name; $hv; $cv): [$name, ($hv.p50 | f), ($hv.p90 | f), ($cv.p50 | f), ($cv.p90 | f)] | @tsv;
  ($h[0].phases) as $H | ($c[0].phases) as $C |
  (["phase", "hull p50", "hull p90", "containerd p50", "containerd p90"] | @tsv),
  row("RunPodSandbox (client)"; $H["client: RunPodSandbox"]; $C["client: RunPodSandbox"]),
  ($H | to_entries[] | select(.key | startswith("hulld: ")) |
     row(.key | sub("^hulld: "; "  hull phase: "); .value; null)),
  row("RunPodSandbox - guest boot"; $H["client: RunPodSandbox - agent_ready"]; null),
  row("StopPodSandbox (client)"; $H["client: StopPodSandbox"]; $C["client: StopPodSandbox"]),
  row("RemovePodSandbox (client)"; $H["client: RemovePodSandbox"]; $C["client: RemovePodSandbox"]),
  "",
  ( ["ratio", "p50", "p90"] | @tsv),
  ( [$H["client: RunPodSandbox - agent_ready"], $C["client: RunPodSandbox"]] as [$a, $b] |
    ["hull without guest boot / containerd total", ($a.p50 / $b.p50 * 100 | round / 100 | tostring),
     ($a.p90 / $b.p90 * 100 | round / 100 | tostring)] | @tsv),
  ( [$H["hulld: host side (netns..vm_start)"], $C["client: RunPodSandbox"]] as [$a, $b] |
    ["hull host side (no guest code) / containerd total", ($a.p50 / $b.p50 * 100 | round / 100 | tostring),
     ($a.p90 / $b.p90 * 100 | round / 100 | tostring)] | @tsv),
  ( [$H["client: RunPodSandbox"], $C["client: RunPodSandbox"]] as [$a, $b] |
    ["hull total / containerd total", ($a.p50 / $b.p50 * 100 | round / 100 | tostring),
     ($a.p90 / $b.p90 * 100 | round / 100 | tostring)] | @tsv)
' | column -t -s $'\t'
