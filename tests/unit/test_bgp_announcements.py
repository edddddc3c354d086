"""What a node announces: its confirmed blocks, and /32s of what it borrowed."""

from __future__ import annotations

import asyncio

import pytest

from percale.bgpd.announcements import announcements
from percale.datastore import Key, MemoryDatastore
from percale.ipam.allocator import IPAM
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.unit


async def test_own_blocks_and_borrowed_addresses():
    store = MemoryDatastore()
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="a", num4=13)   # n1 claims all four blocks
    got = await ipam.auto_assign("n2", handle_id="b", num4=2)  # n2 borrows from n1's last block
    affinities = [kv.value for kv in (await store.list("BlockAffinity")).items]
    all_blocks = [kv.value for kv in (await store.list("IPAMBlock")).items]

    n1 = announcements("n1", affinities, all_blocks)
    assert n1.blocks == {"10.0.0.0/30", "10.0.0.4/30", "10.0.0.8/30", "10.0.0.12/30"}
    assert n1.borrowed == set()
    n2 = announcements("n2", affinities, all_blocks)
    assert n2.blocks == set()
    assert n2.borrowed == {f"{i.ip}/32" for i in got.ipv4}
    assert n2.prefixes == n2.borrowed


async def test_pending_affinities_are_not_announced():
    from percale.api import parse

    pending = parse({"apiVersion": "percale.io/v1", "kind": "BlockAffinity",
                     "metadata": {"name": "n1-10.0.0.0-26"},
                     "spec": {"state": "pending", "node": "n1", "cidr": "10.0.0.0/26"}})
    assert announcements("n1", [pending], []).blocks == set()


async def test_the_incremental_table_agrees_with_the_whole_computation_after_every_change():
    """AnnouncementTable, fed one affinity or block change at a time (as the agent's view tells
    it), says what `announcements` says of the whole state, and says `changed` only when it
    changed: borrowing, claiming, releasing, another node's traffic, and the pool's
    disableBGPExport turned on and off."""
    from percale.bgpd.announcements import AnnouncementTable
    from percale.datastore.cache import Cache

    store = MemoryDatastore()
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)
    cache = Cache(store, ["BlockAffinity", "IPAMBlock", "IPPool"])
    table = AnnouncementTable("n2")
    changed: list[bool] = []

    def told(change):
        if change.kind == "BlockAffinity":
            changed.append(table.affinity(change.key.name, change.new.value if change.new else None))
        elif change.kind == "IPPool":
            changed.append(table.pool(change.key.name, change.new.value if change.new else None))
        else:
            cidr = (change.new or change.old).value.spec.cidr
            changed.append(table.block(cidr, change.new.value if change.new else None))

    async def disable_export(flag: bool) -> None:
        current = await store.get(Key("IPPool", "p"))
        spec = current.value.spec.model_copy(update={"disable_bgp_export": flag})
        await store.update(current.value.model_copy(update={"spec": spec}), revision=current.revision)

    cache.subscribe(told)
    following = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        ipam = IPAM(store)
        steps = [
            lambda: ipam.auto_assign("n1", handle_id="a", num4=13),   # n1 takes every block
            lambda: ipam.auto_assign("n2", handle_id="b", num4=2),    # n2 borrows two
            lambda: disable_export(True),                             # ... not announced
            lambda: disable_export(False),                            # ... announced again
            lambda: ipam.auto_assign("n1", handle_id="c", num4=1),    # n1 alone: nothing for n2
            lambda: ipam.release_by_handle("b"),                      # n2 gives back what it borrowed
            lambda: ipam.release_by_handle("a"),
            lambda: ipam.release_by_handle("c"),
            lambda: ipam.release_host_affinities("n1"),
            lambda: ipam.auto_assign("n2", handle_id="d", num4=1),    # n2 claims a block of its own
            lambda: disable_export(True),                             # ... not announced
        ]
        before = table.current
        for step in steps:
            await step()
            await asyncio.sleep(0.01)  # the watch delivers
            affinities = [kv.value for kv in (await store.list("BlockAffinity")).items]
            all_blocks = [kv.value for kv in (await store.list("IPAMBlock")).items]
            pools = [kv.value for kv in (await store.list("IPPool")).items]
            assert table.current == announcements("n2", affinities, all_blocks, pools)
            assert any(changed) == (table.current != before)
            before, changed[:] = table.current, []
        assert table.current.blocks and not table.current.borrowed and not table.current.prefixes
    finally:
        following.cancel()


