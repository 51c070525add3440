# The benchmark of test/k8s/run.sh (sourced; `test/k8s/run.sh bench`, not part of the
# default run): a benchmark, not a timed test: it fails nothing on numbers.
#
# 1. Pod startup as kubelet sees it: BENCH_PODS (20) busybox pods, one after another (each
#    created once the one before is Running, then deleted), on a node whose kubelet runs on
#    hulld, then on a node whose same kubelet build, with the same config, runs on Debian's
#    containerd + runc. kubelet's own figures, from its "Observed pod startup duration"
#    lines: podStartE2EDuration (creation → running, as watched) and podStartSLOduration
#    (the same less image pulls). One warm-up pod per runtime pulls the image first.
#    hulld's RunPodSandbox time (guest boot to agent-ready under QEMU TCG here) is shown
#    beside it.
# 2. CRI calls kubelet makes while idle: 5 pods, BENCH_IDLE (300) seconds, per-RPC counts
#    and p50/p99 latency from hulld's per-call log lines (rpc_stats.sh).
# Results: $LOG_DIR/bench.md.
# shellcheck shell=bash

BENCH_PODS=${BENCH_PODS:-20}
BENCH_IDLE=${BENCH_IDLE:-300}

# start_containerd N: Debian's containerd for node N (own root, state, socket, CNI network,
# the registry mirror), configured as test/bench/sandbox_bench.sh explains.
start_containerd() {
    local n=$1 dir st
    dir=$WORK/$SCEN-node$n st=$STATE/$SCEN$n
    mkdir -p "$dir/cni" "$st"
    NODE_DIRS[$n]=$dir
    NODE_STATES[$n]=$st
    HULL_SOCKS[$n]=$st/containerd.sock
    jq --arg name "hk8s$n" --arg br "hk8s$n" --arg subnet "10.244.$n.0/24" --arg ipam "$dir/ipam" '
        .name = $name | .plugins[0].bridge = $br | .plugins[0].ipMasq = false
        | .plugins[0].ipam.ranges = [[{subnet: $subnet}]] | .plugins[0].ipam.dataDir = $ipam' \
        "$REPO/packaging/cni/10-hull-bridge.conflist" >"$dir/cni/10-hk8s.conflist" || die "CNI config"
    cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd-root"
state = "$st/state"
[grpc]
  address = "$st/containerd.sock"
[ttrpc]
  address = "$st/containerd-ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.k8s.io"]
    endpoint = ["http://$REGISTRY"]
EOF
    start_proc "hulld-$n" containerd --config "$dir/containerd.toml"
    wait_up "hulld-$n" 60 cri "$n" version
}

# startup_figures NODE: "e2e slo" seconds per bench pod, from kubelet N's log.
startup_figures() {
    grep -h '"Observed pod startup duration"' "$(logf "kubelet-$1")" | grep 'pod="default/bench-' |
        sed -n 's/.*podStartSLOduration=\([0-9.]*\).*podStartE2EDuration="\([0-9.]*\)\(m\{0,1\}s\)".*/\2 \3 \1/p' |
        awk '{e = ($2 == "ms") ? $1 / 1000 : $1; print e, $3}'
}

# pct FILE COLUMN P: the P-th percentile of a column.
pct() { sort -n -k"$2" "$1" | awk -v c="$2" -v p="$3" '{a[NR] = $c} END {i = int((NR - 1) * p) + 1; printf "%.2f", a[i]}'; }

# bench_pods NODE: the warm-up pod, then BENCH_PODS pods one after another on NODE.
bench_pods() {
    local node=$1 i
    for i in $(seq 0 "$BENCH_PODS"); do
        k run "bench-$i" --image="$BUSYBOX" --restart=Never \
            --overrides="{\"spec\": {\"nodeName\": \"$node\", \"terminationGracePeriodSeconds\": 1}}" \
            -- sleep 3600 >/dev/null || die "kubectl run bench-$i failed"
        k wait --for=condition=Ready "pod/bench-$i" --timeout=300s >/dev/null || die "bench-$i not Ready"
        k delete pod "bench-$i" --wait=false >/dev/null
        log "bench-$i running on $node"
    done
    k delete pod -l run --wait=true --timeout=300s >/dev/null 2>&1
}

