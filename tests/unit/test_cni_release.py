"""What the agent releases without a pod's namespace to work in (node/cni_handlers.py): DEL
when CNI_NETNS names no namespace any more, and GC, which must take only its own network's
allocations. Asked as the shim asks; no network namespace is needed (DEL steps into none)."""

from __future__ import annotations

import json
import os

import pytest

from percale.datastore import MemoryDatastore
from percale.node.cni_handlers import of_network

pytestmark = pytest.mark.unit

POD = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1"


def request(command: str, *, plugin: str = "percale", netns: str = "",
            network: str = "k8s-pod-network", container_id: str = "c1", **config: object) -> dict:
    conf = {"cniVersion": "1.1.0", "name": network, "type": plugin, "nodename": "node1",
            "ipam": {"type": "percale-ipam"}, **config}
    return {"command": command, "plugin": plugin, "containerID": container_id, "netns": netns,
            "ifname": "eth0", "args": POD, "config": json.dumps(conf)}


async def handles(store: MemoryDatastore) -> list[str]:
    return sorted(kv.key.name for kv in (await store.list("IPAMHandle")).items)


@pytest.mark.parametrize("gone", [
    "empty file",  # what a netns bind mount leaves when it is unmounted
    "/var/run/netns/" + "x" * 300,  # a name no file can have (ENAMETOOLONG)
    "/var/run/netns/no-such-pod",
    "",
], ids=["unmounted", "too-long", "missing", "unset"])
async def test_del_of_a_namespace_that_is_gone_releases_what_the_container_holds(
        cni_agent, tmp_path, gone):
    """CNI spec: DEL must succeed when the netns is gone, and release. An empty file left by
    an unmount was refused (4, "is not a namespace") and an over-long path failed (999,
    "File name too long"): the pod stuck in Terminating, its address leaked."""
    store, handlers = cni_agent
    if gone == "empty file":
        gone = str(tmp_path / "netns")
        (tmp_path / "netns").write_text("")
    code, out = await handlers.handle(request("ADD", plugin="percale-ipam"))
    assert code == 0, out
    assert await handles(store) == ["k8s-pod-network.c1"]
    assert await handlers.handle(request("DEL", netns=gone)) == (0, "")
    assert await handles(store) == []


async def test_del_naming_the_nodes_own_namespace_is_code_4_and_releases_nothing(cni_agent):
    """The one namespace problem DEL refuses: there CNI_IFNAME is the node's own interface."""
    store, handlers = cni_agent
    assert (await handlers.handle(request("ADD", plugin="percale-ipam")))[0] == 0
    for own in ("/proc/self/ns/net", f"/proc/{os.getpid()}/ns/net"):
        code, out = await handlers.handle(request("DEL", netns=own))
        assert code == 4 and "is the node's own network namespace" in json.loads(out)["msg"], out
    assert await handles(store) == ["k8s-pod-network.c1"]


async def test_gc_releases_only_its_own_networks_attachments(cni_agent):
    """Handles are "<network>.<container ID>": GC of k8s-pod-network took the handle
    k8s-pod-network.v2.c3, a live pod of network k8s-pod-network.v2, for container "v2.c3"
    of its own, and freed it."""
    store, handlers = cni_agent
    for network, container in (("k8s-pod-network", "c1"), ("k8s-pod-network", "c2"),
                               ("k8s-pod-network.v2", "c3")):
        code, out = await handlers.handle(request("ADD", plugin="percale-ipam", network=network,
                                                  container_id=container))
        assert code == 0, out
    listed = [{"containerID": "c1", "ifname": "eth0"}]
    assert await handlers.handle(request("GC", **{"cni.dev/valid-attachments": listed})) == (0, "")
    assert await handles(store) == ["k8s-pod-network.c1", "k8s-pod-network.v2.c3"]


@pytest.mark.parametrize(("handle", "network", "ours"), [
    ("k8s-pod-network.c1", "k8s-pod-network", True),
    ("k8s-pod-network.v2.c1", "k8s-pod-network", False),
    ("k8s-pod-network.v2.c1", "k8s-pod-network.v2", True),
    # A container ID with a dot (libcni allows it) could be another network's: kept.
    ("k8s-pod-network.a.b", "k8s-pod-network", False),
    ("other.c1", "k8s-pod-network", False),
])
def test_an_allocation_is_of_the_network_its_handle_leaves_no_doubt_about(handle, network, ours):
    assert of_network(handle, network) is ours