async def test_a_pool_with_disable_bgp_export_is_not_announced_but_stays_the_nodes():
    """disableBGPExport: BIRD's export filter rejects the pool's CIDR, so neither the node's
    blocks in it nor the /32s it borrowed there reach a peer. The blocks stay its own (they keep
    their blackhole routes); other pools are announced as before."""
    store = MemoryDatastore()
    await add_pool(store, "quiet", "10.0.0.0/28", blockSize=30, disableBGPExport=True)
    await add_pool(store, "loud", "10.1.0.0/28", blockSize=30)
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="a", num4=13, ipv4_pools=["quiet"])  # n1: every block
    quiet_borrowed = await ipam.auto_assign("n2", handle_id="b", num4=2, ipv4_pools=["quiet"])
    loud = await ipam.auto_assign("n2", handle_id="c", num4=1, ipv4_pools=["loud"])
    affinities = [kv.value for kv in (await store.list("BlockAffinity")).items]
    all_blocks = [kv.value for kv in (await store.list("IPAMBlock")).items]
    pools = [kv.value for kv in (await store.list("IPPool")).items]

    n1 = announcements("n1", affinities, all_blocks, pools)
    assert n1.blocks == {"10.0.0.0/30", "10.0.0.4/30", "10.0.0.8/30", "10.0.0.12/30"}
    assert n1.prefixes == set()
    n2 = announcements("n2", affinities, all_blocks, pools)
    assert n2.borrowed == {f"{i.ip}/32" for i in quiet_borrowed.ipv4}
    assert n2.prefixes == {str(loud.ipv4[0].network)}


async def test_the_incremental_table_follows_a_pools_disable_bgp_export():
    """Setting disableBGPExport withdraws the pool's prefixes; clearing it (or deleting the pool)
    announces them again; any other change of a pool is no change here."""
    from percale.bgpd.announcements import AnnouncementTable

    store = MemoryDatastore()
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)
    ipam = IPAM(store)
    own = await ipam.auto_assign("n1", handle_id="a", num4=1)
    block = str(own.ipv4[0].network)
    table = AnnouncementTable("n1")
    for kv in (await store.list("BlockAffinity")).items:
        table.affinity(kv.key.name, kv.value)
    pool = (await store.list("IPPool")).items[0].value
    assert table.pool("p", pool) is False
    assert table.current.prefixes == {block}

    quiet = pool.model_copy(update={"spec": pool.spec.model_copy(update={"disable_bgp_export": True})})
    assert table.pool("p", quiet) is True
    assert table.current.prefixes == set() and table.current.blocks == {block}
    natted = quiet.model_copy(update={"spec": quiet.spec.model_copy(update={"nat_outgoing": True})})
    assert table.pool("p", natted) is False
    assert table.pool("p", pool) is True
    assert table.current.prefixes == {block}
    table.pool("p", quiet)
    assert table.pool("p", None) is True
    assert table.current.prefixes == {block}


# ---------------------------------------------------------------- service CIDRs

def bgp_configuration(name: str = "default", **spec):
    from percale.api import parse
    return parse({"apiVersion": "percale.io/v1", "kind": "BGPConfiguration",
                  "metadata": {"name": name}, "spec": spec})


def a_node(name: str, labels: dict[str, str] | None = None):
    from percale.api import parse
    return parse({"apiVersion": "percale.io/v1", "kind": "Node",
                  "metadata": {"name": name, "labels": labels or {}}, "spec": {}})


SERVICES = bgp_configuration(
    serviceClusterIPs=[{"cidr": "10.96.0.0/12"}, {"cidr": "fd00:96::/112"}],
    serviceExternalIPs=[{"cidr": "203.0.113.0/24"}],
    serviceLoadBalancerIPs=[{"cidr": "198.51.100.0/24"}])
