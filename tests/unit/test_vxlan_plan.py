"""The VXLAN route plan (vxlan/plan.py): felix's decisions, pure. Two subnets; blocks owned by
nodes on each; pools in each mode; a borrowed address; tunnel ends known or not yet; BGP on or
off; and the claims the BGP side must respect."""

from __future__ import annotations

import ipaddress

import pytest

from percale.api import IPAMBlock, parse
from percale.ipam import blocks as block_math
from percale.vxlan.plan import Clash, Hop, MTUTooSmall, RoutePlan, pod_mtu, tunnel_mtu, vtep_mac

pytestmark = pytest.mark.unit

net = ipaddress.ip_network
ip = ipaddress.ip_address


def node(name: str, address: str, tunnel: str | None = None, mac: str | None = None):
    spec: dict = {"bgp": {"ipv4Address": address}}
    if tunnel:
        spec["ipv4VXLANTunnelAddr"] = tunnel
    if mac:
        spec["vxlanTunnelMACAddr"] = mac
    return parse({"apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": name}, "spec": spec})


def pool(cidr: str, mode: str):
    return parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "p" + str(abs(hash(cidr)))},
                  "spec": {"cidr": cidr, "vxlanMode": mode}})


def block(cidr: str, owner: str | None, *holders: str) -> IPAMBlock:
    value = IPAMBlock.empty(cidr, affinity=f"host:{owner}" if owner else None)
    spec = value.spec
    for i, holder in enumerate(holders):
        spec, _ = block_math.assign(spec, 1, f"h{i}", {"node": holder})
    return value.model_copy(update={"spec": spec})


def plan_for(mode: str, *, bgp: bool) -> RoutePlan:
    plan = RoutePlan("a", bgp=bgp)
    plan.set_pools([pool("10.244.0.0/16", mode)])
    for n in (node("a", "10.0.1.11/24", "10.244.1.0"), node("b", "10.0.1.12/24", "10.244.2.0"),
              node("c", "10.0.2.13/24", "10.244.3.0", "66:00:00:00:00:0c")):
        plan.set_node(n.metadata.name, n)
    # a's own block, with an address c borrowed; b's block; c's block.
    plan.set_block("10.244.1.0/26", block("10.244.1.0/26", "a", "a", "c"))
    plan.set_block("10.244.2.0/26", block("10.244.2.0/26", "b", "b"))
    plan.set_block("10.244.3.0/26", block("10.244.3.0/26", "c", "c"))
    return plan


def test_cross_subnet_with_bgp_tunnels_only_to_the_other_subnet():
    plan = plan_for("CrossSubnet", bgp=True)
    assert dict(plan.routes) == {
        net("10.244.3.0/26"): Hop(ip("10.244.3.0"), tunnel=True),
        net("10.244.1.1/32"): Hop(ip("10.244.3.0"), tunnel=True),  # borrowed by c: to c
    }
    assert net("10.244.3.0/26") in plan.claimed and net("10.244.2.0/26") not in plan.claimed


def test_cross_subnet_without_bgp_routes_the_own_subnet_directly():
    plan = plan_for("CrossSubnet", bgp=False)
    assert plan.routes[net("10.244.2.0/26")] == Hop(ip("10.0.1.12"), tunnel=False)
    assert net("10.244.2.0/26") in plan.claimed


def test_always_tunnels_to_every_node_and_never_leaves_all_to_bgp():
    always = plan_for("Always", bgp=True)
    assert always.routes[net("10.244.2.0/26")] == Hop(ip("10.244.2.0"), tunnel=True)
    assert net("10.244.1.0/26") not in always.routes  # never a route to its own block
    never = plan_for("Never", bgp=False)
    assert dict(never.routes) == {} and net("10.244.2.0/26") not in never.claimed


