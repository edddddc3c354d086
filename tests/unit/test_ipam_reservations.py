"""IPReservation (Calico's): automatic assignment passes over reserved addresses, never claims a
block they cover whole, and leaves alone what was allocated before; an address given explicitly
is not held back; `ipam show` counts reserved addresses apart from free ones."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import datetime, timezone

import pytest

from percale.api import parse
from percale.ctl.ipam_show import usage_rows
from percale.datastore import Key, MemoryDatastore
from percale.ipam.allocator import IPAM
from percale.ipam.errors import PoolsExhausted
from percale.ipam.reservations import Reservations
from percale.ipam.usage import usage
from tests.helpers.ipam_world import add_pool, assert_consistent

pytestmark = pytest.mark.unit


@pytest.fixture(params=[True, False], ids=["one-transaction", "two-step"])
def store(request):
    return MemoryDatastore(multi_key=request.param)


async def reserve(store, name: str, *cidrs: str) -> None:
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "IPReservation",
                              "metadata": {"name": name}, "spec": {"reservedCIDRs": list(cidrs)}}))


def ips(assignment) -> list[str]:
    return [str(i.ip) for i in assignment.ipv4]


async def test_reserved_addresses_are_passed_over_and_keep_their_place(store):
    await add_pool(store, "p", "10.0.0.0/29", blockSize=29)  # one block of eight
    await reserve(store, "gateways", "10.0.0.0", "10.0.0.4/31")
    ipam = IPAM(store)
    got = await ipam.auto_assign("n1", handle_id="a", num4=4)
    assert ips(got) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.6"]
    with pytest.raises(PoolsExhausted):  # 10.0.0.7 left, and three wanted
        await ipam.auto_assign("n1", handle_id="b", num4=3)
    await assert_consistent(store)
    # The reservation goes: its addresses come back first, in their old order.
    await store.delete(Key("IPReservation", "gateways"))
    assert ips(await ipam.auto_assign("n1", handle_id="c", num4=2)) == ["10.0.0.0", "10.0.0.4"]


async def test_a_block_reserved_whole_is_never_claimed(store):
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)  # four blocks of four
    await reserve(store, "half", "10.0.0.0/29")
    got = await IPAM(store).auto_assign("n1", handle_id="a", num4=8)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.0.0.8/29") for ip in ips(got))
    blocks = sorted(kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items)
    assert blocks == ["10.0.0.12/30", "10.0.0.8/30"]
    with pytest.raises(PoolsExhausted):
        await IPAM(store).auto_assign("n2", handle_id="b", num4=1)


async def test_what_was_allocated_stays_and_an_address_given_explicitly_is_not_held_back(store):
    await add_pool(store, "p", "10.0.0.0/29", blockSize=29)
    ipam = IPAM(store)
    before = ips(await ipam.auto_assign("n1", handle_id="a", num4=1))
    await reserve(store, "r", "10.0.0.0/30")
    assert ips(await ipam.auto_assign("n1", handle_id="b", num4=1)) == ["10.0.0.4"]
    assert (await ipam.get_allocation(before[0])).handle_id == "a"
    await ipam.assign_ip("n1", "10.0.0.2", handle_id="given")  # as Calico's AssignIP
    assert (await ipam.get_allocation("10.0.0.2")).handle_id == "given"
    await assert_consistent(store)


async def test_entries_are_read_as_calico_reads_them(store):
    # Host bits masked (10.0.0.5/31 is 10.0.0.4/31) and an IPv4-mapped address as the IPv4 one,
    # as Calico's ParseCIDROrIP: refused or misread, they reserved nothing.
    await add_pool(store, "p", "10.0.0.0/29", blockSize=29)
    await reserve(store, "r", "10.0.0.5/31", "::ffff:10.0.0.0")
    got = await IPAM(store).auto_assign("n1", handle_id="a", num4=5)
    assert ips(got) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.6", "10.0.0.7"]
    with pytest.raises(Exception, match="spec.reservedCIDRs.0: 'junk' is not a valid IP address"):
        parse({"apiVersion": "percale.io/v1", "kind": "IPReservation", "metadata": {"name": "r"},
               "spec": {"reservedCIDRs": ["junk"]}})


async def test_a_reservation_over_most_of_an_ipv6_pool_is_stepped_over_at_once(store):
    # 2^42 blocks reserved whole ahead of the node's first candidate: each run is one stride.
    await add_pool(store, "v6", "fd00:10:244::/48", blockSize=122)
    await reserve(store, "most", "fd00:10:244::/49")
    got = await asyncio.wait_for(IPAM(store).auto_assign("n1", handle_id="a", num6=1), 5)
    assert ipaddress.ip_address(got.ipv6[0].ip) in ipaddress.ip_network("fd00:10:244:8000::/49")


async def test_an_empty_block_reserved_whole_is_not_taken_from_its_node(store):
    clock = datetime(2026, 1, 1, tzinfo=timezone.utc)
    await add_pool(store, "p", "10.0.0.0/29", blockSize=30)
    old = IPAM(store, clock=lambda: clock)
    await old.auto_assign("a", handle_id="x", num4=1)
    await old.auto_assign("b", handle_id="y", num4=4)  # b's block full: nothing to borrow
    await old.release_by_handle("x")  # a's block is empty, and long claimed
    [a_block] = [kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items
                 if kv.value.spec.affinity == "host:a"]
    await reserve(store, "r", a_block)
    with pytest.raises(PoolsExhausted):
        await IPAM(store).auto_assign("c", handle_id="z", num4=1)
    owners = {kv.value.spec.cidr: kv.value.spec.affinity for kv in (await store.list("IPAMBlock")).items}
    assert owners[a_block] == "host:a"


def test_counting_is_arithmetic_for_pools_and_merges_overlaps():
    r = Reservations(["10.0.0.0/30", "10.0.0.2/31", "10.0.1.0/24", "fd00::/64"])
    assert r.count(ipaddress.ip_network("10.0.0.0/16")) == 4 + 256
    assert r.count(ipaddress.ip_network("fd00::/48")) == 2 ** 64
    assert r.ordinals(ipaddress.ip_network("10.0.0.0/29")) == {0, 1, 2, 3}
    # 10.0.1.0/24 holds /26 blocks 4-7 of 10.0.0.0/23, reserved whole; 10.0.0.0/26 only in part.
    assert r.covered_blocks(ipaddress.ip_network("10.0.0.0/23"), 26) == [(4, 7)]
    assert not Reservations().ordinals(ipaddress.ip_network("10.0.0.0/29"))


async def test_ipam_show_counts_reserved_addresses_apart_from_free_ones(store):
    await add_pool(store, "p", "10.0.0.0/28", blockSize=29)
    await IPAM(store).auto_assign("n1", handle_id="a", num4=2)  # 10.0.0.0-1 in 10.0.0.0/29
    reservations = Reservations(["10.0.0.1", "10.0.0.8/30"])
    pools = [kv.value for kv in (await store.list("IPPool")).items]
    blocks = [kv.value for kv in (await store.list("IPAMBlock")).items]
    found = usage(pools, blocks, reservations)
    # Pool: 16 addresses, 2 in use, 5 reserved (one of them in use), 10 free.
    assert usage_rows(found, show_blocks=True, reserved=True) == [
        ["IP Pool", "10.0.0.0/28", "16", "2 (12%)", "5 (31%)", "10 (62%)"],
        ["Block", "10.0.0.0/29", "8", "2 (25%)", "1 (12%)", "6 (75%)"],
    ]
