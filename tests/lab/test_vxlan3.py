"""topologies/vxlan3.clab.yml end to end: three nodes, no BGP anywhere (networking backend vxlan,
the pool's vxlanMode Always): every pod reaches every pod through vxlan.percale, no node runs
ExaBGP, each node's own blocks are blackholed; and a node that joins (a Node with its tunnel end
and a block of its own) shows up on every node as a neighbour, an FDB entry and a route within a
second of the datastore change, and goes as fast when it leaves."""

from __future__ import annotations

import ipaddress
import sys
import time

import pytest

from percale.dataplane.route_owners import RouteProtocol
from percale.lab import pods
from tests.helpers.lab_checks import add_pods
from tests.helpers.lab_e2e import every_pod_reaches_every_pod, kernel_routes, running
from tests.helpers.processes import cmdline, descendants

pytestmark = pytest.mark.lab

NODES = ("node1", "node2", "node3")
GHOST_BLOCK = "10.244.250.0/26"
GHOST_MAC = "66:00:00:00:0a:0b"

JOIN = f"""
import asyncio, sys, time
from percale.api import parse
from percale.datastore.config import load_config, open_datastore
from percale.datastore import Key
from percale.ipam.allocator import IPAM

async def main(join):
    store = open_datastore(load_config())
    try:
        if join:
            await store.create(parse({{"apiVersion": "percale.io/v1", "kind": "Node",
                "metadata": {{"name": "ghost"}},
                "spec": {{"bgp": {{"ipv4Address": "10.0.0.50/24"}}, "ipv4VXLANTunnelAddr": "10.244.250.0",
                         "vxlanTunnelMACAddr": "{GHOST_MAC}"}}}}))
            changed = time.monotonic()  # the block's claim: what brings its route
            assert await IPAM(store).claim_affinity("ghost", "{GHOST_BLOCK}")
        else:
            changed = time.monotonic()
            await IPAM(store)._release_block_affinity("ghost", "{GHOST_BLOCK}", require_empty=True)
            await store.delete(Key("Node", "ghost"))
        print(changed)  # CLOCK_MONOTONIC: comparable across this machine's processes
    finally:
        await store.close()

asyncio.run(main(sys.argv[1] == "join"))
"""


def ghost_everywhere(lab) -> list[tuple[bool, bool, bool]]:
    """For each node: does it hold the ghost's neighbour, FDB entry, block route?"""
    found = []
    for node in NODES:
        neigh = lab.exec(node, ["ip", "neigh", "show", "dev", "vxlan.percale"], capture=True).stdout
        fdb = lab.exec(node, ["bridge", "fdb", "show", "dev", "vxlan.percale"], capture=True).stdout
        route = lab.exec(node, ["ip", "route", "show", GHOST_BLOCK], capture=True).stdout
        found.append((GHOST_MAC in neigh, "dst 10.0.0.50" in fdb, "10.244.250.0" in route))
    return found


def until(check, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_cluster_without_bgp_routes_every_pod_through_vxlan():
    with running("vxlan3") as lab:
        add_pods(lab, per_node=2)
        assert every_pod_reaches_every_pod(lab) == []
        for node in NODES:
            tree = [cmdline(pid) for record in lab.processes(node)
                    for pid in [record["pid"], *descendants(record["pid"])]]
            assert tree and not [c for c in tree if "exabgp" in c], tree
            routes = kernel_routes(lab, node, proto=RouteProtocol.VXLAN)
            others = {str(p.addresses[0]) for p in pods.pods(lab) if p.node != node}
            assert len(routes) >= 2 and all(any(_within(ip, r) for r in routes) for ip in others), routes
            assert kernel_routes(lab, node, proto=RouteProtocol.BLACKHOLE), node
            assert kernel_routes(lab, node, proto=RouteProtocol.BGP) == {}
            status = lab.exec(node, ["percalectl", "node", "status"], capture=True).stdout
            assert "BGP backend process (ExaBGP) is not running" in status, status

        # A node joins and leaves: every other node follows within a second.
        def ghost(action: str) -> None:
            done = lab.exec("node1", [sys.executable, "-c", JOIN, action], capture=True)
            assert done.returncode == 0, done.stderr

        ghost("join")
        joined = until(lambda: all(all(held) for held in ghost_everywhere(lab)), 5)
        ghost("leave")
        left = until(lambda: not any(any(held) for held in ghost_everywhere(lab)), 5)
        print(f"\nnode joined -> on all 3 nodes {joined:.2f} s; left -> gone {left:.2f} s")
        assert joined < 1 and left < 1, (joined, left)
        assert every_pod_reaches_every_pod(lab) == []


def _within(address: str, prefix: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(prefix)
