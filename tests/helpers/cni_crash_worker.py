"""One node's CNI ADD loop, run in its own process by the IPAM crash test and killed with -9.

Each iteration does what the CNI plugin does for a new pod: IPAM auto-assign under the
container's handle, then the dataplane (a short pause stands in for the veth and routes), then
the WorkloadEndpoint. A kill at any moment leaves one of: nothing, a handle without its address,
an address without its endpoint, or a finished pod. The test checks that `ipam check` finds
exactly the leaks and `ipam release --from-report` cleans them up.

    python -m tests.helpers.cni_crash_worker ENDPOINT NODE

ENDPOINT is an etcd URL or a kubeconfig; on Kubernetes each pod's Pod is created first, as the
kubelet has it before it calls the CNI plugin (the Node exists already).

It prints `ready` once connected, then one `added <ip>` line per finished pod.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from percale.datastore import AlreadyExists
from tests.helpers.store import is_kubernetes, open_store
from percale.ipam.allocator import IPAM
from tests.helpers.ipam_pods import NAMESPACE, add_pod, node

# The CNI plugin's dataplane work between IPAM and the endpoint write (veth, addresses, routes).
DATAPLANE_SECONDS = 0.01


async def main(endpoint: str, node_name: str) -> None:
    store = open_store(endpoint)
    ipam = IPAM(store)
    kubernetes = is_kubernetes(endpoint)
    try:
        await store.create(node(node_name))  # the agent registers its node first
    except AlreadyExists:
        pass
    print("ready", flush=True)
    while True:
        pod = f"pod-{uuid.uuid4().hex[:10]}"  # unique across restarts of this node
        if kubernetes:
            await store.client.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body={
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": NAMESPACE},
                "spec": {"nodeName": node_name,
                         "containers": [{"name": "main", "image": "percale.invalid/pause"}]}})
        ips = await add_pod(ipam, node_name, pod, dataplane_seconds=DATAPLANE_SECONDS)
        print("added", *ips, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
