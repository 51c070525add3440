#!/usr/bin/env bash
# Real Kubernetes on hull, as root:
#
#   test/k8s/run.sh [standalone] [cluster] [twonode]      (default: all three, in order)
#   test/k8s/run.sh bench                                  (benchmark; see bench.sh)
#
# 1. standalone: a kubelet without API server runs static pods on a throw-away hulld.
# 2. cluster: etcd, kube-apiserver (certificates made here), kube-controller-manager,
#    kube-scheduler, kube-proxy (iptables, a hostNetwork DaemonSet pod: host isolation) and
#    a kubelet on hulld make a one-node cluster, driven by kubectl.
# 3. twonode: a second hulld + kubelet join that cluster (runs after cluster).
#
# The Kubernetes binaries come from test/k8s/build.sh (built once per version, cached),
# crictl from test/tools/cri-tools.sh, hulld from $HULLD or `cargo build -p hulld`, the
# guest from $HULL_GUEST_DIR (default /var/lib/hull/guest). Images: critest's stand-ins
# pushed to a docker-registry on 127.0.0.1:5000, mirrored for registry.k8s.io in each
# hulld's own config, and a private copy on an htpasswd registry on 127.0.0.1:5001.
#
# Everything runs in a network namespace of its own (hk8s-<pid>): the registries, the
# control plane, hulld, kubelet and kube-proxy, the pod bridges (hk8s1, hk8s2 on
# 10.244.N.0/24) and kube-proxy's iptables rules. Nothing listens on the host's ports or
# touches its firewall; kubelet's cgroups live under /hull-k8s-<run>-nodeN. The host-wide
# sysctls kubelet sets (vm.overcommit_memory, kernel.panic, ...) are put back at the end.
# Everything started is stopped on exit, failure or Ctrl-C.
#
# Prints "N passed, N failed" last; exit code 0 when all passed, 1 when a test failed,
# 2 when the set-up failed.
#
# Environment: HULLD, HULL_GUEST_DIR, K8S_VERSION (default: build.sh's), K8S_LOG_DIR
# (default /var/tmp/hull-k8s-logs/<UTC time>), HULL_LOG_LEVEL (hulld's log filter),
# KUBELET_V (kubelet's -v, default 2), K8S_KEEP=1 (keep the temp dirs).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export HOME="${HOME:-/root}"
export PATH="$PATH:$HOME/.cargo/bin:/usr/local/cargo-tools/bin"
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$HERE/lib/common.sh"

SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(standalone cluster twonode)
for s in "${SCENARIOS[@]}"; do
    case $s in
        standalone | cluster | twonode | bench) ;;
        -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown scenario $s (standalone, cluster, twonode, bench)" ;;
    esac
done
[[ " ${SCENARIOS[*]} " == *" twonode "* && " ${SCENARIOS[*]} " != *" cluster "* ]] &&
    die "twonode joins the cluster of scenario cluster: run both"

# ---- outside: binaries, then the network namespace, then this script again inside it ----
if [[ ${HULL_K8S_INNER:-0} != 1 ]]; then
    [[ $EUID -eq 0 ]] || die "run as root: hulld and kubelet need it"
    for tool in docker-registry etcd umoci skopeo jq gcc ip curl openssl htpasswd nsenter go iptables; do
        command -v "$tool" >/dev/null || die "missing $tool (packaging/deps.sh installs it)"
    done
    BIN=$("$HERE/build.sh" ${K8S_VERSION:+"$K8S_VERSION"}) || die "building Kubernetes failed"
    CRI_TOOLS=$("$REPO/test/tools/cri-tools.sh" 1.36.0) || die "building crictl failed"
    if [[ -n ${HULLD:-} ]]; then
        [[ -x $HULLD ]] || die "HULLD=$HULLD is not an executable"
    else
        log "cargo build -p hulld -p hull-agent"
        (cd "$REPO" && cargo build -p hulld -p hull-agent --locked -q) || die "cargo build -p hulld failed"
        HULLD=${CARGO_TARGET_DIR:-$REPO/target}/debug/hulld
    fi
    # hull-agent runs host-isolation pods (kube-proxy's): $HULL_AGENT, else beside hulld.
    HULL_AGENT=${HULL_AGENT:-$(dirname "$HULLD")/hull-agent}
    [[ -x $HULL_AGENT ]] || die "no hull-agent at $HULL_AGENT (set HULL_AGENT)"
    NETNS=hk8s-$$
    ip netns add "$NETNS" || die "cannot create network namespace $NETNS"
    CHILD=""
    trap '[[ -n $CHILD ]] && kill -TERM "$CHILD" 2>/dev/null' INT TERM HUP
    HULL_K8S_INNER=1 BIN=$BIN HULLD=$HULLD HULL_AGENT=$HULL_AGENT NETNS=$NETNS PATH="$CRI_TOOLS:$PATH" \
        nsenter --net="/run/netns/$NETNS" -- "${BASH_SOURCE[0]}" "${SCENARIOS[@]}" &
    CHILD=$!
    while :; do
        wait "$CHILD"
        rc=$?
        kill -0 "$CHILD" 2>/dev/null || break
    done
    ip netns del "$NETNS" || log "cannot remove network namespace $NETNS"
    exit "$rc"
