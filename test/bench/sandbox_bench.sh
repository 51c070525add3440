#!/usr/bin/env bash
# RunPodSandbox benchmark: hulld (microVM per pod, QEMU backend) next to Debian's
# containerd + runc, both with the same CNI conflist (bridge + host-local + portmap from
# /usr/lib/cni), both inside a throw-away netns so the host network is not touched.
#
#   sudo test/bench/sandbox_bench.sh            # RUNS=20 by default
#
# Needs: root, the guest in /var/lib/hull/guest (packaging/guest/build.sh), containerd,
# runc, umoci, skopeo (apt), vhost-device-vsock + virtiofsd (see vm/src/qemu).
# containerd gets its own root/state/socket under a temp dir and a local pause image
# built from busybox-static (no registry access needed). SKIP_HULL=1 runs containerd only.
#
# Known: on the development host (cgroup v1, hulld's shell in a nested memory cgroup, a
# `0::/` line without a cgroup2 mount) containerd 1.6.20's sandbox still fails in runc
# ("can't get final child's PID from pipe: EOF") although runc alone runs a bundle there;
# the hulld half of the benchmark is unaffected and is printed first.

set -euo pipefail

RUNS="${RUNS:-20}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d /tmp/sbb.XXXXXX)"
NS="hullbench-$$"
NET="hullbench-$$"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PIDS=()

log() { echo "[sandbox_bench] $*" >&2; }

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "/var/lib/cni/networks/$NET"
    umount -R "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
for t in containerd ctr runc umoci skopeo; do
    command -v "$t" >/dev/null || { echo "$t missing (apt-get install $t)" >&2; exit 1; }
done

log "building hulld and the bench client"
(cd "$ROOT" && cargo build -q -p hulld --bin hulld --example sandbox_bench)
HULLD="$CARGO_TARGET_DIR/debug/hulld"
BENCH="$CARGO_TARGET_DIR/debug/examples/sandbox_bench"

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
mkdir -p "$WORK/cni"
cat >"$WORK/cni/10-bench.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$NET",
  "plugins": [
    { "type": "bridge", "bridge": "hbench0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.77.0.0/24" }]], "routes": [{ "dst": "0.0.0.0/0" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON

wait_socket() {
    for _ in $(seq 200); do [[ -S "$1" ]] && return 0; sleep 0.1; done
    echo "no socket at $1" >&2; return 1
}

# --- hulld -------------------------------------------------------------------------------
if [[ -z "${SKIP_HULL:-}" ]]; then
cat >"$WORK/hull.toml" <<TOML
root_dir = "$WORK/h/lib"
state_dir = "$WORK/h/run"
socket = "$WORK/h/hull.sock"
log_level = "warn"
[cni]
conf_dir = "$WORK/cni"
bin_dirs = ["/usr/lib/cni"]
runtime_netns = "/run/netns/$NS"
TOML
"$HULLD" --config "$WORK/hull.toml" 2>"$WORK/hulld.log" &
PIDS+=($!)
wait_socket "$WORK/h/hull.sock"
log "hulld: $RUNS pods"
"$BENCH" "$WORK/h/hull.sock" "$RUNS" "hulld (QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), $(grep -qwE 'vmx|svm' /proc/cpuinfo && echo KVM || echo TCG))"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()
fi

# --- containerd + runc ---------------------------------------------------------------------
log "building a local pause image from busybox-static"
umoci init --layout "$WORK/oci"
umoci new --image "$WORK/oci:pause"
umoci unpack --rootless --image "$WORK/oci:pause" "$WORK/bundle" >/dev/null 2>&1 || umoci unpack --image "$WORK/oci:pause" "$WORK/bundle"
mkdir -p "$WORK/bundle/rootfs/bin"
cp /bin/busybox "$WORK/bundle/rootfs/bin/busybox"
umoci repack --image "$WORK/oci:pause" "$WORK/bundle"
umoci config --image "$WORK/oci:pause" --config.entrypoint /bin/busybox --config.cmd sleep --config.cmd 2147483647
skopeo copy -q "oci:$WORK/oci:pause" "docker-archive:$WORK/pause.tar:localhost/hull-pause:bench"

C="$WORK/c"
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
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
TOML
# nsenter, not `ip netns exec`: the latter also remounts /sys, which hides the cgroup
# mounts from runc ("no cgroup mount found in mountinfo").
nsenter --net="/run/netns/$NS" containerd --config "$C/config.toml" 2>"$WORK/containerd.log" &
PIDS+=($!)
wait_socket "$C/containerd.sock"
ctr -a "$C/containerd.sock" -n k8s.io image import "$WORK/pause.tar" >/dev/null
log "containerd: $RUNS pods"
"$BENCH" "$C/containerd.sock" "$RUNS" "containerd $(containerd --version | awk '{print $3}') + runc $(runc --version | head -1 | awk '{print $3}')"
