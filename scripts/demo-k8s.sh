#!/usr/bin/env bash
# The Kubernetes demo: an empty cluster on network namespaces (topologies/k8sop3.clab.yml: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, three nodes each run by a lab kubelet),
# then percale installed as a cluster user installs it -- `kubectl create -f
# manifests/operator.yaml`, then an Installation -- and a Deployment of six pods placed by
# kube-scheduler; the ping matrix, `kubectl get installation`, `kubectl get pods -o wide`, and
# `percalectl node status` from inside a percale-node pod. Run through `bash scripts/dev.sh demo
# k8s`, which installs what this needs and builds the Kubernetes binaries once.
#
#   bash scripts/dev.sh demo k8s          # waits for Enter (or Ctrl-C), then removes the lab
#   bash scripts/dev.sh demo k8s --keep   # leaves the lab running; prints how to remove it
set -euo pipefail
cd "$(dirname "$0")/.."

TOPO=topologies/k8sop3.clab.yml
source scripts/demo-common.sh
# kubectl runs inside the control plane's namespace: the apiserver is on the lab's management
# network, which the machine itself is not on.
kubectl() { percalectl lab exec -t "$TOPO" kube /etc/percale/kube/kubectl "$@"; }

step percalectl lab up -t "$TOPO"
step kubectl get nodes -o wide

step kubectl create -f "$PWD/manifests/operator.yaml"
kubectl wait --for condition=Established crd --all --timeout 60s >/dev/null
start=$(date +%s%N)
step kubectl create -f "$PWD/topologies/k8sop3/installation.yaml"
step kubectl wait --for condition=Ready installation/default --timeout 120s
elapsed=$(( ($(date +%s%N) - start) / 100000000 ))  # tenths of a second
echo "Installation Ready $((elapsed / 10)).$((elapsed % 10)) s after kubectl create"
step kubectl get installation

step kubectl apply -f "$PWD/topologies/k8sop3/pingers.yaml"
step kubectl rollout status deployment/pingers --timeout 90s
step kubectl get pods -A -o wide

bold "==> waiting for every pod to reach every other pod"
wait_for_pings
step percalectl lab ping -t "$TOPO"

pod=$(kubectl get pods -n percale-system -l app.kubernetes.io/name=percale-node \
      --field-selector spec.nodeName=node1 -o jsonpath='{.items[0].metadata.name}')
step percalectl lab pod exec -t "$TOPO" "percale-system/$pod" percalectl node status
step percalectl lab pod exec -t "$TOPO" "percale-system/$pod" percalectl ipam show --show-blocks

cat <<TRY

$(printf '\033[1m')Try next$(printf '\033[0m') (in another shell, as root, from $PWD):
  export PATH=$PWD/.venv/bin:\$PATH
  K="percalectl lab exec -t $TOPO kube /etc/percale/kube/kubectl"
  \$K get installation default -o yaml        # conditions, the computed spec
  \$K delete pod -n percale-system $pod       # the DaemonSet brings it back; pods keep pinging
  \$K scale deployment pingers --replicas 9
  percalectl lab ping -t $TOPO
  percalectl lab pod exec -t $TOPO percale-system/$pod percalectl get nodes -o wide
TRY

finish
