# Scenario 1 of test/k8s/run.sh (sourced): a standalone kubelet (no API server) running
# static pods on hulld. kubelet's read-only port (10255, inside the suite's network
# namespace) shows the static pods' status; crictl shows hull's side.
# shellcheck shell=bash

BUSYBOX=registry.k8s.io/e2e-test-images/busybox:1.29-2
NGINX=registry.k8s.io/e2e-test-images/nginx:1.14-2

# static_pod VERSION: the manifest of pod "web" (busybox + the nginx stand-in).
static_pod() {
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
  annotations: {suite/version: "$1"}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: shell
    image: $BUSYBOX
    command: [sh, -c, 'trap "echo got TERM; exit 143" TERM; echo started v$1; touch /tmp/ready; while :; do sleep 1; done']
    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 2, timeoutSeconds: 20, failureThreshold: 1}
  - name: nginx
    image: $NGINX
    livenessProbe: {exec: {command: [sh, -c, 'test ! -e /tmp/unhealthy']}, periodSeconds: 2, timeoutSeconds: 20, failureThreshold: 1}
EOF
}

# The static pod as kubelet reports it (standalone: /pods carries the status).
kubelet_pod() { curl -sf "http://${NODE_IPS[1]}:10255/pods" | jq -e '.items[] | select(.metadata.name == "web-node1")'; }
pod_ready() { kubelet_pod | jq -e '.status.conditions[] | select(.type == "Ready") | .status == "True"' >/dev/null; }
pod_unready() { kubelet_pod | jq -e '.status.conditions[] | select(.type == "Ready") | .status == "False"' >/dev/null; }
restarts() { kubelet_pod | jq -e --arg c "$1" '.status.containerStatuses[] | select(.name == $c) | .restartCount'; }

# ready_sandbox: the id of the one ready sandbox of pod web-node1.
ready_sandbox() { cri 1 pods --name web-node1 --state ready -q; }
# running ID NAME: the running container NAME of sandbox ID, as JSON.
running() {
    cri 1 ps --pod "$1" --name "^$2\$" --state running -o json | jq -e '.containers[0] // empty'
}
attempt_is() { [[ $(running "$1" "$2" | jq .metadata.attempt) == "$3" ]]; }
restarts_are() { [[ $(restarts "$1") == "$2" ]]; }
no_ready_pods() { [[ -z $(cri 1 pods --state ready -q) ]]; }
replaced() { both_running && [[ $(ready_sandbox) != "$1" ]]; }
both_running() {
    local id
    id=$(ready_sandbox) && [[ $(wc -w <<<"$id") == 1 ]] || return 1
    running "$id" shell >/dev/null && running "$id" nginx >/dev/null
}

test_static_pod_runs() {
    # Written beside, then renamed: kubelet watches the dir and would read a half file.
    static_pod 1 >"$WORK/web.yaml"
    mv "$WORK/web.yaml" "${NODE_DIRS[1]}/manifests/web.yaml"
    wait_for 300 "pod web-node1 ready with both containers running" both_running
    local id
    id=$(ready_sandbox)
    record_pod 1 "$id"
    echo "$id" >"$WORK/web-v1.id"
    note "sandbox $id: $(cri 1 inspectp "$id" | jq -c '.status.network.ip')"
    cri 1 exec "$(running "$id" shell | jq -r .id)" cat /tmp/ready >/dev/null || fail "exec into shell failed"
    # The nginx stand-in answers inside the VM (the pod IP from the host's namespace).
    local ip
    ip=$(cri 1 inspectp "$id" | jq -r '.status.network.ip')
    wait_for 30 "nginx stand-in answers on $ip:80" curl -sf "http://$ip/"
}

test_readiness_probe() {
    local id c
    wait_for 60 "kubelet reports web-node1 Ready" pod_ready
    id=$(ready_sandbox)
    c=$(running "$id" shell | jq -r .id)
    cri 1 exec "$c" rm /tmp/ready || fail "exec rm /tmp/ready failed"
    wait_for 30 "readiness probe turns web-node1 unready" pod_unready
    cri 1 exec "$c" touch /tmp/ready || fail "exec touch /tmp/ready failed"
    wait_for 30 "readiness probe turns web-node1 ready again" pod_ready
}

