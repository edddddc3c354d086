"""IP cooldown (IPAMConfig ipCooldownSeconds, Calico's): an address released while it is set
is not handed out again until the cooldown has passed, though its handle lets go of it at once;
percale-controllers frees cooled addresses in blocks no allocation touches."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from percale.datastore import Key, MemoryDatastore
from percale.ipam.allocator import IPAM
from percale.ipam.check import check
from percale.ipam.errors import AddressInUse, PoolsExhausted
from percale.ipam.gc import GarbageCollector
from percale.api.ipam import block_name
from tests.helpers.ipam_pods import node
from tests.helpers.ipam_world import add_pool, assert_consistent

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=[True, False], ids=["one-transaction", "two-step"])
async def world(request):
    """A pool of one /30 block (four addresses), full on node n1, one address released."""
    store = MemoryDatastore(multi_key=request.param)
    await add_pool(store, "p", "10.0.0.0/30", blockSize=30)
    await store.create(node("n1"))  # a live node: a node with no Node is gone, for the collector
    clock = Clock()
    ipam = IPAM(store, clock=clock)
    await ipam.set_config(ip_cooldown_seconds=60)
    held = []
    for i in range(4):
        got = await ipam.auto_assign("n1", handle_id=f"pod-{i}", num4=1)
        held.append(str(got.ipv4[0].ip))
    assert (await ipam.release_ips([held[0]])).released == [held[0]]
    return store, ipam, clock, held[0]


async def test_a_released_address_is_not_handed_out_until_its_cooldown_has_passed(world):
    store, ipam, clock, released = world
    await assert_consistent(store)  # its handle let go of it at once
    assert await ipam.ips_by_handle("pod-0") == []
    assert await ipam.get_allocation(released) is None
    clock.now += timedelta(seconds=59)
    with pytest.raises(PoolsExhausted):
        await ipam.auto_assign("n1", handle_id="next", num4=1)
    with pytest.raises(AddressInUse, match="cooling down"):
        await ipam.assign_ip("n1", released, handle_id="given")
    clock.now += timedelta(seconds=1)
    got = await ipam.auto_assign("n1", handle_id="next", num4=1)
    assert str(got.ipv4[0].ip) == released
    await assert_consistent(store)


async def test_releasing_a_cooling_address_again_changes_nothing(world):
    store, ipam, clock, released = world
    again = await ipam.release_ips([released])
    assert again.released == [] and again.unallocated == [released]


async def test_the_check_counts_cooling_addresses_and_calls_none_of_them_leaked(world):
    store, ipam, clock, released = world
    report = await check(store)
    assert report.cooling == 1
    assert released not in report.allocations
    assert released not in report.leaked_ips


async def test_the_collector_frees_cooled_addresses_in_a_block_no_one_allocates_from(world):
    store, ipam, clock, released = world
    gc = GarbageCollector(ipam)
    assert (await gc.run_once(clock.now + timedelta(seconds=30))).cooled == 0
    assert (await gc.run_once(clock.now + timedelta(seconds=61))).cooled == 1
    spec = (await store.get(Key("IPAMBlock", block_name("10.0.0.0/30")))).value.spec
    assert spec.unallocated == [0] and spec.attributes and all(
        a.released_at is None for a in spec.attributes)
    await assert_consistent(store)


async def test_with_no_cooldown_a_released_address_is_free_at_once():
    store = MemoryDatastore()
    await add_pool(store, "p", "10.0.0.0/30", blockSize=30)
    ipam = IPAM(store)
    got = [str((await ipam.auto_assign("n1", handle_id=f"pod-{i}", num4=1)).ipv4[0].ip)
           for i in range(4)]
    await ipam.release_ips([got[2]])
    assert str((await ipam.auto_assign("n1", handle_id="next", num4=1)).ipv4[0].ip) == got[2]


async def test_an_undone_request_puts_nothing_into_the_cooldown():
    # A dual-stack ADD that fails on IPv6 gives its IPv4 address back; no pod ever had it, so it
    # is free at once, or every retry of the ADD would hold one more address for the cooldown.
    store = MemoryDatastore()
    await add_pool(store, "v4", "10.0.0.0/30", blockSize=30)
    await add_pool(store, "v6", "fd00::/127", blockSize=127)
    ipam = IPAM(store)
    await ipam.set_config(ip_cooldown_seconds=600)
    for i in range(2):
        await ipam.auto_assign("n1", handle_id=f"ok-{i}", num4=1, num6=1)
    for _ in range(2):  # IPv6 is full: the ADD fails, and is tried again
        with pytest.raises(PoolsExhausted):
            await ipam.auto_assign("n1", handle_id="pending", num4=1, num6=1)
    got = await ipam.auto_assign("n1", handle_id="v4-only", num4=2)
    assert len(got.ipv4) == 2
    assert (await check(store)).cooling == 0


async def test_the_check_names_a_block_whose_addresses_were_released_in_the_future():
    # A node whose clock runs ahead stamps releasedAt later than now: the address cools that
    # much longer. calicoctl's check calls it clock skew; so does this one.
    store = MemoryDatastore()
    await add_pool(store, "p", "10.0.0.0/30", blockSize=30)
    ahead = Clock()
    ahead.now = datetime.now(timezone.utc) + timedelta(hours=1)
    ipam = IPAM(store, clock=ahead)
    await ipam.set_config(ip_cooldown_seconds=60)
    got = await ipam.auto_assign("n1", handle_id="a", num4=1)
    await ipam.release_ips([str(got.ipv4[0].ip)])
    report = await check(store)
    assert report.released_in_future == ["10.0.0.0/30"] and report.problems == 1
