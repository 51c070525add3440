# A node of test/k8s/run.sh (sourced): the registries, one hulld per node (its own
# config, socket, state dir, CNI network) and one kubelet per node, crictl against a
# node's hulld, and the checks that a pod left nothing behind on the host.
# Everything runs inside the suite's network namespace (run.sh re-executes itself there),
# so ports, bridge names and subnets cannot meet another run's.
# shellcheck shell=bash

REGISTRY=127.0.0.1:5000      # plain, the mirror of registry.k8s.io / k8s.gcr.io / gcr.io
AUTH_REGISTRY=127.0.0.1:5001 # htpasswd-protected, for imagePullSecrets
AUTH_USER=hull AUTH_PASS=k8s-suite-secret
declare -A HULL_SOCKS=() NODE_IPS=() NODE_DIRS=() NODE_STATES=()
SCEN=x # the scenario's short name (s, c, b): node dirs, cgroups and logs are per scenario
CGROUP_ROOTS=()

# registry NAME ADDR [HTPASSWD]: Debian's docker-registry with storage in $WORK.
registry() {
    local name=$1 addr=$2 htpasswd=${3:-}
    mkdir -p "$WORK/$name"
    {
        echo "version: 0.1"
        echo "log: {level: warn}"
        echo "storage: {filesystem: {rootdirectory: $WORK/$name}, delete: {enabled: true}}"
        echo "http: {addr: $addr}"
        [[ -z $htpasswd ]] || echo "auth: {htpasswd: {realm: hull-k8s, path: $htpasswd}}"
    } >"$WORK/$name.yml"
    start_proc "$name" /usr/bin/docker-registry serve "$WORK/$name.yml"
    wait_up "$name" 30 curl -s -o /dev/null -w '%{http_code}' "http://$addr/v2/"
}

start_registries() {
    registry registry "$REGISTRY"
    htpasswd -Bbc "$WORK/htpasswd" "$AUTH_USER" "$AUTH_PASS" 2>/dev/null || die "htpasswd failed"
    registry registry-auth "$AUTH_REGISTRY" "$WORK/htpasswd"
    log "building and pushing the test images (log: $LOG_DIR/images.log)"
    "$HERE/images.sh" "$REGISTRY" "$AUTH_REGISTRY" "$AUTH_USER:$AUTH_PASS" >"$LOG_DIR/images.log" 2>&1 ||
        die "building the test images failed; see $LOG_DIR/images.log"
    "$HERE/kube-proxy-image.sh" "$REGISTRY" "$BIN/kube-proxy" >>"$LOG_DIR/images.log" 2>&1 ||
        die "building the kube-proxy image failed; see $LOG_DIR/images.log"
}

