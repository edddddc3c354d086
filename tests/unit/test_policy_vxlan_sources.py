"""The table's guard of the VXLAN port (felix's all-vxlan-net): the compiled chain and sets, the
update a moved node costs, and the agent keeping the sets current from Nodes and IPPools.
tests/netns/test_policy_vxlan_sources.py checks the same against the kernel."""

from __future__ import annotations

import asyncio

import pytest

from percale.api import parse
from percale.datastore import Key, MemoryDatastore
from percale.datastore.cache import Cache
from percale.node.policy_agent import POLICY_KINDS, PolicyAgent
from percale.policy.compile import (
    BASE_CHAINS,
    VXLAN_INPUT_CHAIN,
    NftSet,
    PolicyEndpoint,
    compile_ruleset,
    render,
)
from percale.policy.nft import update_script
from tests.helpers.ipam_world import add_pool
from tests.helpers.store import put_node
from tests.unit.test_policy_agent import RecordingTable

pytestmark = pytest.mark.unit

WEB = PolicyEndpoint("shop/web", "shop", "pcl000000000001", ("10.244.0.2", "fd00::2"),
                     {"app": "web"})
DROP4 = ('ip saddr != @all-vxlan-net4 counter drop '
         'comment "IPv4 VXLAN from a host that is not a node"')
DROP6 = ('ip6 saddr != @all-vxlan-net6 counter drop '
         'comment "IPv6 VXLAN from a host that is not a node"')


def test_vxlan_from_an_address_outside_the_nodes_is_dropped_per_family_in_use():
    ruleset = compile_ruleset([], {}, [WEB], {4: ["10.99.0.2", "10.99.0.1"],
                                              6: ["fd00:99::1"]})
    assert ruleset.chains[VXLAN_INPUT_CHAIN] == [DROP4, DROP6]
    assert ruleset.sets["all-vxlan-net4"] == NftSet("ipv4_addr", False,
                                                    ("10.99.0.1", "10.99.0.2"))
    assert ruleset.sets["all-vxlan-net6"] == NftSet("ipv6_addr", False, ("fd00:99::1",))
    only4 = compile_ruleset([], {}, [WEB], {4: ["10.99.0.1"]})
    assert only4.chains[VXLAN_INPUT_CHAIN] == [DROP4]
    assert "all-vxlan-net6" not in only4.sets


def test_without_vxlan_the_chain_is_there_and_empty():
    ruleset = compile_ruleset([], {}, [WEB])
    assert ruleset.chains[VXLAN_INPUT_CHAIN] == []
    assert not any(name.startswith("all-vxlan-net") for name in ruleset.sets)
    assert "chain vxlan-input {" in render(ruleset)


def test_the_input_chain_sends_vxlan_there_after_the_pods_egress_chains():
    """A pod's own VXLAN meets its egress chain first (dropped under its name); what comes
    from anywhere else, whatever address it is sent to, meets the guard."""
    rules = BASE_CHAINS["input"]
    assert rules[-1] == "udp dport 4789 jump vxlan-input"
    assert rules.index('iifname "pcl*" jump from-endpoint-dispatch') < len(rules) - 1
    assert not any("fib daddr" in rule for rule in rules)


def test_a_node_that_moves_changes_the_set_and_no_chain():
    before = compile_ruleset([], {}, [WEB], {4: ["10.99.0.1", "10.99.0.2"]})
    after = compile_ruleset([], {}, [WEB], {4: ["10.99.0.1", "10.99.0.3"]})
    assert update_script(before, after).splitlines() == [
        "flush set inet percale all-vxlan-net4",
        "add element inet percale all-vxlan-net4 { 10.99.0.1, 10.99.0.3 }"]


def test_vxlan_coming_and_going_adds_the_set_before_its_rule_and_deletes_it_after():
    without = compile_ruleset([], {}, [WEB])
    with_vxlan = compile_ruleset([], {}, [WEB], {6: ["fd00:99::1"]})
    lines = update_script(without, with_vxlan).splitlines()
    assert lines == ["add set inet percale all-vxlan-net6 { type ipv6_addr; "
                     "elements = { fd00:99::1 }; }",
                     "flush chain inet percale vxlan-input",
                     f"add rule inet percale vxlan-input {DROP6}"]
    lines = update_script(with_vxlan, without).splitlines()
    assert lines == ["flush chain inet percale vxlan-input",
                     "delete set inet percale all-vxlan-net6"]


