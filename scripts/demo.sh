#!/usr/bin/env bash
# The demo: three percale nodes in a node-to-node mesh (topologies/mesh3.clab.yml) on network
# namespaces, with etcd and percale-controllers beside them; two pods per node, wired by the CNI
# plugins as a container runtime wires them; then the ping matrix, every node's BGP status and
# the IPAM blocks. Run through `bash scripts/dev.sh demo`, which installs what this needs.
#
#   bash scripts/dev.sh demo          # waits for Enter (or Ctrl-C), then removes the lab
#   bash scripts/dev.sh demo --keep   # leaves the lab running; prints how to remove it
set -euo pipefail
cd "$(dirname "$0")/.."

# `demo k8s`: the Kubernetes demo (percale installed by its operator), scripts/demo-k8s.sh.
if [[ "${1:-}" == "k8s" ]]; then
    shift
    exec bash scripts/demo-k8s.sh "$@"
fi

TOPO=topologies/mesh3.clab.yml
source scripts/demo-common.sh

step percalectl lab up -t "$TOPO"

bold "==> two pods on each node (a namespace and a CNI ADD each, as a runtime does)"
for node in node1 node2 node3; do
    for i in 1 2; do
        percalectl lab pod add -t "$TOPO" "$node" "$node-pod$i"
    done
done

bold "==> waiting for every node to learn every other node's block"
wait_for_pings

step percalectl lab ping -t "$TOPO"
for node in node1 node2 node3; do
    step percalectl lab exec -t "$TOPO" "$node" percalectl node status
done
step percalectl lab exec -t "$TOPO" node1 percalectl ipam show --show-blocks
step percalectl lab exec -t "$TOPO" node1 ip route show proto 202

cat <<EOF

$(printf '\033[1m')Try next$(printf '\033[0m') (in another shell, as root, from $PWD):
  export PATH=$PWD/.venv/bin:\$PATH
  percalectl lab status -t $TOPO                      # nodes, processes, pods
  percalectl lab exec -t $TOPO node2 percalectl get nodes -o wide
  percalectl lab stop -t $TOPO node2 --kill           # crash node2's agent: routes stay (graceful restart)
  percalectl lab ping -t $TOPO                        # ... and pods still reach each other
  percalectl lab start -t $TOPO node2                 # back; sessions Established again
  percalectl lab pod add -t $TOPO node3 extra         # a pod; percalectl lab pod del -t $TOPO extra
  percalectl lab exec -t $TOPO node1 percalectl ipam check
EOF

finish
