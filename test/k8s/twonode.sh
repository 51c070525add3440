# Scenario 3 of test/k8s/run.sh (sourced): a second node (its own hulld, CNI bridge
# hk8s2 on 10.244.2.0/24, kubelet node2) joins the cluster of scenario 2.
# shellcheck shell=bash

node_of_pods() { k get pods -l app=spread -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort | uniq -c; }
spread_ready_on() { # <node1 count> <node2 count>
    local want
    want=$(printf '%s node1\n%s node2\n' "$1" "$2" | awk '$1 > 0 {print $1, $2}')
    [[ $(k get pods -l app=spread -o json | jq -r '.items[] | select(.metadata.deletionTimestamp == null)
        | select(any(.status.conditions[]?; .type == "Ready" and .status == "True")) | .spec.nodeName' |
        sort | uniq -c | awk '{print $1, $2}') == "$want" ]]
}

test_second_node_ready() {
    wait_for 120 "node2 registers" k get node node2
    k wait --for=condition=Ready node/node2 --timeout=180s >/dev/null ||
        fail "node2 not Ready: $(k get node node2 -o json | jq -c .status.conditions)"
    [[ $(k get nodes -o name | wc -l) == 2 ]] || fail "nodes: $(k get nodes)"
}

test_spread() {
    apply <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: spread}
spec:
  replicas: 4
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      terminationGracePeriodSeconds: 5
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
         nodeTaintsPolicy: Honor, labelSelector: {matchLabels: {app: spread}}}
      containers: [{name: nginx, image: $NGINX, ports: [{containerPort: 80}]}]
EOF
    k rollout status deployment/spread --timeout=600s >/dev/null || fail "spread not rolled out: $(k get pods -o wide)"
    wait_for 60 "2 ready pods on each node" spread_ready_on 2 2
    record_all 1
    record_all 2
}

test_cross_node() {
    local from to ip1 ip2
    from=$(k get pods -l app=spread --field-selector spec.nodeName=node1 -o jsonpath='{.items[0].metadata.name}')
    to=$(k get pods -l app=spread --field-selector spec.nodeName=node2 -o jsonpath='{.items[0].metadata.name}')
    ip1=$(k get pod "$from" -o jsonpath='{.status.podIP}')
    ip2=$(k get pod "$to" -o jsonpath='{.status.podIP}')
    [[ $ip1 == 10.244.1.* && $ip2 == 10.244.2.* ]] || fail "pod IPs $ip1 (node1), $ip2 (node2): not from each node's subnet"
    answers_from "$from" "$ip2" || fail "$from ($ip1, node1) cannot reach $to ($ip2, node2)"
    answers_from "$to" "$ip1" || fail "$to ($ip2, node2) cannot reach $from ($ip1, node1)"
    # The server saw the client's own pod IP (no NAT between the nodes' pod networks).
    k logs "$to" | grep -q "$ip1" || note "(node2's httpd log does not name $ip1: $(k logs "$to" | tail -n 2))"
}

test_drain() {
    k drain node2 --ignore-daemonsets --delete-emptydir-data --grace-period=5 --timeout=300s >/dev/null 2>&1 ||
        fail "kubectl drain node2 failed: $(k get pods -o wide)"
    wait_for 300 "all 4 pods ready on node1" spread_ready_on 4 0
    wait_for 240 "kubelet of node2 removed every sandbox" no_pods_on 2
    local id left=""
    for id in $(cat "${NODE_DIRS[2]}/pod-ids" 2>/dev/null); do left+=$(leftovers 2 "$id"); done
    [[ -z $left ]] || fail "left on node2: $left"
    [[ $(veths 2) == 0 ]] || fail "veths left on bridge hk8s2: $(ip -o link show master hk8s2)"
    [[ -z $(cri 2 ps -aq) ]] || fail "containers left on node2: $(cri 2 ps -a)"
}

scenario_twonode() {
    log "=== scenario 3: two nodes"
    start_hulld 2
    start_kubelet 2 "$WORK/node2.kubeconfig"
    t "node2 joins and turns Ready" test_second_node_ready
    t "a Deployment of 4 spreads over both nodes" test_spread
    t "pods on different nodes reach each other by IP" test_cross_node
    t "draining node2 moves its pods to node1 and leaves nothing on node2" test_drain
    t "deleting every pod leaves nothing on node1" test_cluster_cleanup
}
