#!/usr/bin/env bash
# The k8s3 lab's Kubernetes control plane node: a CA and certificates made with openssl, the real
# kube-apiserver (built by scripts/k8s-binaries.sh) on the lab's etcd, percale's CRDs and RBAC,
# the cluster's resources (cluster.yaml, with kubectl: the same file percalectl applies), and the
# lab's nodes registered as their kubelets would register them (the lab runs no kubelet).
#
#   control-plane.sh run DIR ETCD ADDRESS NODE...    (the node's cmd)
#   control-plane.sh ready DIR                       (its healthcheck)
#
# DIR receives pki/, a kubeconfig per identity (admin, percale-node:<node>, percale-controllers)
# and, for the lab's own use (pods, tests), DIR/kubeconfig and DIR/kubectl.
#
# With KUBELETS=yes the lab's nodes run lab kubelets (lab/kubelet.py), which register their own
# Nodes: the control plane adds kube-controller-manager and kube-scheduler and installs nothing
# (an empty cluster, for manifests/operator.yaml and an Installation).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
action=$1 dir=$2

if [[ $action == ready ]]; then
    [[ -f "$dir/ready" ]] || exit 1
    exec "$dir/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1
fi

etcd=$3 address=$4
shift 4
nodes=("$@")
bin=$(bash "$repo/scripts/k8s-binaries.sh")
pki="$dir/pki"
rm -f "$dir/ready"
mkdir -p "$pki"
cd "$pki"

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
cert() {  # cert NAME SUBJECT EXTENSIONS
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
}
kubeconfig() {  # kubeconfig FILE CERT-NAME
    cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: k8s3
  cluster: {server: "https://$address:6443", certificate-authority: "$pki/ca.crt"}
users:
- name: user
  user: {client-certificate: "$pki/$2.crt", client-key: "$pki/$2.key"}
contexts:
- name: k8s3
  context: {cluster: k8s3, user: user}
current-context: k8s3
YAML
}

if [[ ! -f ca.crt ]]; then
    key ca.key
    openssl req -x509 -new -key ca.key -subj /CN=percale-k8s3-ca -days 7 -out ca.crt 2>/dev/null
    cert apiserver /CN=kube-apiserver "subjectAltName=IP:$address,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
    key service-accounts.key
    openssl ec -in service-accounts.key -pubout -out service-accounts.pub 2>/dev/null
    client="extendedKeyUsage=clientAuth"
    cert admin "/O=system:masters/CN=admin" "$client"
    cert controllers "/O=percale:controllers/CN=percale-controllers" "$client"
    for node in "${nodes[@]}"; do
        cert "node-$node" "/O=percale:nodes/CN=percale-node:$node" "$client"
    done
fi
kubeconfig "$dir/kubeconfig" admin
kubeconfig "$dir/controllers.kubeconfig" controllers
for node in "${nodes[@]}"; do kubeconfig "$dir/$node.kubeconfig" "node-$node"; done
ln -sf "$bin/kubectl" "$dir/kubectl"

"$bin/kube-apiserver" \
    --etcd-servers="$etcd" --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$address" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer="https://$address:6443" \
    --service-account-key-file="$pki/service-accounts.pub" \
    --service-account-signing-key-file="$pki/service-accounts.key" \
    --service-cluster-ip-range=10.96.0.0/16 --authorization-mode=RBAC --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount --endpoint-reconciler-type=none \
    --cert-dir="$pki" &
apiserver=$!
trap 'kill $apiserver 2>/dev/null' TERM INT

kubectl() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
for _ in $(seq 300); do
    kubectl get --raw /readyz >/dev/null 2>&1 && break
    kill -0 $apiserver 2>/dev/null || exit 1
    sleep 0.2
done
if [[ ${KUBELETS:-} == yes ]]; then
    "$bin/kube-controller-manager" --kubeconfig="$dir/kubeconfig" --leader-elect=false \
        --service-account-private-key-file="$pki/service-accounts.key" --root-ca-file="$pki/ca.crt" \
        --use-service-account-credentials=false --secure-port=0 --cluster-name=k8s3 &
    manager=$!
    "$bin/kube-scheduler" --kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0 &
    scheduler=$!
    trap 'kill $apiserver $manager $scheduler 2>/dev/null' TERM INT
    touch "$dir/ready"
    echo "control plane ready (with controller-manager and scheduler): kubectl --kubeconfig $dir/kubeconfig"
    wait $apiserver
    exit
fi
kubectl apply -f "$repo/crds/" -f "$repo/manifests/rbac.yaml" >/dev/null
kubectl wait --for condition=Established --timeout=60s crd --all >/dev/null
kubectl apply -f "$here/cluster.yaml" >/dev/null
for node in "${nodes[@]}"; do
    kubectl get node "$node" >/dev/null 2>&1 || kubectl create -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata: {name: $node, labels: {kubernetes.io/hostname: $node}}
YAML
done
touch "$dir/ready"
echo "control plane ready: kubectl --kubeconfig $dir/kubeconfig"
wait $apiserver
