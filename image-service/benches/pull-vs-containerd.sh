#!/usr/bin/env bash
# Pulls the same images from the same local docker-registry with hull-image and with
# Debian's containerd (ctr), N times each, into an empty store every time, and prints
# the p50 and p90 of each and the ratio hull/containerd.
#
# Both sides are cold and do the same work: containerd's `ctr images pull` fetches the
# blobs into its content store (fsynced) and unpacks them into its overlayfs
# snapshotter; hull's pull fetches (fsynced, verified) and unpacks every layer before it
# returns. Between runs each side deletes everything it stored (`ctr images rm --sync`
# garbage-collects content and snapshots; hull's store is removed), then `sync`, so no
# run pays for an earlier run's writeback. Runs alternate between the two.
#
#   [HULL_BENCH_DIR=/mnt/x] image-service/benches/pull-vs-containerd.sh [-n N] [image ...]
#
# Needs root, docker-registry, containerd (apt-get install containerd) and cargo.
# Default images: big:latest (busybox + /usr/include + /usr/lib/python3.11 as layers)
# and busybox:latest, built from local files by the build-test-images example.
set -euo pipefail

N=5
if [[ "${1:-}" == "-n" ]]; then N=$2; shift 2; fi
IMAGES=("$@")
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=(big:latest busybox:latest)

REPO=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
for tool in docker-registry containerd ctr curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install docker-registry containerd" >&2; exit 1; }
done
# HULL_BENCH_BIN: a dir with pull-bench and build-test-images already built (no cargo).
BIN=${HULL_BENCH_BIN:-$CARGO_TARGET_DIR/release/examples}
[[ -n ${HULL_BENCH_BIN:-} ]] || (cd "$REPO" && cargo build --release -q -p hull-image --examples)

# Everything (registry, both stores) lives under HULL_BENCH_DIR (default /var/tmp), so
# both sides write to the same file system; point it at another mount to compare there.
WORK=$(mktemp -d "${HULL_BENCH_DIR:-/var/tmp}/hull-pull-bench.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    # containerd leaves its overlay snapshots mounted only while in use; be safe anyway.
    grep -o "$WORK[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $REG
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://$REG/v2/" >/dev/null || { echo "registry did not start" >&2; cat "$WORK/registry.log" >&2; exit 1; }

BIG_DIRS=()
for d in /usr/include /usr/lib/python3.11; do [[ -d $d ]] && BIG_DIRS+=(--big-dir "$d"); done
"$BIN/build-test-images" --registry "$REG" "${BIG_DIRS[@]}"

SOCK=$WORK/containerd.sock
cat >"$WORK/containerd.toml" <<TOML
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
TOML
containerd --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ctr -a "$SOCK" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr -a "$SOCK" version >/dev/null || { echo "containerd did not start" >&2; tail "$WORK/containerd.log" >&2; exit 1; }

now_ms() { date +%s%3N; }
refs=(); img_args=()
for img in "${IMAGES[@]}"; do refs+=("$REG/$img"); img_args+=(--image "$img"); done
# Runs alternate between the two, so load from elsewhere on the machine hits both alike.
ctr_times=(); hull_times=()
for i in $(seq "$N"); do
    start=$(now_ms)
    for ref in "${refs[@]}"; do
        ctr -a "$SOCK" -n bench images pull --plain-http "$ref" >/dev/null
    done
    ctr_times+=($(( $(now_ms) - start )))
    ctr -a "$SOCK" -n bench images rm --sync "${refs[@]}" >/dev/null
    left=$(ctr -a "$SOCK" -n bench content ls -q | wc -l)
    snaps=$(ctr -a "$SOCK" -n bench snapshots ls | tail -n +2 | wc -l)
    [[ $left -eq 0 && $snaps -eq 0 ]] || { echo "containerd store not empty after run $i ($left blobs, $snaps snapshots)" >&2; exit 1; }
    sync
    # pull-bench prints the time of its pulls (into an empty store) and flushes after.
    t=$("$BIN/pull-bench" --registry "$REG" "${img_args[@]}" -n 1 --root "$WORK/hull")
    hull_times+=("$t")
    sync
done

# Nearest-rank percentile: pct P of the arguments after it.
pct() { local p=$1; shift; printf '%s\n' "$@" | sort -n | awk -v p="$p" '{a[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; print a[i]}'; }
C=$(pct 50 "${ctr_times[@]}"); C90=$(pct 90 "${ctr_times[@]}")
H=$(pct 50 "${hull_times[@]}"); H90=$(pct 90 "${hull_times[@]}")
echo "images: ${IMAGES[*]}  runs: $N  dir: $(df --output=fstype "$WORK" | tail -1) $WORK"
echo "containerd ms: ${ctr_times[*]}"
echo "hull       ms: ${hull_times[*]}"
echo "p50 containerd: ${C} ms   p90: ${C90} ms"
echo "p50 hull:       ${H} ms   p90: ${H90} ms"
awk -v h="$H" -v c="$C" 'BEGIN { printf "ratio hull/containerd (p50): %.2f\n", h / c }'
