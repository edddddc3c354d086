"""CNI STATUS (CNI 1.1), asked as the shim asks: 0 while an ADD can get an address, 50 ("the
plugin is not available", which holds new pods back) while the pools an ADD may take from are
full or none serves the node (node/cni_handlers.py). No network namespace is needed."""

from __future__ import annotations

import json

import pytest

from percale.api import parse
from percale.datastore import MemoryDatastore
from percale.ipam.allocator import IPAM
from percale.node.cni_handlers import CNIHandlers
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.unit


def request(command: str, *, container_id: str = "", **ipam: object) -> dict:
    conf = {"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "percale-ipam",
            "nodename": "node1", "ipam": {"type": "percale-ipam", **ipam}}
    return {"command": command, "plugin": "percale-ipam", "containerID": container_id,
            "netns": "/var/run/netns/pod", "ifname": "eth0",
            "args": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{container_id}",
            "config": json.dumps(conf)}


async def status(handlers: CNIHandlers, **ipam: object) -> tuple[int, str]:
    code, out = await handlers.handle(request("STATUS", **ipam))
    return code, json.loads(out)["msg"] if code else out


@pytest.fixture
async def world():
    store = MemoryDatastore()
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "Node",
                              "metadata": {"name": "node1", "labels": {"zone": "a"}},
                              "spec": {}}))
    handlers = CNIHandlers(store, IPAM(store), "node1", 1500)
    yield store, handlers
    handlers.close()


async def test_status_is_50_while_every_address_of_the_pools_is_taken(world):
    """It answered 0 with the only enabled pool full: the runtime went on sending ADDs, each
    failing with 100."""
    store, handlers = world
    await add_pool(store, "small", "10.250.0.0/30", blockSize=30)
    assert await status(handlers) == (0, "")  # a region no block holds yet is free
    for i in range(4):
        code, out = await handlers.handle(request("ADD", container_id=f"c{i}"))
        assert code == 0, out
    code, msg = await status(handlers)
    assert code == 50 and "every IPv4 pool node node1 may take from is full" in msg, msg
    assert "small 4 of 4 in use" in msg
    assert (await handlers.handle(request("ADD", container_id="c4")))[0] == 100
    assert await handlers.handle(request("DEL", container_id="c0")) == (0, "")
    assert await status(handlers) == (0, "")


@pytest.mark.parametrize(("pools", "ipam", "said"), [
    # A pool whose nodeSelector leaves the node out serves none of its pods.
    ({"elsewhere": {"cidr": "10.1.0.0/24", "nodeSelector": "zone == 'b'"}}, {},
     "no enabled IPv4 pool serves node node1"),
    # A Manual pool serves only a configuration that names it.
    ({"manual": {"cidr": "10.1.0.0/24", "assignmentMode": "Manual"}}, {},
     "no enabled IPv4 pool serves node node1"),
    # The configuration names a full pool: others' free addresses are no use to its pods.
    ({"full": {"cidr": "10.2.0.0/32", "blockSize": 32}, "free": {"cidr": "10.3.0.0/24"}},
     {"ipv4_pools": ["full"]}, "full 1 of 1 in use"),
    # IPv6 assigned, and no IPv6 pool.
    ({"pods": {"cidr": "10.1.0.0/24"}}, {"assign_ipv6": "true"}, "no enabled IPv6 pool"),
])
async def test_status_is_50_when_no_pool_an_add_may_take_from_has_room(world, pools, ipam, said):
    store, handlers = world
    for name, spec in pools.items():
        await add_pool(store, name, **spec)
    if "full" in pools:
        code, out = await handlers.handle(request("ADD", container_id="c1", ipv4_pools=["full"]))
        assert code == 0, out
    code, msg = await status(handlers, **ipam)
    assert code == 50 and said in msg, msg


@pytest.mark.parametrize(("pools", "ipam"), [
    ({"manual": {"cidr": "10.1.0.0/24", "assignmentMode": "Manual"}}, {"ipv4_pools": ["manual"]}),
    ({"near": {"cidr": "10.1.0.0/24", "nodeSelector": "zone == 'a'"}}, {}),
    ({"pods": {"cidr": "10.1.0.0/24"}, "pods6": {"cidr": "fd00:1::/120"}},
     {"assign_ipv6": "true"}),
])
async def test_status_is_0_while_a_pool_an_add_may_take_from_has_room(world, pools, ipam):
    store, handlers = world
    for name, spec in pools.items():
        await add_pool(store, name, **spec)
    assert await status(handlers, **ipam) == (0, "")
