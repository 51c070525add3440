# The control plane of test/k8s/run.sh (sourced): certificates, etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kube-proxy (iptables mode, a hostNetwork
# DaemonSet pod that hull runs with host isolation), and kubectl.
# shellcheck shell=bash

APISERVER=https://127.0.0.1:6443
SERVICE_CIDR=10.96.0.0/24
CLUSTER_CIDR=10.244.0.0/16

# cert NAME CN [O] [SANS]: a client/server certificate signed by the suite's CA.
cert() {
    local name=$1 cn=$2 o=${3:-} sans=${4:-} pki=$WORK/pki subj
    subj="/CN=$cn"
    [[ -n $o ]] && subj="/O=$o/CN=$cn"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subj" 2>/dev/null
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        [[ -z $sans ]] || echo "subjectAltName=$sans"
    } >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 2 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
}

# kubeconfig NAME: $WORK/NAME.kubeconfig with the client certificate NAME.
kubeconfig() {
    local name=$1 pki=$WORK/pki
    cat >"$WORK/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hull
  cluster: {server: $APISERVER, certificate-authority: $pki/ca.crt}
users:
- name: $name
  user: {client-certificate: $pki/$name.crt, client-key: $pki/$name.key}
contexts:
- name: hull
  context: {cluster: hull, user: $name}
current-context: hull
EOF
}

make_pki() {
    local pki=$WORK/pki n
    log "certificates"
    mkdir -p "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj "/CN=hull-k8s-suite-ca" 2>/dev/null ||
        die "openssl cannot make the CA"
    cert apiserver kube-apiserver "" \
        "IP:127.0.0.1,IP:10.96.0.1,IP:${NODE_IPS[1]},DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    cert admin admin system:masters
    cert controller-manager system:kube-controller-manager
    cert scheduler system:kube-scheduler
    cert kube-proxy system:kube-proxy
    for n in 1 2; do
        cert "node$n" "system:node:node$n" system:nodes "IP:${NODE_IPS[$n]},DNS:node$n"
    done
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    for n in admin controller-manager scheduler kube-proxy node1 node2; do kubeconfig "$n"; done
}

k() { "$BIN/kubectl" --kubeconfig "$WORK/admin.kubeconfig" --request-timeout 60s "$@"; }

start_control_plane() {
    local pki=$WORK/pki
    mkdir -p "$WORK/etcd"
    start_proc etcd etcd --name hull-k8s --data-dir "$WORK/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster hull-k8s=http://127.0.0.1:2380 --log-level warn
    wait_up etcd 60 curl -sf http://127.0.0.1:2379/health

    start_proc kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers http://127.0.0.1:2379 \
        --bind-address 0.0.0.0 --secure-port 6443 --advertise-address "${NODE_IPS[1]}" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --allow-privileged=true \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$pki/ca.crt" \
        --kubelet-preferred-address-types InternalIP \
        --authorization-mode Node,RBAC \
        --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --enable-admission-plugins NodeRestriction \
        --profiling=false --v 1
    wait_up kube-apiserver 180 k get --raw /readyz

    start_proc kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig "$WORK/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$WORK/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$WORK/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false \
        --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
        --use-service-account-credentials \
        --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
        --node-monitor-grace-period 40s --flex-volume-plugin-dir "$WORK/flexvolume" --v 1
    wait_up kube-controller-manager 120 curl -sk https://127.0.0.1:10257/healthz

    cat >"$WORK/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $WORK/scheduler.kubeconfig}
leaderElection: {leaderElect: false}
EOF
    start_proc kube-scheduler "$BIN/kube-scheduler" --config "$WORK/scheduler.yaml" \
        --authentication-kubeconfig "$WORK/scheduler.kubeconfig" \
        --authorization-kubeconfig "$WORK/scheduler.kubeconfig" --bind-address 127.0.0.1 --v 1
    wait_up kube-scheduler 120 curl -sk https://127.0.0.1:10259/healthz
}

# start_kube_proxy: one kube-proxy for the suite's network namespace (both nodes' bridges
# live there), as the DaemonSet of a real cluster: a hostNetwork, privileged pod in
# kube-system on node1, which hull runs with host isolation (its containers in the
# namespace's network, on the node's cgroups). Its config, kubeconfig and certificate come
# from a hostPath dir. masqueradeAll: a pod reaching a Service backend on its own bridge
# gets the reply through the host, without br_netfilter. conntrack: leave the host's
# limits alone. test_kube_proxy_pod waits for it.
start_kube_proxy() {
    local dir=$WORK/kube-proxy version
    mkdir -p "$dir"
    cp "$WORK/pki/ca.crt" "$WORK/pki/kube-proxy.crt" "$WORK/pki/kube-proxy.key" "$dir/"
    sed "s|$WORK/pki/|$dir/|g" "$WORK/kube-proxy.kubeconfig" >"$dir/kubeconfig"
    cat >"$dir/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kubeconfig}
mode: iptables
hostnameOverride: node1
clusterCIDR: $CLUSTER_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables: {masqueradeAll: true, syncPeriod: 10s, minSyncPeriod: 1s}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
    version=$("$BIN/kube-proxy" --version | awk '{print $2}')
    k apply -f - >/dev/null <<EOF || die "cannot create kube-proxy's DaemonSet"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: kube-proxy, namespace: kube-system, labels: {k8s-app: kube-proxy}}
spec:
  selector: {matchLabels: {k8s-app: kube-proxy}}
  template:
    metadata: {labels: {k8s-app: kube-proxy}}
    spec:
      hostNetwork: true
      nodeSelector: {kubernetes.io/hostname: node1}
      priorityClassName: system-node-critical
      tolerations: [{operator: Exists}]
      containers:
      - name: kube-proxy
        image: registry.k8s.io/kube-proxy:$version
        command: [/usr/local/bin/kube-proxy, --config=$dir/config.yaml, --v=1]
        securityContext: {privileged: true}
        volumeMounts:
        - {name: config, mountPath: $dir, readOnly: true}
        - {name: xtables-lock, mountPath: /run/xtables.lock}
        - {name: modules, mountPath: /lib/modules, readOnly: true}
      volumes:
      - {name: config, hostPath: {path: $dir, type: Directory}}
      - {name: xtables-lock, hostPath: {path: /run/xtables.lock, type: FileOrCreate}}
      - {name: modules, hostPath: {path: /lib/modules}}
EOF
    log "kube-proxy: a DaemonSet in kube-system, on node1"
}