def test_mode_changes_report_the_difference_and_flip_the_claims():
    plan = plan_for("Never", bgp=True)
    plan.changes()
    plan.set_pools([pool("10.244.0.0/16", "Always")])
    added = plan.changes()
    assert set(added) == {net("10.244.2.0/26"), net("10.244.3.0/26"), net("10.244.1.1/32")}
    assert plan.claims_changed
    plan.set_pools([pool("10.244.0.0/16", "Never")])
    assert plan.changes() == {prefix: None for prefix in added}
    assert net("10.244.2.0/26") not in plan.claimed


def test_a_route_waits_for_its_tunnel_end_and_follows_a_node_that_goes():
    plan = RoutePlan("a", bgp=True)
    plan.set_pools([pool("10.244.0.0/16", "Always")])
    plan.set_node("a", node("a", "10.0.1.11/24", "10.244.1.0"))
    plan.set_block("10.244.4.0/26", block("10.244.4.0/26", "d", "d"))
    assert dict(plan.routes) == {} and net("10.244.4.0/26") in plan.claimed  # claimed, not routed
    plan.set_node("d", node("d", "10.0.2.14/24", "10.244.4.0"))
    assert plan.changes() == {net("10.244.4.0/26"): Hop(ip("10.244.4.0"), tunnel=True)}
    assert {v.node for v in plan.vteps()} == {"d"}
    assert next(iter(plan.vteps())).mac == vtep_mac("d")
    plan.set_node("d", None)
    assert plan.changes() == {net("10.244.4.0/26"): None} and plan.vteps() == set()


def test_a_block_changed_elsewhere_costs_only_that_block():
    plan = plan_for("Always", bgp=True)
    plan.changes()
    plan.set_block("10.244.3.0/26", block("10.244.3.0/26", "c", "c", "b"))  # b borrows in c's block
    assert plan.changes() == {net("10.244.3.1/32"): Hop(ip("10.244.2.0"), tunnel=True)}
    plan.set_block("10.244.3.0/26", None)
    assert set(plan.changes()) == {net("10.244.3.0/26"), net("10.244.3.1/32")}


def test_macs_and_mtus_as_felix_makes_them():
    mac = vtep_mac("node1")
    assert mac.startswith("66:") and len(mac.split(":")) == 6 and vtep_mac("node1", 6) != mac
    assert pod_mtu(1500, [pool("10.244.0.0/16", "Always")]) == 1450
    assert pod_mtu(1500, [pool("10.244.0.0/16", "Never")]) == 1500
    assert pod_mtu(9000, [pool("fd00::/48", "CrossSubnet")]) == 8930


def test_the_ipv6_plan_routes_ipv6_blocks_to_ipv6_tunnel_ends():
    def node6(name: str, address: str, tunnel: str):
        return parse({"apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": name},
                      "spec": {"bgp": {"ipv4Address": "10.0.1.1/24", "ipv6Address": address},
                               "ipv6VXLANTunnelAddr": tunnel}})

    plan = RoutePlan("a", bgp=True, version=6)
    plan.set_pools([pool("fd00:10::/48", "CrossSubnet"), pool("10.244.0.0/16", "Always")])
    plan.set_node("a", node6("a", "fd00:1::1/64", "fd00:10:0:1::"))
    plan.set_node("b", node6("b", "fd00:2::2/64", "fd00:10:0:2::"))
    plan.set_block("fd00:10:0:2::/122", block("fd00:10:0:2::/122", "b", "b"))
    plan.set_block("10.244.2.0/26", block("10.244.2.0/26", "b", "b"))  # IPv4: the other plan's
    assert dict(plan.routes) == {net("fd00:10:0:2::/122"): Hop(ip("fd00:10:0:2::"), tunnel=True)}
    (vtep,) = plan.vteps()
    assert (vtep.node_address, vtep.mac) == (ip("fd00:2::2"), vtep_mac("b", 6))


