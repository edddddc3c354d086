"""The VXLAN agent keeps this node's tunnel addresses (vxlan/agent.py, vxlan/tunnel_address.py)
over a memory datastore, with no kernel (tunnels=False): each family on its own."""

from __future__ import annotations

import asyncio

import pytest

from percale.api import parse
from percale.datastore import Key, MemoryDatastore
from percale.datastore.cache import Cache
from percale.ipam.allocator import IPAM
from percale.vxlan.agent import VXLANAgent
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.unit


async def test_an_ipv4_pool_out_of_addresses_does_not_keep_the_ipv6_tunnel_address_away():
    """One try around both families: IPv4 failing (its pool full of pods) skipped IPv6 on
    every retry, and a dual-stack node's IPv6 VXLAN went down with IPv4's."""
    store = MemoryDatastore()
    ipam = IPAM(store)
    await add_pool(store, "v4", "10.244.0.0/30", blockSize=30, vxlanMode="Always")
    await add_pool(store, "v6", "fd00:10::/122", blockSize=122, vxlanMode="Always")
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "Node",
                              "metadata": {"name": "a"},
                              "spec": {"bgp": {"ipv4Address": "192.0.2.1/24",
                                               "ipv6Address": "fd00:99::1/64"}}}))
    await ipam.auto_assign("a", handle_id="k8s-pod-network.pods", num4=4)  # the v4 pool is full
    cache = Cache(store, ["IPPool", "Node", "IPAMBlock"], node="a")
    agent = VXLANAgent(cache, "a", store=store, ipam=ipam, routes=None, tunnels=False,
                       host_mtu=1500, bgp=True)
    tasks = [asyncio.ensure_future(cache.run()), asyncio.ensure_future(agent.run())]
    try:
        for _ in range(300):
            spec = (await store.get(Key("Node", "a"))).value.spec
            if spec.ipv6_vxlan_tunnel_addr:
                break
            await asyncio.sleep(0.02)
        assert spec.ipv6_vxlan_tunnel_addr is not None and spec.ipv4_vxlan_tunnel_addr is None
        assert not tasks[1].done()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_direct_route_to_a_link_local_node_address_names_the_parent_interface():
    """CrossSubnet, same subnet, nodes on IPv6 link-local addresses: the direct route went
    without an interface, which the FIB refuses with an error that ended the VXLAN task, and
    percale-node with it, again at every restart."""
    import ipaddress

    from percale.dataplane.fib import NextHop
    from percale.vxlan.plan import Hop

    store = MemoryDatastore()
    agent = VXLANAgent(Cache(store, ["IPPool", "Node", "IPAMBlock"], node="a"), "a", store=store,
                       ipam=IPAM(store), routes=None, tunnels=False, host_mtu=1500, bgp=False)
    hop = Hop(ipaddress.ip_address("fe80::2"), tunnel=False)
    assert agent._hops(hop) is None  # no parent known yet: the route waits
    agent.parent_index[6] = 7
    assert agent._hops(hop) == {NextHop(ipaddress.ip_address("fe80::2"), 7)}
    assert agent._hops(Hop(ipaddress.ip_address("fd00::2"), tunnel=False)) == {
        NextHop(ipaddress.ip_address("fd00::2"))}
