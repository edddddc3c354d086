"""Which pool a pod's address comes from, asked the way a runtime asks: a percale-ipam ADD to
the agent's handlers (node/cni_handlers.py), no network namespace needed. The pod's namespace
comes from CNI_ARGS; the pools it may use from the CNI config and the IPPools' assignmentMode
and namespaceSelector."""

from __future__ import annotations

import ipaddress
import json

import pytest

from percale.api import parse
from percale.datastore import MemoryDatastore
from percale.ipam.allocator import IPAM
from percale.node.cni_handlers import CNIHandlers
from percale.node.cni_types import NO_ADDRESSES
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.unit


def request(namespace: str, pod: str, **ipam: object) -> dict:
    config = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "percale-ipam",
              "nodename": "node1", "ipam": {"type": "percale-ipam", **ipam}}
    return {"command": "ADD", "plugin": "percale-ipam", "containerID": f"c-{pod}",
            "netns": f"/var/run/netns/{pod}", "ifname": "eth0",
            "args": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}",
            "config": json.dumps(config)}


def address(stdout: str) -> ipaddress.IPv4Address:
    return ipaddress.ip_interface(json.loads(stdout)["ips"][0]["address"]).ip


async def test_a_pod_gets_the_pool_its_namespace_and_its_config_choose():
    store = MemoryDatastore()
    await add_pool(store, "manual", "10.9.0.0/24", assignmentMode="Manual")
    await add_pool(store, "team-a", "10.1.0.0/24", namespaceSelector="team == 'a'")
    await add_pool(store, "the-rest", "10.0.0.0/24", namespaceSelector="!has(team)")
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "Profile",
                              "metadata": {"name": "kns.web"},
                              "spec": {"labelsToApply": {"team": "a"}}}))
    handlers = CNIHandlers(store, IPAM(store), "node1", 1500)
    try:
        for namespace, pool in (("web", "10.1.0.0/24"), ("other", "10.0.0.0/24")):
            for i in range(3):
                code, out = await handlers.handle(request(namespace, f"{namespace}-{i}"))
                assert code == 0, out
                assert address(out) in ipaddress.ip_network(pool), (namespace, out)
        # Named in the CNI config (ipam.ipv4_pools), the Manual pool serves.
        code, out = await handlers.handle(request("other", "named", ipv4_pools=["manual"]))
        assert code == 0 and address(out) in ipaddress.ip_network("10.9.0.0/24")
    finally:
        handlers.close()


async def test_a_pod_no_pool_serves_is_refused_saying_why():
    store = MemoryDatastore()
    await add_pool(store, "team-a", "10.1.0.0/24", namespaceSelector="team == 'a'")
    await add_pool(store, "manual", "10.9.0.0/24", assignmentMode="Manual")
    handlers = CNIHandlers(store, IPAM(store), "node1", 1500)
    try:
        code, out = await handlers.handle(request("web", "web-0"))
        assert code == NO_ADDRESSES
        message = json.loads(out)["msg"]
        assert "team-a (its namespaceSelector does not select namespace web)" in message
        assert "manual (assignmentMode Manual: used only when a request names it)" in message
    finally:
        handlers.close()