# -- the agent ---------------------------------------------------------------------------------

def node(name: str, v4: str | None, v6: str | None = None):
    bgp = {**({"ipv4Address": v4} if v4 else {}), **({"ipv6Address": v6} if v6 else {})}
    return parse({"apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": name},
                  "spec": {"bgp": bgp}})


@pytest.fixture
async def world():
    memory = MemoryDatastore()
    cache = Cache(memory, POLICY_KINDS + ("Node", "IPPool"), node="node1")
    table = RecordingTable()
    agent = PolicyAgent(cache, "node1", table=table)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(agent.run())]
    await cache.wait_synced()
    yield memory, agent, table
    for task in tasks:
        task.cancel()


async def applied(table: RecordingTable, wanted) -> dict[int, tuple[str, ...]]:
    """The guard's sources in the last ruleset applied, once `wanted` of them."""
    for _ in range(400):
        await asyncio.sleep(0.005)
        if table.applied is None:
            continue
        found = {version: table.applied.sets[f"all-vxlan-net{version}"].elements
                 for version in (4, 6) if f"all-vxlan-net{version}" in table.applied.sets}
        if wanted(found):
            return found
    raise AssertionError(f"never applied: {found}")


async def test_the_sets_follow_the_nodes_and_the_pools(world):
    memory, agent, table = world
    await put_node(memory, node("node1", "10.99.0.1/24", "fd00:99::1/64"))
    await put_node(memory, node("node2", "10.99.0.2/24"))
    # No VXLAN pool: no guard, whatever the Nodes say.
    assert await applied(table, lambda found: found == {}) == {}
    await add_pool(memory, "pods", "10.244.0.0/16", vxlanMode="Always")
    assert await applied(table, lambda found: 4 in found) == {4: ("10.99.0.1", "10.99.0.2")}
    await add_pool(memory, "pods6", "fd00:10::/64", vxlanMode="CrossSubnet")
    assert (await applied(table, lambda found: 6 in found))[6] == ("fd00:99::1",)
    await put_node(memory, node("node2", "10.99.0.22/24", "fd00:99::2/64"))
    assert await applied(table, lambda found: "10.99.0.22" in found[4]) == {
        4: ("10.99.0.1", "10.99.0.22"), 6: ("fd00:99::1", "fd00:99::2")}
    await put_node(memory, node("node3", "10.99.0.3/24"))
    assert "10.99.0.3" in (await applied(table, lambda found: len(found[4]) == 3))[4]
    await memory.delete(Key("Node", "node2"))
    assert await applied(table, lambda found: len(found[4]) == 2) == {
        4: ("10.99.0.1", "10.99.0.3"), 6: ("fd00:99::1",)}
    pool = await memory.get(Key("IPPool", "pods6"))
    spec = pool.value.spec.model_copy(update={"vxlan_mode": "Never"})
    await memory.update(pool.value.model_copy(update={"spec": spec}), revision=pool.revision)
    assert await applied(table, lambda found: 6 not in found) == {4: ("10.99.0.1", "10.99.0.3")}
    assert table.applied.chains[VXLAN_INPUT_CHAIN] == [DROP4]


async def test_a_node_change_that_moves_no_address_compiles_nothing(world):
    memory, agent, table = world
    await add_pool(memory, "pods", "10.244.0.0/16", vxlanMode="Always")
    await put_node(memory, node("node2", "10.99.0.2/24"))
    await applied(table, lambda found: found.get(4) == ("10.99.0.2",))
    compiled = len(table.history)
    current = await memory.get(Key("Node", "node2"))
    spec = current.value.spec.model_copy(update={"ipv4_vxlan_tunnel_addr": "10.244.0.1"})
    await memory.update(current.value.model_copy(update={"spec": spec}),
                        revision=current.revision)
    await asyncio.sleep(0.1)
    assert len(table.history) == compiled
