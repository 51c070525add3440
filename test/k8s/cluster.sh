# Scenario 2 of test/k8s/run.sh (sourced): a one-node cluster on hulld, driven by kubectl.
# shellcheck shell=bash

BUSYBOX=registry.k8s.io/e2e-test-images/busybox:1.29-2
NGINX=registry.k8s.io/e2e-test-images/nginx:1.14-2
HTTPD=registry.k8s.io/e2e-test-images/httpd:2.4.39-4
POD_TIMEOUT=300s # a pod is a VM under QEMU TCG here, on a shared, loaded machine

apply() { k apply -f - >/dev/null || fail "kubectl apply failed"; }
ready() { k wait --for=condition=Ready "pod/$1" --timeout="${2:-$POD_TIMEOUT}" >/dev/null || fail "pod $1 not Ready: $(pod_summary "$1")"; }
pod_summary() { k get pod "$1" -o json | jq -c '{phase: .status.phase, conditions: [.status.conditions[]? | select(.status != "True") | {type, reason, message}], containers: [.status.containerStatuses[]? | {name, state}]}' 2>&1 | cut -c1-800; }
phase_is() { [[ $(k get pod "$1" -o jsonpath='{.status.phase}') == "$2" ]]; }
# A long-running busybox pod.
sleeper() {
    k run "$1" --image="$BUSYBOX" --restart=Never -- sh -c 'trap "exit 0" TERM; while :; do sleep 1; done' >/dev/null ||
        fail "kubectl run $1 failed"
}
phase_in() { local p; p=$(k get pod "$1" -o jsonpath='{.status.phase}'); shift; [[ " $* " == *" $p "* ]]; }
logs_have() { k logs "$1" -c "$2" | grep -qx -- "$3"; }
peer_sees() { [[ $(k exec vols -c peer -- cat /ed/from-main /edm/from-main | tr '\n' ' ') == 'disk mem ' ]]; }
cm_is() { [[ $(k exec vols -c main -- cat /cm/a.txt) == "$1" ]]; }
images_are() { [[ $(k get pods -l app=web -o jsonpath='{range .items[*]}{.spec.containers[0].image} {end}') == "$1" ]]; }
# (Without them, the end of kube-proxy's log is what a failure shows.)
proxy_rules() {
    iptables-save -t nat | grep -q -- "-d $1/32" || { k -n kube-system logs ds/kube-proxy --tail=6 2>&1; return 1; }
}
# answers_from POD IP: an HTTP GET of IP:80 from POD answers with the stand-in's page.
# (nc, not wget: Debian's busybox-static wget segfaults, on the host too.)
http_get() { printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 "$1" 80; }
answers_from() { k exec "$1" -- sh -c "$(declare -f http_get); http_get $2" | grep -q 'Welcome to nginx!'; }
terminated() { [[ -n $(k get pod "$1" -o jsonpath='{.status.containerStatuses[0].state.terminated.reason}') ]]; }
no_pods_on() { [[ -z $(cri "$1" pods -q) ]]; }
delete_pods() { k delete pod "$@" --wait=false --ignore-not-found >/dev/null 2>&1; }