# start_hulld N: hulld for node N: bridge hk8sN on 10.244.N.0/24, its own dirs.
start_hulld() {
    local n=$1 dir st host
    dir=$WORK/$SCEN-node$n st=$STATE/$SCEN$n
    mkdir -p "$dir/cni" "$dir/root" "$st"
    NODE_DIRS[$n]=$dir
    NODE_STATES[$n]=$st
    HULL_SOCKS[$n]=$st/hull.sock
    jq --arg name "hk8s$n" --arg br "hk8s$n" --arg subnet "10.244.$n.0/24" --arg ipam "$dir/ipam" '
        .name = $name
        | .plugins[0].bridge = $br
        | .plugins[0].ipMasq = false
        | .plugins[0].ipam.ranges = [[{subnet: $subnet}]]
        | .plugins[0].ipam.dataDir = $ipam' \
        "$REPO/packaging/cni/10-hull-bridge.conflist" >"$dir/cni/10-hk8s.conflist" ||
        die "cannot write node $n's CNI config"
    {
        echo "root_dir = \"$dir/root\""
        echo "state_dir = \"$st\""
        echo "socket = \"${HULL_SOCKS[$n]}\""
        echo "log_level = \"${HULL_LOG_LEVEL:-info,hulld::rpc=debug}\""
        echo "cgroup_driver = \"cgroupfs\""
        echo
        echo "[vm]"
        echo "kernel = \"$GUEST_DIR/vmlinux\""
        echo "initramfs = \"$GUEST_DIR/initramfs.img\""
        echo
        echo "[cni]"
        echo "conf_dir = \"$dir/cni\""
        echo
        echo "[streaming]"
        echo "address = \"127.0.0.1:0\""
        echo
        # kube-proxy's DaemonSet pod (hostNetwork, kube-system) runs with host isolation.
        echo "[host_isolation]"
        echo "agent = \"$HULL_AGENT_BIN\""
        for host in registry.k8s.io k8s.gcr.io gcr.io; do
            echo
            echo "[registry.hosts.\"$host\"]"
            echo "mirrors = [{ endpoint = \"http://$REGISTRY\" }]"
            echo "upstream = false"
        done
        # The private registry, pulled by its own name: hull speaks plain http only where
        # configured (containerd would try https first, then http, for a loopback host).
        echo
        echo "[registry.hosts.\"$AUTH_REGISTRY\"]"
        echo "plain_http = true"
    } >"$dir/hulld.toml"
    cp "$dir/hulld.toml" "$LOG_DIR/$SCEN-hulld-$n.toml"
    "$HULLD_BIN" --config "$dir/hulld.toml" --print-config >"$LOG_DIR/$SCEN-hulld-$n.effective.toml" 2>&1 ||
        die "hulld rejects node $n's config: $(cat "$LOG_DIR/$SCEN-hulld-$n.effective.toml")"
    start_proc "hulld-$n" "$HULLD_BIN" --config "$dir/hulld.toml"
    wait_up "hulld-$n" 60 cri "$n" version
}

# cri N ARGS...: crictl against node N's hulld.
cri() {
    local n=$1
    shift
    crictl --config "$WORK/crictl.yaml" --timeout 60s -r "unix://${HULL_SOCKS[$n]}" -i "unix://${HULL_SOCKS[$n]}" "$@"
}

# kubelet_config N STATIC_DIR READONLY_PORT: node N's KubeletConfiguration. What hull
# needs is marked; the rest keeps kubelet away from the host's defaults and other runs.
kubelet_config() {
    local n=$1 static=$2 ro=$3 dir
    dir=${NODE_DIRS[$n]}
    cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# hull: the CRI socket for both services, cgroupfs (hull's RuntimeConfig says so too).
containerRuntimeEndpoint: unix://${HULL_SOCKS[$n]}
imageServiceEndpoint: unix://${HULL_SOCKS[$n]}
cgroupDriver: cgroupfs
# hull: pod and container stats (CPU, memory, network, filesystem) come from the CRI: the
# processes run in the pod's VM, not in the pod cgroup cAdvisor would read.
featureGates:
  PodAndContainerStatsFromCRI: true
# This host is cgroup v1 (hybrid); kubelet 1.35+ refuses it unless told.
failCgroupV1: false
failSwapOn: false
# Per node and per run: cgroups, logs, ports.
cgroupRoot: /hull-k8s-$RUN-$SCEN-node$n
podLogsDir: $dir/pod-logs
volumePluginDir: $dir/flexvolume
address: ${NODE_IPS[$n]}
port: 10250
readOnlyPort: $ro
healthzBindAddress: 127.0.0.1
healthzPort: $((10247 + n))
staticPodPath: $static
fileCheckFrequency: 5s
syncFrequency: 10s
serializeImagePulls: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $WORK/pki/ca.crt}
authorization: {mode: AlwaysAllow}
tlsCertFile: $WORK/pki/node$n.crt
tlsPrivateKeyFile: $WORK/pki/node$n.key
evictionHard: {memory.available: "100Mi", nodefs.available: "200Mi", imagefs.available: "200Mi", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
shutdownGracePeriod: 0s
containerLogMaxSize: 1Mi
clusterDomain: cluster.local
EOF
}

