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