def test_a_host_mtu_too_small_for_ipv6_stops_the_ipv6_tunnel_alone():
    """Above the start-up minimum (646) but below 1350, IPv4 VXLAN fits and IPv6 cannot: IPv6
    needs a 1280-byte link (RFC 8200 §5), and Linux refuses an IPv6 address on a smaller one."""
    assert tunnel_mtu(1300, 4) == 1250
    with pytest.raises(MTUTooSmall, match=r"leaves the tunnel 1230, below IPv6's minimum.*1280"):
        tunnel_mtu(1300, 6)
    assert tunnel_mtu(1350, 6) == 1280


def clashing_nodes():
    return [node("a", "10.0.1.11/24", "10.244.1.0", "66:00:00:00:00:0a"),
            node("c", "10.0.2.13/24", "10.244.3.0", "66:00:00:00:00:0c"),
            node("b", "10.0.1.12/24", "10.244.3.0", "66:00:00:00:00:0b"),  # c's tunnel address
            node("d", "10.0.2.14/24", "10.244.4.0", "66:00:00:00:00:0b")]  # b's MAC


@pytest.mark.parametrize("order", [1, -1], ids=["b-first", "d-first"])
def test_nodes_sharing_a_tunnel_address_or_mac_keep_the_first_by_name(order):
    """The kernel holds one neighbour entry per tunnel address and one FDB entry per MAC: of two
    nodes publishing one, the first by name is programmed and the other left out, its routes
    waiting, whatever order the Nodes arrived in (every node of the cluster agrees)."""
    plan = RoutePlan("a", bgp=True)
    plan.set_pools([pool("10.244.0.0/16", "Always")])
    for cidr, owner in (("10.244.2.0/26", "b"), ("10.244.3.0/26", "c"), ("10.244.4.0/26", "d")):
        plan.set_block(cidr, block(cidr, owner, owner))
    for n in clashing_nodes()[::order]:
        plan.set_node(n.metadata.name, n)
    assert {v.node for v in plan.vteps()} == {"b"}
    assert plan.clashes() == {Clash("tunnel address", "10.244.3.0", "b", "c"),
                              Clash("MAC", "66:00:00:00:00:0b", "b", "d")}
    # b's block goes to b; c's and d's wait.
    assert dict(plan.routes) == {net("10.244.2.0/26"): Hop(ip("10.244.3.0"), tunnel=True)}
    assert net("10.244.3.0/26") in plan.claimed  # still VXLAN's: BGP must not take it meanwhile

    # c takes an address of its own: it is programmed and routed, and the clash is over.
    plan.changes()
    plan.vteps_changed = False
    plan.set_node("c", node("c", "10.0.2.13/24", "10.244.3.64", "66:00:00:00:00:0c"))
    assert plan.vteps_changed and {v.node for v in plan.vteps()} == {"b", "c"}
    assert plan.changes() == {net("10.244.3.0/26"): Hop(ip("10.244.3.64"), tunnel=True)}
    assert plan.clashes() == {Clash("MAC", "66:00:00:00:00:0b", "b", "d")}
    # b goes: d's MAC is its own again.
    plan.set_node("b", None)
    assert {v.node for v in plan.vteps()} == {"c", "d"} and plan.clashes() == set()
    assert plan.routes[net("10.244.4.0/26")] == Hop(ip("10.244.4.0"), tunnel=True)


def test_a_node_publishing_this_nodes_tunnel_address_is_left_out_when_it_sorts_after():
    plan = RoutePlan("a", bgp=True)
    plan.set_pools([pool("10.244.0.0/16", "Always")])
    plan.set_block("10.244.2.0/26", block("10.244.2.0/26", "b", "b"))
    plan.set_node("b", node("b", "10.0.1.12/24", "10.244.1.0"))
    assert {v.node for v in plan.vteps()} == {"b"}
    plan.vteps_changed = False
    plan.set_node("a", node("a", "10.0.1.11/24", "10.244.1.0"))  # this node, sorting first
    assert plan.vteps_changed and plan.vteps() == set() and dict(plan.routes) == {}
    assert plan.clashes() == {Clash("tunnel address", "10.244.1.0", "a", "b")}