# restart_by NAME CMD...: runs CMD in the running container NAME of pod web-node1 and
# waits for kubelet to start its next attempt (1 when nothing restarted it before).
restart_by() {
    local name=$1 id c attempt
    shift
    id=$(ready_sandbox)
    wait_for 60 "$name running" running "$id" "$name"
    c=$(running "$id" "$name" | jq -r .id)
    attempt=$(running "$id" "$name" | jq .metadata.attempt)
    ((attempt == 0)) || note "$name is already at attempt $attempt (an earlier restart; see kubelet's log)"
    cri 1 exec "$c" "$@" || fail "exec $* in $name failed"
    wait_for 90 "kubelet starts $name again (attempt $((attempt + 1)) running)" attempt_is "$id" "$name" $((attempt + 1))
    wait_for 30 "kubelet counts $((attempt + 1)) restarts of $name" restarts_are "$name" $((attempt + 1))
    echo "$id $attempt"
}

test_liveness_probe() {
    restart_by nginx touch /tmp/unhealthy >/dev/null
}

test_kill_from_inside() {
    local id attempt exited code
    read -r id attempt < <(restart_by shell kill -TERM 1)
    [[ -n $id ]] || fail "no restart"
    exited=$(cri 1 ps -a --pod "$id" --name '^shell$' --state exited -o json |
        jq -c --argjson a "$attempt" '.containers[] | select(.metadata.attempt == $a)')
    [[ -n $exited ]] || fail "no exited attempt $attempt of shell: $(cri 1 ps -a --pod "$id")"
    code=$(cri 1 inspect "$(jq -r .id <<<"$exited")" | jq .status.exitCode)
    [[ $code == 143 ]] || fail "shell's attempt $attempt exited with $code, not 143 (its TERM trap)"
}

test_manifest_edit_replaces_pod() {
    local old new
    old=$(cat "$WORK/web-v1.id")
    static_pod 2 >"$WORK/web.yaml"
    mv "$WORK/web.yaml" "${NODE_DIRS[1]}/manifests/web.yaml"
    wait_for 300 "a new sandbox replaces $old" replaced "$old"
    new=$(ready_sandbox)
    record_pod 1 "$new"
    cri 1 inspectp "$old" 2>/dev/null | jq -e '.status.state == "SANDBOX_NOTREADY"' >/dev/null ||
        [[ -z $(cri 1 pods -q --id "$old" 2>/dev/null) ]] || fail "old sandbox $old is still ready"
    cri 1 logs "$(running "$new" shell | jq -r .id)" 2>&1 | grep -q "started v2" ||
        fail "the new pod does not run the edited manifest"
}

no_pods() { [[ -z $(cri 1 pods -q) ]]; }

test_manifest_removal_cleans_up() {
    rm "${NODE_DIRS[1]}/manifests/web.yaml"
    wait_for 60 "kubelet stops web-node1" no_ready_pods
    # kubelet removes the sandboxes of deleted pods in its garbage collection (every minute).
    wait_for 180 "kubelet removes every sandbox" no_pods
    local id left=""
    for id in $(cat "${NODE_DIRS[1]}/pod-ids"); do
        left+=$(leftovers 1 "$id")
    done
    [[ -z $left ]] || fail "left on the host: $left"
    [[ $(veths 1) == 0 ]] || fail "veths left on bridge hk8s1: $(ip -o link show master hk8s1)"
    [[ -z $(cri 1 ps -aq) ]] || fail "containers left: $(cri 1 ps -a)"
}

scenario_standalone() {
    log "=== scenario 1: standalone kubelet with static pods"
    SCEN=s
    start_hulld 1
    start_kubelet 1
    t "static pod of busybox + nginx stand-in runs" test_static_pod_runs
    t "exec readiness probe" test_readiness_probe
    t "exec liveness probe restarts the container" test_liveness_probe
    t "a container killed from inside is restarted (attempt 1)" test_kill_from_inside
    t "editing the manifest replaces the pod" test_manifest_edit_replaces_pod
    t "removing the manifest stops and removes the pod, leaving nothing" test_manifest_removal_cleans_up
    stop_proc kubelet-1
    remove_pods 1
    stop_proc hulld-1 15
}