test_node_ready() {
    # kubelet answers its healthz before it has registered the node.
    wait_for 120 "node1 registers" k get node node1
    k wait --for=condition=Ready node/node1 --timeout=180s >/dev/null || fail "node1 not Ready: $(k get node node1 -o json | jq -c .status.conditions)"
    local rt
    rt=$(k get node node1 -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')
    [[ $rt == hull://* ]] || fail "node1's runtime is $rt, not hull"
    note "node1: $rt, kubelet $(k get node node1 -o jsonpath='{.status.nodeInfo.kubeletVersion}')"
    wait_for 120 "service account default exists" k get serviceaccount default
}

# kube-proxy's DaemonSet pod: Running on node1, answering its health check on the
# namespace's 127.0.0.1, and a host-isolation sandbox in hulld (verbose status).
kube_proxy_healthy() { curl -sf http://127.0.0.1:10256/healthz >/dev/null; }
test_kube_proxy_pod() {
    k -n kube-system rollout status daemonset/kube-proxy --timeout="$POD_TIMEOUT" >/dev/null ||
        fail "kube-proxy's DaemonSet not rolled out: $(k -n kube-system get pods -o wide)"
    wait_for 120 "kube-proxy answers on 127.0.0.1:10256" kube_proxy_healthy
    local id iso
    id=$(cri 1 pods -q --namespace kube-system --label k8s-app=kube-proxy | head -n1)
    [[ -n $id ]] || fail "no kube-proxy sandbox in hulld"
    record_pod 1 "$id"
    # crictl puts each key of hulld's verbose info at the top level, parsed.
    iso=$(cri 1 inspectp "$id" | jq -r '.info.isolation')
    [[ $iso == host ]] || fail "kube-proxy's pod isolation is $iso"
}

test_run_and_logs_follow() {
    k run logger --image="$BUSYBOX" --restart=Never -- \
        sh -c 'for i in 1 2 3 4 5 6 7 8; do echo "line $i"; sleep 1; done' >/dev/null || fail "kubectl run failed"
    wait_for 300 "logger running" phase_in logger Running Succeeded
    local out
    out=$(timeout 90 "$BIN/kubectl" --kubeconfig "$WORK/admin.kubeconfig" logs -f logger) || fail "kubectl logs -f did not end with the container: $out"
    [[ $(grep -c '^line ' <<<"$out") == 8 && $(tail -n1 <<<"$out") == "line 8" ]] || fail "logs -f printed: $out"
    wait_for 60 "logger Succeeded" phase_is logger Succeeded
    delete_pods logger
}

test_exec_tty() {
    sleeper shell
    ready shell
    local out
    out=$(script -qec "$BIN/kubectl --kubeconfig $WORK/admin.kubeconfig exec -it shell -- tty" /dev/null) ||
        fail "kubectl exec -it failed: $out"
    [[ $out == */dev/pts/* ]] || fail "tty in kubectl exec -it answered: $out"
    out=$(k exec shell -- tty 2>&1)
    [[ $out == *"not a tty"* ]] || fail "tty without -t answered: $out"
    # stdout only: kubectl adds "command terminated with exit code 3" on stderr.
    out=$(printf 'echo $((6 * 7))\nexit 3\n' | k exec -i shell -- sh 2>/dev/null)
    local rc=$?
    [[ $out == 42 && $rc == 3 ]] || fail "exec -i: output $out, exit $rc (want 42, 3)"
}

test_attach() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: echoer}
spec:
  containers:
  - name: echoer
    image: $BUSYBOX
    stdin: true
    command: [sh, -c, 'echo ready; while read l; do echo "got:\$l"; done; echo "stdin closed"; sleep 3600']
EOF
    ready echoer
    local out
    out=$(printf 'hello\n' | timeout 30 "$BIN/kubectl" --kubeconfig "$WORK/admin.kubeconfig" attach -i echoer 2>&1)
    [[ $out == *got:hello* ]] || fail "kubectl attach -i printed: $out"
    k logs echoer | grep -q '^got:hello$' || fail "the container's log lacks got:hello: $(k logs echoer)"
    delete_pods echoer
}

test_port_forward() {
    k run web --image="$NGINX" --restart=Never --port 80 >/dev/null || fail "kubectl run web failed"
    ready web
    "$BIN/kubectl" --kubeconfig "$WORK/admin.kubeconfig" port-forward pod/web 18080:80 >"$(logf port-forward)" 2>&1 &
    local pf=$! out
    wait_for 30 "port-forward listening" curl -sf -o /dev/null http://127.0.0.1:18080/
    out=$(curl -sf http://127.0.0.1:18080/)
    kill "$pf" 2>/dev/null
    wait "$pf" 2>/dev/null
    [[ $out == *"Welcome to nginx!"* ]] || fail "HTTP through port-forward: $out"
    delete_pods web
}

test_cp() {
    local f=$WORK/cp-in out
    head -c 100000 /dev/urandom | base64 >"$f"
    k cp "$f" shell:/tmp/cp-in >/dev/null 2>&1 || fail "kubectl cp to the pod failed"
    [[ $(k exec shell -- md5sum /tmp/cp-in | cut -d' ' -f1) == $(md5sum <"$f" | cut -d' ' -f1) ]] ||
        fail "the file copied in differs"
    k exec shell -- sh -c 'echo from-the-pod > /tmp/cp-out' || fail "exec failed"
    k cp shell:/tmp/cp-out "$WORK/cp-out" >/dev/null 2>&1 || fail "kubectl cp from the pod failed"
    out=$(cat "$WORK/cp-out")
    [[ $out == from-the-pod ]] || fail "the file copied out holds: $out"
}

test_volumes() {
    k create configmap conf --from-literal=a.txt=first >/dev/null || fail "create configmap"
    k create secret generic sec --from-literal=password=s3cr3t >/dev/null || fail "create secret"
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: vols, labels: {app: vols}}
spec:
  containers:
  - name: main
    image: $BUSYBOX
    command: [sh, -c, 'echo disk > /ed/from-main; echo mem > /edm/from-main; while :; do sleep 1; done']
    volumeMounts:
    - {name: conf, mountPath: /cm}
    - {name: sec, mountPath: /sec}
    - {name: ed, mountPath: /ed}
    - {name: edm, mountPath: /edm}
    - {name: proj, mountPath: /proj}
    - {name: dw, mountPath: /dw}
  - name: peer
    image: $BUSYBOX
    command: [sh, -c, 'while :; do sleep 1; done']
    volumeMounts:
    - {name: ed, mountPath: /ed}
    - {name: edm, mountPath: /edm}
  volumes:
  - {name: conf, configMap: {name: conf, defaultMode: 0640}}
  - {name: sec, secret: {secretName: sec, defaultMode: 0400}}
  - {name: ed, emptyDir: {}}
  - {name: edm, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
  - name: proj
    projected:
      sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3600}
      - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
  - name: dw
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: cpu_limit, resourceFieldRef: {containerName: main, resource: limits.cpu}}
EOF
    ready vols
    ex() { k exec vols -c "${C:-main}" -- "$@"; }
    [[ $(ex cat /cm/a.txt) == first ]] || fail "configmap: $(ex cat /cm/a.txt)"
    [[ $(ex stat -L -c %a /cm/a.txt) == 640 ]] || fail "configmap mode $(ex stat -L -c %a /cm/a.txt), want 640"
    [[ $(ex cat /sec/password) == s3cr3t ]] || fail "secret: $(ex cat /sec/password)"
    [[ $(ex stat -L -c %a /sec/password) == 400 ]] || fail "secret mode $(ex stat -L -c %a /sec/password), want 400"
    wait_for 30 "emptyDir written by main seen by peer" peer_sees
    C=peer ex sh -c 'echo back > /edm/from-peer' || fail "peer cannot write the memory emptyDir"
    [[ $(ex cat /edm/from-peer) == back ]] || fail "main does not see the peer's file in the memory emptyDir"
    # kubelet backs medium: Memory with a tmpfs on the node.
    findmnt -rn -t tmpfs -o TARGET | grep -q "/volumes/kubernetes.io~empty-dir/edm$" ||
        fail "no tmpfs for the memory emptyDir on the node"
    local token sub
    token=$(ex cat /proj/token)
    [[ $(tr -cd . <<<"$token" | wc -c) == 2 ]] || fail "projected token is not a JWT: ${token:0:40}"
    sub=$(cut -d. -f2 <<<"$token" | tr '_-' '/+' | { base64 -d 2>/dev/null; true; } | jq -r .sub 2>/dev/null)
    [[ $sub == system:serviceaccount:default:default ]] || fail "token subject: $sub"
    [[ $(ex cat /proj/name) == vols ]] || fail "projected downward API name: $(ex cat /proj/name)"
    [[ $(ex cat /dw/labels) == 'app="vols"' ]] || fail "downward API labels: $(ex cat /dw/labels)"
    [[ $(ex cat /dw/cpu_limit) =~ ^[0-9]+$ ]] || fail "downward API cpu limit: $(ex cat /dw/cpu_limit)"
    k create configmap conf --from-literal=a.txt=second --dry-run=client -o yaml | k replace -f - >/dev/null ||
        fail "updating the configmap failed"
    wait_for 150 "the ConfigMap update reaches the running container" cm_is second
    delete_pods vols
}

test_init_container() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: withinit}
spec:
  initContainers:
  - {name: init, image: $BUSYBOX, command: [sh, -c, 'echo init-done > /work/state'], volumeMounts: [{name: w, mountPath: /work}]}
  containers:
  - {name: main, image: $BUSYBOX, command: [sh, -c, 'cat /work/state; while :; do sleep 1; done'], volumeMounts: [{name: w, mountPath: /work}]}
  volumes: [{name: w, emptyDir: {}}]
EOF
    ready withinit
    local init
    init=$(k get pod withinit -o json | jq -c '.status.initContainerStatuses[0].state.terminated | {exitCode, reason}')
    [[ $init == '{"exitCode":0,"reason":"Completed"}' ]] || fail "init container: $init"
    wait_for 30 "main sees what init wrote" logs_have withinit main init-done
    delete_pods withinit
}

test_job() {
    k create job once --image="$BUSYBOX" -- sh -c 'echo job ran; exit 0' >/dev/null || fail "create job"
    k wait --for=condition=Complete job/once --timeout="$POD_TIMEOUT" >/dev/null ||
        fail "job not complete: $(k get job once -o json | jq -c .status)"
    [[ $(k logs job/once) == "job ran" ]] || fail "job log: $(k logs job/once)"
    k delete job once --wait=false >/dev/null
}

test_deployment_rollout() {
    k create deployment web --image="$NGINX" --replicas=3 --port=80 >/dev/null || fail "create deployment"
    k rollout status deployment/web --timeout=600s >/dev/null || fail "deployment web not rolled out: $(k get pods -l app=web -o wide)"
    k set image deployment/web nginx="$HTTPD" >/dev/null || fail "set image"
    k rollout status deployment/web --timeout=600s >/dev/null || fail "rollout to httpd stuck: $(k get pods -l app=web -o wide)"
    local images
    wait_for 120 "only the new ReplicaSet's 3 pods are left" images_are "$HTTPD $HTTPD $HTTPD "
    images=$(k get pods -l app=web -o jsonpath='{range .items[*]}{.status.containerStatuses[0].ready} {end}')
    [[ $images == "true true true " ]] || fail "pods after the rollout: $images"
}

test_service() {
    k expose deployment web --port 80 >/dev/null || fail "expose"
    local cip out
    cip=$(k get service web -o jsonpath='{.spec.clusterIP}')
    [[ -n $cip ]] || fail "service web has no ClusterIP"
    wait_for 60 "kube-proxy's rules for $cip" proxy_rules "$cip"
    wait_for 60 "ClusterIP $cip:80 answers from pod shell" answers_from shell "$cip"
    out=$(k exec shell -- sh -c "$(declare -f http_get); for i in 1 2 3 4 5 6; do http_get $cip | grep -q 'Welcome to nginx!' && echo ok; done")
    [[ $(grep -c ok <<<"$out") == 6 ]] || fail "6 requests through the ClusterIP: $out"
}

test_oom_killed() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: $BUSYBOX
    # tail buffers the one endless "line" of /dev/zero: memory grows until the limit.
    command: [sh, -c, 'echo allocating; exec tail /dev/zero']
    resources: {limits: {memory: 64Mi}}
EOF
    wait_for 300 "hog terminated" terminated hog
    local st
    st=$(k get pod hog -o json | jq -c '.status.containerStatuses[0].state.terminated | {reason, exitCode}')
    [[ $st == '{"reason":"OOMKilled","exitCode":137}' ]] || fail "hog ended with $st, log: $(k logs hog)"
    delete_pods hog
}

waiting_reason() { k get pod "$1" -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}'; }
pull_failed() { [[ $(waiting_reason "$1") =~ ^(ErrImagePull|ImagePullBackOff)$ ]]; }

test_missing_image() {
    k run missing --image=registry.k8s.io/e2e-test-images/no-such-image:1.0 --restart=Never >/dev/null || fail "run"
    wait_for 180 "missing ends in ErrImagePull/ImagePullBackOff" pull_failed missing
    local msg
    msg=$(k get pod missing -o jsonpath='{.status.containerStatuses[0].state.waiting.message}')
    [[ $msg == *no-such-image* && $msg =~ (not found|unknown|404) ]] ||
        fail "the message does not carry the registry's answer: $msg"
    note "message: ${msg:0:200}"
    delete_pods missing
}

test_private_image() {
    local img=$AUTH_REGISTRY/private/busybox:1 msg
    k run noauth --image="$img" --restart=Never -- sleep 3600 >/dev/null || fail "run"
    wait_for 180 "noauth ends in ErrImagePull/ImagePullBackOff" pull_failed noauth
    msg=$(k get pod noauth -o jsonpath='{.status.containerStatuses[0].state.waiting.message}')
    [[ $msg =~ (unauthorized|401|authentication) ]] || fail "no auth error in: $msg"
    k create secret docker-registry regcred --docker-server="$AUTH_REGISTRY" \
        --docker-username="$AUTH_USER" --docker-password="$AUTH_PASS" >/dev/null || fail "create secret"
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: withauth}
spec:
  imagePullSecrets: [{name: regcred}]
  containers: [{name: main, image: "$img", command: [sleep, "3600"]}]
EOF
    ready withauth
    delete_pods noauth withauth
}

test_grace_period() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 60
  containers:
  - {name: main, image: $BUSYBOX, command: [sh, -c, 'trap "echo got-TERM" TERM; echo started; while :; do sleep 1; done']}
EOF
    ready stubborn
    local start took
    start=$SECONDS
    k delete pod stubborn --grace-period=12 >/dev/null &
    local del=$!
    wait_for 30 "SIGTERM reaches the container" logs_have stubborn main got-TERM
    wait "$del" || fail "kubectl delete failed"
    took=$((SECONDS - start))
    ((took >= 11)) || fail "stubborn (ignores SIGTERM) was gone after ${took}s, before its 12s grace period"
    ((took <= 60)) || fail "stubborn took ${took}s to go with a 12s grace period"
    note "ignoring SIGTERM: gone after ${took}s (grace 12s)"
    # One that exits on SIGTERM goes well before its grace period.
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: polite}
spec:
  terminationGracePeriodSeconds: 60
  containers:
  - {name: main, image: $BUSYBOX, command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1; done']}
EOF
    ready polite
    start=$SECONDS
    k delete pod polite >/dev/null || fail "kubectl delete failed"
    took=$((SECONDS - start))
    ((took < 45)) || fail "polite (exits on SIGTERM) took ${took}s of its 60s grace period"
    note "exiting on SIGTERM: gone after ${took}s (grace 60s)"
}

summary_of() { k get --raw /api/v1/nodes/node1/proxy/stats/summary | jq -e --arg p "$1" '.pods[] | select(.podRef.name == $p)'; }

test_stats_summary() {
    local a b
    a=$(summary_of shell) || fail "no stats for pod shell: $(k get --raw /api/v1/nodes/node1/proxy/stats/summary | jq -c '[.pods[].podRef.name]')"
    note "pod shell: $(jq -c '{cpu: .cpu.usageCoreNanoSeconds, mem: .memory.workingSetBytes, rx: .network.rxBytes, tx: .network.txBytes, fs: ."ephemeral-storage".usedBytes}' <<<"$a")"
    jq -e '.cpu.usageCoreNanoSeconds > 0 and .memory.workingSetBytes > 0 and .network.rxBytes > 0
        and .network.txBytes > 0 and ."ephemeral-storage".usedBytes > 0
        and (.containers[0].rootfs.usedBytes // 0) > 0 and .containers[0].cpu.usageCoreNanoSeconds > 0' \
        >/dev/null <<<"$a" || fail "zero or missing figures: $a"
    # Work and traffic in the pod, then the figures must have moved.
    k exec shell -- sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; dd if=/dev/zero of=/tmp/fill bs=1M count=4 2>/dev/null' ||
        fail "exec failed"
    curl -s -o /dev/null "http://$(k get pod shell -o jsonpath='{.status.podIP}'):1/" || true
    sleep 20
    b=$(summary_of shell) || fail "no stats for shell the second time"
    jq -e --argjson a "$a" '.cpu.usageCoreNanoSeconds > $a.cpu.usageCoreNanoSeconds
        and .network.rxBytes > $a.network.rxBytes
        and .containers[0].cpu.usageCoreNanoSeconds > $a.containers[0].cpu.usageCoreNanoSeconds' \
        >/dev/null <<<"$b" || fail "figures did not move: before $a after $b"
}

cadvisor() { k get --raw /api/v1/nodes/node1/proxy/metrics/cadvisor; }

# kubelet's /metrics/cadvisor from hull's ListPodSandboxMetrics (PodAndContainerStatsFromCRI).
test_metrics_cadvisor() {
    local m
    m=$(cadvisor) || fail "no /metrics/cadvisor"
    grep -E '^container_cpu_usage_seconds_total\{container="shell",.*namespace="default",pod="shell"\}' <<<"$m" >/dev/null ||
        fail "no CPU series of container shell: $(grep -c '^container_' <<<"$m") container_ series"
    grep -E '^container_memory_working_set_bytes\{container="shell",.*pod="shell"\} [1-9]' <<<"$m" >/dev/null ||
        fail "no working set of container shell"
    grep -E '^container_network_receive_bytes_total\{container="",.*interface="eth0",.*pod="shell"\} [1-9]' <<<"$m" >/dev/null ||
        fail "no network series of pod shell"
    grep -E '^hull_pod_vm_process_resident_memory_bytes\{.*pod="shell",process=' <<<"$m" >/dev/null ||
        fail "no VM cost of pod shell"
    note "/metrics/cadvisor: $(grep -c 'pod="shell"' <<<"$m") series of pod shell"
}

# kubelet's checkpoint API (ContainerCheckpoint) reaches hull, which says why it refuses.
# --request-timeout 0: kubectl would pass its own as ?timeout=1m0s, which kubelet's
# checkpoint handler cannot parse (it takes whole seconds) and answers 404.
test_checkpoint_refused() {
    local out
    if out=$(k --request-timeout 0 create --raw /api/v1/nodes/node1/proxy/checkpoint/default/shell/shell -f /dev/null 2>&1); then
        fail "checkpoint succeeded, but hull has no checkpoint archive: $out"
    fi
    grep -qE 'non-migratable|hull-vmm snapshots' <<<"$out" || fail "not hull's refusal: $out"
    note "checkpoint refused: $(cut -c1-160 <<<"$out")"
}

test_cluster_cleanup() {
    k -n kube-system delete daemonset kube-proxy --wait=false >/dev/null 2>&1
    k delete deployment --all --wait=false >/dev/null 2>&1
    k delete job --all --wait=false >/dev/null 2>&1
    k delete pod --all --grace-period=5 --timeout=300s >/dev/null 2>&1 || fail "pods did not go: $(k get pods)"
    wait_for 240 "kubelet removed every sandbox of node1" no_pods_on 1
    local id left=""
    for id in $(cat "${NODE_DIRS[1]}/pod-ids" 2>/dev/null); do left+=$(leftovers 1 "$id"); done
    [[ -z $left ]] || fail "left on the host: $left"
    [[ $(veths 1) == 0 ]] || fail "veths left on bridge hk8s1: $(ip -o link show master hk8s1)"
}

# Records the sandbox ids hulld 1 has now (for the leftover checks and the clean-up).
record_all() {
    local n=$1 id
    for id in $(cri "$n" pods -q 2>/dev/null); do
        grep -qx "$id" "${NODE_DIRS[$n]}/pod-ids" 2>/dev/null || record_pod "$n" "$id"
    done
}

scenario_cluster() {
    log "=== scenario 2: one-node cluster"
    SCEN=c
    start_control_plane
    start_hulld 1
    start_kubelet 1 "$WORK/node1.kubeconfig"
    start_kube_proxy
    t "node1 registers and turns Ready" test_node_ready
    t "kube-proxy runs as a hostNetwork DaemonSet pod with host isolation" test_kube_proxy_pod
    t "kubectl run; logs -f" test_run_and_logs_follow
    t "kubectl exec -it (a terminal), exec -i" test_exec_tty
    t "kubectl attach" test_attach
    t "kubectl port-forward" test_port_forward
    t "kubectl cp both ways" test_cp
    t "volumes: ConfigMap, Secret, emptyDir, projected token, downward API; ConfigMap update" test_volumes
    record_all 1
    t "init container" test_init_container
    t "a Job completes" test_job
    t "Deployment of 3 rolls to a new image" test_deployment_rollout
    t "ClusterIP Service through kube-proxy" test_service
    record_all 1
    t "memory limit hit: OOMKilled" test_oom_killed
    t "missing image: ErrImagePull with the registry's message" test_missing_image
    t "private image with imagePullSecrets" test_private_image
    record_all 1
    t "kubectl delete honours the grace period" test_grace_period
    t "kubelet /stats/summary: figures non-zero and moving" test_stats_summary
    t "kubelet /metrics/cadvisor shows hull pods (CRI metrics)" test_metrics_cadvisor
    t "kubelet's checkpoint API reaches hull, which refuses with the reason" test_checkpoint_refused
    record_all 1
    if [[ " ${SCENARIOS[*]} " != *" twonode "* ]]; then
        t "deleting every pod leaves nothing on node1" test_cluster_cleanup
    fi
}