fi

# ---- inside the suite's network namespace ------------------------------------------------
# shellcheck source-path=SCRIPTDIR source=lib/node.sh
source "$HERE/lib/node.sh"
# shellcheck source-path=SCRIPTDIR source=lib/control.sh
source "$HERE/lib/control.sh"
# shellcheck source-path=SCRIPTDIR source=standalone.sh
source "$HERE/standalone.sh"
# shellcheck source-path=SCRIPTDIR source=cluster.sh
source "$HERE/cluster.sh"
# shellcheck source-path=SCRIPTDIR source=twonode.sh
source "$HERE/twonode.sh"
# shellcheck source-path=SCRIPTDIR source=bench.sh
source "$HERE/bench.sh"

HULLD_BIN=$HULLD
HULL_AGENT_BIN=$HULL_AGENT
GUEST_DIR=${HULL_GUEST_DIR:-/var/lib/hull/guest}
for f in "$GUEST_DIR/vmlinux" "$GUEST_DIR/initramfs.img"; do
    [[ -f $f ]] || die "guest file $f is missing: run packaging/guest/build.sh all (or set HULL_GUEST_DIR)"
done
LOG_DIR=${K8S_LOG_DIR:-/var/tmp/hull-k8s-logs/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$LOG_DIR" || die "cannot create $LOG_DIR"
WORK=$(mktemp -d /var/tmp/hull-k8s.XXXXXX) || die "mktemp"
# Per-pod unix sockets live under the state dir: keep its path short (sun_path: 108 bytes).
STATE=$(mktemp -d /run/hk.XXXX) || die "mktemp"
RUN=${STATE#/run/hk.}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
save_sysctls
echo "# crictl: every endpoint is given on its command line" >"$WORK/crictl.yaml"

# The namespace's own network: lo, the node addresses, forwarding between the bridges.
NODE_IPS[1]=10.240.0.1
NODE_IPS[2]=10.240.0.2
ip link set lo up && ip addr add "${NODE_IPS[1]}/32" dev lo && ip addr add "${NODE_IPS[2]}/32" dev lo ||
    die "cannot set up the node addresses"
sysctl -q -w net.ipv4.ip_forward=1 >/dev/null || die "cannot enable forwarding in $NETNS"

log "Kubernetes $("$BIN/kubelet" --version | cut -d' ' -f2) from $BIN; hulld $HULLD_BIN; guest $GUEST_DIR"
log "network namespace $NETNS, work dir $WORK, state dir $STATE, logs $LOG_DIR"
SUITE_START=$SECONDS
make_pki
start_registries
for s in "${SCENARIOS[@]}"; do
    start=$SECONDS
    "scenario_$s"
    log "=== scenario $s: $((SECONDS - start))s"
done
log "suite: $((SECONDS - SUITE_START))s"
kubelet_warnings
if ((FAILED > 0)); then
    log "failed tests:"
    printf '  - %s\n' "${FAILURES[@]}" >&2
fi
echo "k8s: $PASSED passed, $FAILED failed"
((FAILED == 0)) || exit 1
exit 0
