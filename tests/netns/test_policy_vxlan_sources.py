"""VXLAN to a node is taken only from nodes (felix's all-vxlan-net guard of cali-INPUT), on two
real dual-stack percale nodes whose pods go over VXLAN in both families, and a host outside the
cluster beside node A. The devices unwrap whatever reaches port 4789: the outside host sent a
frame with VNI 4096, A's VTEP MAC (derived from the node name, published on the Node) and
q's address inside, and p took it as coming from q (whom its policy may well allow).

    node A (10.99.0.1, fd00:99::1): p       outside (203.0.113.2, fd00:98::2), linked to A
    node B (10.99.0.2, fd00:99::2): q
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

import pytest

from percale.datastore import Key
from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode, meshed_pair
from tests.helpers.policy_matrix import empty_etcd
from tests.helpers.store import with_store
from tests.netns.test_policy_pod_guards import (
    VXLAN_PORT,
    Pod,
    _add_pod,
    arrives,
    ipv4_udp,
    ipv6_udp,
    received,
    send,
    vxlan_frame,
)

pytestmark = pytest.mark.netns

POOL6 = "fd00:10:245::/64"
NODE_A = {"v4": "10.99.0.1", "v6": "fd00:99::1"}  # as meshed_pair registers them
DEVICE = {"v4": "vxlan.percale", "v6": "vxlan6.percale"}


@dataclass
class Lab:
    a: CNINode
    b: CNINode
    p: Pod
    q: Pod
    outside: str

    def forged(self, family: str, payload: bytes) -> bytes:
        """A VXLAN frame for A's device of `family` holding a UDP datagram from q to p:80."""
        mac = json.loads(self.a.exec("ip", "-j", "link", "show", DEVICE[family]).stdout)[0]
        packet = (ipv4_udp if family == "v4" else ipv6_udp)(
            getattr(self.q, family), getattr(self.p, family), 80, payload)
        return vxlan_frame(mac["address"], packet)

    def guard_drops(self, family: str) -> int:
        """Packets node A's guard dropped for `family` (0 without the guard)."""
        listing = self.a.exec("nft", "list", "chain", "inet", "percale", "vxlan-input",
                              check=False).stdout
        found = re.search(r"counter packets (\d+) bytes \d+ drop comment \"IPv"
                          + family[1] + " VXLAN", listing)
        return int(found[1]) if found else 0


def _add_outside_host(a: CNINode) -> str:
    """A namespace that is no node, on its own link to node A (203.0.113.0/24, fd00:98::/64),
    removed with A."""
    outside = f"{a.name}x"
    subprocess.run(["ip", "netns", "add", outside], check=True)
    a.pods.append(outside)
    subprocess.run(["ip", "link", "add", "outside", "netns", a.name, "type", "veth", "peer",
                    "name", "eth0", "netns", outside], check=True)
    a.exec("ip", "addr", "add", "203.0.113.1/24", "dev", "outside")
    a.exec("ip", "addr", "add", "fd00:98::1/64", "dev", "outside", "nodad")
    a.exec("ip", "link", "set", "outside", "up")
    for command in (["ip", "addr", "add", "203.0.113.2/24", "dev", "eth0"],
                    ["ip", "addr", "add", "fd00:98::2/64", "dev", "eth0", "nodad"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", "203.0.113.1"],
                    ["ip", "-6", "route", "add", "default", "via", "fd00:98::1"]):
        subprocess.run(["ip", "netns", "exec", outside, *command], check=True)
    return outside


def _over_vxlan(node: CNINode, address: str, family: str) -> bool:
    route = node.exec("ip", "route", "get", address, check=False).stdout
    return f"dev {DEVICE[family]}" in route


@pytest.fixture(scope="module")
def lab(etcd_server):
    empty_etcd(etcd_server)
    a, b = meshed_pair(etcd_server.endpoint, etcd_server.unix_endpoint, ipv6_pool=POOL6)
    try:
        async def vxlan_always(store):
            for name in ("pods", "pods6"):
                pool = await store.get(Key("IPPool", name))
                spec = pool.value.spec.model_copy(update={"vxlan_mode": "Always"})
                await store.update(pool.value.model_copy(update={"spec": spec}),
                                   revision=pool.revision)
        with_store(etcd_server.endpoint, vxlan_always)
        p, q = _add_pod(a, "p"), _add_pod(b, "q")
        world = Lab(a, b, p, q, _add_outside_host(a))
        # Both families between the nodes over their VXLAN devices.
        assert wait_for(lambda: all(_over_vxlan(b, getattr(p, f), f)
                                    and _over_vxlan(a, getattr(q, f), f) for f in DEVICE), 30), (
            a.exec("ip", "route").stdout + a.exec("ip", "-6", "route").stdout)
        assert wait_for(lambda: arrives(q.netns, p.v4, p.netns)
                        and arrives(q.netns, p.v6, p.netns), 30)
        yield world
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_vxlan_from_a_host_that_is_not_a_node_does_not_reach_a_pod(lab, family):
    """The outside host's frame is dropped at A's input and counted; the very same frame sent
    by node B, and q's own traffic over the tunnel, still come out at p."""
    assert arrives(lab.q.netns, getattr(lab.p, family), lab.p.netns)
    frame = lab.forged(family, b"forged by a host that is no node")
    before = lab.guard_drops(family)
    got = received(lab.p.netns, "udp", 80,
                   lambda: send(lab.outside, NODE_A[family], VXLAN_PORT, frame))
    assert b"forged by a host that is no node".hex() not in got
    assert lab.guard_drops(family) > before
    # The frame itself is good: from node B's address it comes out at p.
    got = received(lab.p.netns, "udp", 80, lambda: send(lab.b.netns, NODE_A[family], VXLAN_PORT,
                                                        frame))
    assert b"forged by a host that is no node".hex() in got


def test_vxlan_from_a_host_that_is_not_a_node_to_a_broadcast_address_is_dropped(lab):
    """The devices unwrap a frame sent to a broadcast address as well (measured: felix's
    shape of the rule, which drops only what goes to a local address, let it through to p):
    the guard drops whatever VXLAN the node takes in, whatever its destination."""
    frame = lab.forged("v4", b"forged to a broadcast address")
    for broadcast in ("203.0.113.255", "255.255.255.255"):
        got = received(lab.p.netns, "udp", 80,
                       lambda: send(lab.outside, broadcast, VXLAN_PORT, frame))
        assert b"forged to a broadcast address".hex() not in got, broadcast


def test_the_sets_hold_both_nodes_addresses(lab):
    """What the guard lets in: the Nodes' addresses, as the VXLAN side uses them."""
    for family, version in (("v4", "4"), ("v6", "6")):
        listing = lab.a.exec("nft", "list", "set", "inet", "percale",
                             f"all-vxlan-net{version}").stdout
        elements = re.search(r"elements = \{ ([^}]*) \}", listing)[1]
        assert sorted(e.strip() for e in elements.split(",")) == sorted(
            [NODE_A[family], "10.99.0.2" if family == "v4" else "fd00:99::2"])
