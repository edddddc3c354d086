"""What a node announces: its confirmed blocks, and /32s of what it borrowed."""

from __future__ import annotations

import asyncio

import pytest

from percale.bgpd.announcements import announcements
from percale.datastore import MemoryDatastore
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
    changed: borrowing, claiming, releasing, and another node's traffic."""
    from percale.bgpd.announcements import AnnouncementTable
    from percale.datastore.cache import Cache

    store = MemoryDatastore()
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)
    cache = Cache(store, ["BlockAffinity", "IPAMBlock"])
    table = AnnouncementTable("n2")
    changed: list[bool] = []

    def told(change):
        if change.kind == "BlockAffinity":
            changed.append(table.affinity(change.key.name, change.new.value if change.new else None))
        else:
            cidr = (change.new or change.old).value.spec.cidr
            changed.append(table.block(cidr, change.new.value if change.new else None))

    cache.subscribe(told)
    following = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        ipam = IPAM(store)
        steps = [
            lambda: ipam.auto_assign("n1", handle_id="a", num4=13),   # n1 takes every block
            lambda: ipam.auto_assign("n2", handle_id="b", num4=2),    # n2 borrows two
            lambda: ipam.auto_assign("n1", handle_id="c", num4=1),    # n1 alone: nothing for n2
            lambda: ipam.release_by_handle("b"),                      # n2 gives back what it borrowed
            lambda: ipam.release_by_handle("a"),
            lambda: ipam.release_by_handle("c"),
            lambda: ipam.release_host_affinities("n1"),
            lambda: ipam.auto_assign("n2", handle_id="d", num4=1),    # n2 claims a block of its own
        ]
        before = table.current
        for step in steps:
            await step()
            await asyncio.sleep(0.01)  # the watch delivers
            affinities = [kv.value for kv in (await store.list("BlockAffinity")).items]
            all_blocks = [kv.value for kv in (await store.list("IPAMBlock")).items]
            assert table.current == announcements("n2", affinities, all_blocks)
            assert any(changed) == (table.current != before)
            before, changed[:] = table.current, []
        assert table.current.blocks and not table.current.borrowed
    finally:
        following.cancel()