ALL_SERVICES = {"10.96.0.0/12", "fd00:96::/112", "203.0.113.0/24", "198.51.100.0/24"}


async def test_every_node_announces_the_service_cidrs_of_the_global_configuration():
    """Calico advertises serviceClusterIPs, serviceExternalIPs and serviceLoadBalancerIPs from
    every node, IPv4 and IPv6, beside the node's own blocks, and never as the node's blocks (no
    blackhole, not an "own route" to the RIB)."""
    store = MemoryDatastore()
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)
    await IPAM(store).auto_assign("n1", handle_id="a", num4=1)
    affinities = [kv.value for kv in (await store.list("BlockAffinity")).items]
    all_blocks = [kv.value for kv in (await store.list("IPAMBlock")).items]

    n1 = announcements("n1", affinities, all_blocks, configs=[SERVICES])
    assert n1.services == ALL_SERVICES
    assert n1.prefixes == n1.blocks | ALL_SERVICES and len(n1.blocks) == 1
    assert announcements("n2", affinities, all_blocks, configs=[SERVICES]).prefixes == ALL_SERVICES
    assert announcements("n2", [], [], configs=[bgp_configuration()]).prefixes == set()


async def test_a_node_labelled_exclude_from_external_load_balancers_announces_no_service_cidr():
    """confd's ExcludeServiceAdvertisement: the label, with the value "true" only."""
    excluded = a_node("n1", {"node.kubernetes.io/exclude-from-external-load-balancers": "true"})
    other_value = a_node("n1", {"node.kubernetes.io/exclude-from-external-load-balancers": "yes"})
    assert announcements("n1", [], [], configs=[SERVICES], nodes=[excluded]).prefixes == set()
    assert announcements("n1", [], [], configs=[SERVICES], nodes=[other_value]).services == ALL_SERVICES
    # another node's label is not this node's
    assert announcements("n2", [], [], configs=[SERVICES], nodes=[excluded]).services == ALL_SERVICES


async def test_a_service_cidr_inside_a_pool_with_disable_bgp_export_is_withheld():
    """BIRD's export filter rejects the disabled pool's range before it accepts static routes."""
    from percale.api import parse
    quiet = parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "q"},
                   "spec": {"cidr": "198.51.100.0/24", "disableBGPExport": True}})
    n1 = announcements("n1", [], [], pools=[quiet], configs=[SERVICES])
    assert n1.prefixes == ALL_SERVICES - {"198.51.100.0/24"}


def test_the_incremental_table_follows_the_service_cidrs_and_the_nodes_label():
    """Adding, changing or dropping service CIDRs in the global BGPConfiguration changes what the
    node announces; any other field, or a node.<name> configuration, is no change here; the
    node's exclusion label withdraws them all and gives them back."""
    from percale.bgpd.announcements import AnnouncementTable

    table = AnnouncementTable("n1")
    assert table.configuration("default", bgp_configuration(asNumber=64513)) is False
    assert table.configuration("default", SERVICES) is True
    assert table.current.prefixes == ALL_SERVICES
    assert table.configuration("default", SERVICES.model_copy(
        update={"spec": SERVICES.spec.model_copy(update={"as_number": 64513})})) is False
    assert table.configuration("node.n1", bgp_configuration("node.n1", listenPort=1790)) is False

    fewer = bgp_configuration(serviceClusterIPs=[{"cidr": "10.96.0.0/12"}])
    assert table.configuration("default", fewer) is True
    assert table.current.prefixes == {"10.96.0.0/12"}

    label = {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}
    assert table.own_node(a_node("n1", {"rack": "a"})) is False
    assert table.own_node(a_node("n1", label)) is True
    assert table.current.prefixes == set()
    assert table.configuration("default", SERVICES) is False  # excluded: still nothing announced
    assert table.current.prefixes == set()
    assert table.own_node(a_node("n1")) is True
    assert table.current.prefixes == ALL_SERVICES

    assert table.configuration("default", None) is True  # the global configuration deleted
    assert table.current.prefixes == set()