scenario_bench() {
    log "=== benchmark: pod startup (hull vs containerd), idle CRI calls"
    SCEN=b
    start_control_plane
    start_hulld 1
    start_kubelet 1 "$WORK/node1.kubeconfig"
    wait_for 120 "node1 registers" k get node node1
    k wait --for=condition=Ready node/node1 --timeout=180s >/dev/null || die "node1 not Ready"
    wait_for 120 "service account" k get serviceaccount default || die "no service account"
    local since=$SECONDS
    bench_pods node1
    # Idle: 5 pods, then count what kubelet calls.
    local i from to
    for i in 1 2 3 4 5; do
        k run "idle-$i" --image="$BUSYBOX" --restart=Never -- sleep 36000 >/dev/null
    done
    k wait --for=condition=Ready pod -l run --timeout=600s >/dev/null || die "idle pods not Ready"
    sleep 20
    from=$(date -u +%Y-%m-%dT%H:%M:%S)
    log "idle with 5 pods for ${BENCH_IDLE}s from $from"
    sleep "$BENCH_IDLE"
    to=$(date -u +%Y-%m-%dT%H:%M:%S)
    "$HERE/rpc_stats.sh" "$(logf hulld-1)" "$from" "$to" >"$LOG_DIR/rpc-idle.md"
    k delete pod -l run --wait=true --timeout=300s >/dev/null 2>&1
    startup_figures 1 | tail -n "$BENCH_PODS" >"$WORK/hull.txt"
    "$HERE/rpc_stats.sh" "$(logf hulld-1)" | grep '^| RunPodSandbox ' >"$WORK/hull-rps.txt" || true
    log "hull side: $((SECONDS - since))s"

    stop_proc kubelet-1
    remove_pods 1
    stop_proc hulld-1 15
    k delete node node1 >/dev/null

    since=$SECONDS
    start_containerd 2
    start_kubelet 2 "$WORK/node2.kubeconfig"
    wait_for 120 "node2 registers" k get node node2
    k wait --for=condition=Ready node/node2 --timeout=180s >/dev/null || die "node2 (containerd) not Ready"
    bench_pods node2
    startup_figures 2 | tail -n "$BENCH_PODS" >"$WORK/containerd.txt"
    log "containerd side: $((SECONDS - since))s"

    local h50 h90 c50 c90 hs50 cs50
    h50=$(pct "$WORK/hull.txt" 1 0.5) h90=$(pct "$WORK/hull.txt" 1 0.9) hs50=$(pct "$WORK/hull.txt" 2 0.5)
    c50=$(pct "$WORK/containerd.txt" 1 0.5) c90=$(pct "$WORK/containerd.txt" 1 0.9) cs50=$(pct "$WORK/containerd.txt" 2 0.5)
    {
        echo "## Pod startup as kubelet $("$BIN/kubelet" --version | cut -d' ' -f2) sees it ($(wc -l <"$WORK/hull.txt") + $(wc -l <"$WORK/containerd.txt") pods, one at a time)"
        echo
        echo "| runtime | E2E p50 s | E2E p90 s | SLO (no pulls) p50 s |"
        echo "|---|---:|---:|---:|"
        echo "| hull (QEMU TCG guest) | $h50 | $h90 | $hs50 |"
        echo "| containerd $(containerd --version | awk '{print $3}') + runc | $c50 | $c90 | $cs50 |"
        echo "| ratio hull / containerd | $(awk -v a="$h50" -v b="$c50" 'BEGIN {printf "%.1f", a / b}') | $(awk -v a="$h90" -v b="$c90" 'BEGIN {printf "%.1f", a / b}') | |"
        echo
        echo "hulld RunPodSandbox over the run (VM boot to agent-ready included):"
        echo "| RPC | calls | per min | errors | p50 ms | p99 ms | max ms |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        cat "$WORK/hull-rps.txt"
        echo
        echo "## CRI calls from kubelet, idle, 5 pods, ${BENCH_IDLE}s (hulld's log)"
        echo
        cat "$LOG_DIR/rpc-idle.md"
    } >"$LOG_DIR/bench.md"
    cat "$LOG_DIR/bench.md" >&2
}