# make_cgroups ROOT: kubelet wants its cgroupRoot to exist in every hierarchy (v1 here);
# a v1 cpuset starts empty, so it gets its parent's CPUs and memory nodes.
make_cgroups() {
    local root=$1 h
    CGROUP_ROOTS+=("$root")
    for h in /sys/fs/cgroup/*/; do
        [[ -e $h/cgroup.procs ]] || continue
        mkdir -p "$h$root" || die "cannot create cgroup $h$root"
        if [[ -e $h/cpuset.cpus ]]; then
            cat "$h/cpuset.cpus" >"$h$root/cpuset.cpus" && cat "$h/cpuset.mems" >"$h$root/cpuset.mems" ||
                die "cannot set up cpuset $h$root"
        fi
    done
}

# start_kubelet N [KUBECONFIG]: kubelet for node N; standalone (static pods only) without
# a kubeconfig.
start_kubelet() {
    local n=$1 kubeconfig=${2:-} dir args ro=0
    dir=${NODE_DIRS[$n]}
    mkdir -p "$dir/manifests" "$dir/kubelet" "$dir/pod-logs"
    [[ -z $kubeconfig ]] && ro=10255
    kubelet_config "$n" "$dir/manifests" "$ro" >"$dir/kubelet.yaml"
    cp "$dir/kubelet.yaml" "$LOG_DIR/$SCEN-kubelet-$n.yaml"
    make_cgroups "/hull-k8s-$RUN-$SCEN-node$n"
    args=(--config "$dir/kubelet.yaml" --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki"
        --hostname-override "node$n" --node-ip "${NODE_IPS[$n]}" --v "${KUBELET_V:-2}")
    [[ -n $kubeconfig ]] && args+=(--kubeconfig "$kubeconfig")
    start_proc "kubelet-$n" "$BIN/kubelet" "${args[@]}"
    wait_up "kubelet-$n" 120 curl -sf "http://127.0.0.1:$((10247 + n))/healthz"
}

# ---- what a pod leaves on the host -------------------------------------------------------
# record_pod N ID: remember a sandbox id for the clean-up (its netns).
record_pod() { echo "$2" >>"${NODE_DIRS[$1]}/pod-ids"; }

# leftovers N ID: prints what sandbox ID of node N left on the host; nothing when clean.
leftovers() {
    local n=$1 id=$2 dir=${NODE_DIRS[$1]} pid
    [[ -e /run/netns/hull-$id ]] && echo "netns hull-$id"
    [[ -e ${NODE_STATES[$n]}/sandboxes/$id ]] && echo "state dir ${NODE_STATES[$n]}/sandboxes/$id"
    [[ -e $dir/root/sandboxes/$id ]] && echo "dir $dir/root/sandboxes/$id"
    grep -rls "$id" "$dir/ipam" 2>/dev/null | sed 's/^/IPAM entry /'
    findmnt -rn -o TARGET | grep -F "$id" | sed 's/^/mount /'
    for pid in $(pgrep -f -- "$id"); do
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        echo "process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160)"
    done
    return 0
}

# veths N: host-side veths on node N's bridge.
veths() { ip -o link show master "hk8s$1" 2>/dev/null | wc -l; }

# remove_pods N: the pods hulld N still has (the clean-up of a failed run).
remove_pods() {
    local n=$1 id
    alive "hulld-$n" || return 0
    for id in $(timeout 30 cri "$n" pods -q 2>/dev/null); do
        record_pod "$n" "$id"
        timeout 90 cri "$n" stopp "$id" >/dev/null 2>&1
        timeout 90 cri "$n" rmp -f "$id" >/dev/null 2>&1 ||
            log "crictl rmp $id on node $n failed"
    done
}
