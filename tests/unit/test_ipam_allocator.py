"""The allocator against the memory datastore: order of allocation, borrowing, limits, errors
that leave nothing behind, release, and claims cut short."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest

from percale.datastore import (
    AlreadyExists, Conflict, DatastoreError, Key, MemoryDatastore, NotFound,
)
from percale.datastore.contract import KVPair, ListResult, Update
from percale.datastore.cache import Cache, CachedDatastore
from percale.ipam import blocks
from percale.ipam.allocator import IPAM, tunnel_handle
from percale.ipam.errors import (
    AddressInUse,
    BlockLimitReached,
    IPAMError,
    NoPools,
    NotInPool,
    PoolsExhausted,
    StrictAffinityExhausted,
)
from percale.api import BlockAffinity, ObjectMeta, parse
from percale.api.ipam import BlockAffinitySpec, IPAMBlock, affinity_name, block_cidr, block_name
from tests.helpers.ipam_world import add_pool, allocations, assert_consistent

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=[True, False], ids=["one-transaction", "two-step"])
def store(request):
    """With multi-key transactions, as on etcd (handle and block written together), and
    without, as on Kubernetes (the handle first, then the block)."""
    return MemoryDatastore(multi_key=request.param)


async def test_a_node_fills_its_own_block_before_claiming_another(store):
    await add_pool(store, "p", "10.0.0.0/24", blockSize=28)
    ipam = IPAM(store)
    first = await ipam.auto_assign("n1", handle_id="h1", num4=10, attrs={"pod": "a", "namespace": "ns"})
    second = await ipam.auto_assign("n1", handle_id="h2", num4=10)
    assert all(i.network.prefixlen == 28 for i in first.ipv4)
    nets = {i.network for i in first.ipv4 + second.ipv4}
    assert len(nets) == 2  # 20 addresses: one /28 filled, then a second one
    affinities = (await store.list("BlockAffinity", node="n1")).items
    assert sorted(kv.value.spec.cidr for kv in affinities) == sorted(str(n) for n in nets)
    assert all(kv.value.spec.state == "confirmed" for kv in affinities)
    allocation = await ipam.get_allocation(str(first.ipv4[0].ip))
    assert allocation.handle_id == "h1"
    assert allocation.attributes["node"] == "n1" and allocation.attributes["pod"] == "a"
    assert "timestamp" in allocation.attributes
    await assert_consistent(store)


async def test_nodes_get_different_blocks(store):
    await add_pool(store, "p", "10.0.0.0/24", blockSize=28)
    ipam = IPAM(store)
    a = await ipam.auto_assign("n1", handle_id="h1", num4=1)
    b = await ipam.auto_assign("n2", handle_id="h2", num4=1)
    assert a.ipv4[0].network != b.ipv4[0].network


async def test_borrowing_when_no_block_is_free(store):
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)  # four blocks of four
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="h1", num4=13)
    borrowed = await ipam.auto_assign("n2", handle_id="h2", num4=2)
    assert len(borrowed.ipv4) == 2
    for iface in borrowed.ipv4:
        allocation = await ipam.get_allocation(str(iface.ip))
        assert allocation.block_affinity == "host:n1" and allocation.attributes["node"] == "n2"
    assert (await store.list("BlockAffinity", node="n2")).items == []
    await assert_consistent(store)


async def test_exhaustion_is_a_clear_error_and_leaves_nothing(store):
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="h1", num4=10)
    before = await allocations(store)
    with pytest.raises(PoolsExhausted, match=r"No IPs available in pools: \[10.0.0.0/28\]"):
        await ipam.auto_assign("n2", handle_id="h2", num4=7)
    assert await allocations(store) == before
    with pytest.raises(NotFound):
        await store.get(Key("IPAMHandle", "h2"))
    await assert_consistent(store)


async def test_strict_affinity_forbids_borrowing(store):
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)
    ipam = IPAM(store)
    await ipam.set_config(strict_affinity=True)
    await ipam.auto_assign("n1", handle_id="h1", num4=13)
    with pytest.raises(StrictAffinityExhausted, match="No more free affine blocks and strict affinity enabled"):
        await ipam.auto_assign("n2", handle_id="h2", num4=1)
    await assert_consistent(store)


async def test_block_limit_per_node(store):
    await add_pool(store, "p", "10.0.0.0/24", blockSize=30)
    ipam = IPAM(store)
    await ipam.set_config(strict_affinity=True, max_blocks_per_host=2)
    await ipam.auto_assign("n1", handle_id="h1", num4=8)
    with pytest.raises(BlockLimitReached, match="limit of 2 blocks reached for this node"):
        await ipam.auto_assign("n1", handle_id="h2", num4=1)
    # A per-request cap below the configured one applies too.
    with pytest.raises(BlockLimitReached, match="limit of 1 blocks"):
        await ipam.auto_assign("n2", handle_id="h3", num4=5, max_blocks_per_host=1)
    assert "h3" not in set((await allocations(store)).values())


async def test_at_the_default_block_cap_a_node_does_not_borrow(store):
    """Calico's autoAssign answers ErrBlockLimit at the cap whether or not affinity is strict;
    borrowing there let one node take a whole pool past its 20-block safeguard."""
    await add_pool(store, "p", "10.0.0.0/24", blockSize=30)
    ipam = IPAM(store)
    await ipam.auto_assign("n2", handle_id="other", num4=1)  # a block with room to borrow from
    await ipam.auto_assign("n1", handle_id="h1", num4=4, max_blocks_per_host=1)
    with pytest.raises(BlockLimitReached, match="limit of 1 blocks reached for this node"):
        await ipam.auto_assign("n1", handle_id="h2", num4=1, max_blocks_per_host=1)
    assert "h2" not in set((await allocations(store)).values())
    await assert_consistent(store)


async def test_an_address_of_a_disabled_pool_is_not_assigned(store):
    await add_pool(store, "off", "10.1.0.0/24", disabled=True)
    ipam = IPAM(store)
    with pytest.raises(NotInPool, match="10.1.0.5 is in IPPool off, which is disabled"):
        await ipam.assign_ip("n1", "10.1.0.5", handle_id="h1")
    assert not (await store.list("IPAMBlock")).items
    assert not (await store.list("BlockAffinity")).items


class ReleasedMeanwhile:
    """The store, with another process releasing an affinity just as this one writes it: the
    affinity is there when this process creates its own (AlreadyExists) and gone when it
    looks (the GC gave the empty block back), or gone between its read and its write."""

    def __init__(self, inner, stage: str) -> None:
        self.inner, self.stage, self.done = inner, stage, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def create(self, value):
        if (self.stage == "create" and not self.done and value.kind == "BlockAffinity"
                and value.spec.state == "pending"):
            self.done = True
            await self.inner.create(value)              # the other process's claim ...
            await self.inner.delete(Key.of(value))      # ... given back at once
            raise AlreadyExists(Key.of(value))
        return await self.inner.create(value)

    async def update(self, value, *, revision):
        if (self.stage == "update" and not self.done and value.kind == "BlockAffinity"
                and value.spec.state == "confirmed"):
            self.done = True
            await self.inner.delete(Key.of(value))
        return await self.inner.update(value, revision=revision)


@pytest.mark.parametrize("stage", ["create", "update"])
async def test_an_affinity_released_during_a_claim_is_claimed_again_not_an_error(stage):
    inner = MemoryDatastore(multi_key=False)
    await add_pool(inner, "p", "10.0.0.0/28", blockSize=30)
    ipam = IPAM(ReleasedMeanwhile(inner, stage))  # type: ignore[arg-type]
    got = await ipam.auto_assign("n1", handle_id="h1", num4=1)
    assert len(got.ipv4) == 1
    await assert_consistent(inner)


class BlockGoneFirst:
    """The store, with another process deleting a block just before this one does."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def delete(self, key, *, revision=None):
        if key.kind == "IPAMBlock":
            await self.inner.delete(key)
        return await self.inner.delete(key, revision=revision)


async def test_a_pool_whose_empty_block_someone_else_released_first_is_deleted():
    """percalectl delete ippool while a CNI DEL freed the block's last address: the block was
    gone when delete_pool came to delete it, and the pool was left disabled, not deleted."""
    inner = MemoryDatastore(multi_key=False)
    await add_pool(inner, "p", "10.0.0.0/28", blockSize=30)
    await IPAM(inner).auto_assign("n1", handle_id="h1", num4=1)
    await IPAM(inner).release_by_handle("h1")
    await IPAM(BlockGoneFirst(inner)).delete_pool("p")  # type: ignore[arg-type]
    assert [kv.key.kind for kind in ("IPPool", "IPAMBlock", "BlockAffinity")
            for kv in (await inner.list(kind)).items] == []


async def test_the_block_limit_counts_each_family_apart(store):
    # A dual-stack node at its cap of IPv6 blocks may still claim IPv4 blocks up to the same
    # cap, as Calico counts the affine blocks of the family being assigned.
    await add_pool(store, "v4", "10.0.0.0/24", blockSize=30)
    await add_pool(store, "v6", "fd00::/120", blockSize=126)
    ipam = IPAM(store)
    await ipam.set_config(strict_affinity=True, max_blocks_per_host=2)
    await ipam.auto_assign("n1", handle_id="h1", num6=8)
    got = await ipam.auto_assign("n1", handle_id="h2", num4=8)
    assert len(got.ipv4) == 8
    with pytest.raises(BlockLimitReached, match="limit of 2 blocks"):
        await ipam.auto_assign("n1", handle_id="h3", num6=1)
    await assert_consistent(store)


async def test_dual_stack_is_all_or_nothing(store):
    await add_pool(store, "v4", "10.0.0.0/24")
    ipam = IPAM(store)
    with pytest.raises(NoPools, match="IPv6"):
        await ipam.auto_assign("n1", handle_id="h", num4=1, num6=1)
    assert await allocations(store) == {}
    await add_pool(store, "v6", "fd00::/120", blockSize=124)
    both = await ipam.auto_assign("n1", handle_id="h", num4=1, num6=1)
    assert len(both.ipv4) == 1 and len(both.ipv6) == 1
    assert both.ipv6[0].network.prefixlen == 124
    await assert_consistent(store)


async def test_pools_chosen_by_node_selector_and_by_request(store):
    await add_pool(store, "rack-a", "10.1.0.0/24", nodeSelector="rack == 'a'")
    await add_pool(store, "everyone", "10.2.0.0/24")
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "Node",
                              "metadata": {"name": "n1", "labels": {"rack": "b"}}, "spec": {}}))
    ipam = IPAM(store)
    got = await ipam.auto_assign("n1", handle_id="h1", num4=1)
    assert got.ipv4[0].ip in ipaddress.ip_network("10.2.0.0/24")
    with pytest.raises(NoPools, match="rack-a"):
        await ipam.auto_assign("n1", handle_id="h2", num4=1, ipv4_pools=["rack-a"])
    chosen = await ipam.auto_assign("n1", handle_id="h3", num4=1, ipv4_pools=["10.2.0.0/24"])
    assert chosen.ipv4[0].ip in ipaddress.ip_network("10.2.0.0/24")


async def test_disabled_pool_gives_no_new_addresses_but_releases(store):
    await add_pool(store, "p", "10.0.0.0/24")
    ipam = IPAM(store)
    got = await ipam.auto_assign("n1", handle_id="h1", num4=2)
    pool = await store.get(Key("IPPool", "p"))
    disabled = pool.value.model_copy(deep=True)
    disabled.spec.disabled = True
    await store.update(disabled, revision=pool.revision)
    with pytest.raises(NoPools):
        await ipam.auto_assign("n1", handle_id="h2", num4=1)
    released = await ipam.release_by_handle("h1")
    assert sorted(released) == sorted(str(i.ip) for i in got.ipv4)
    # The emptied block of a disabled pool goes back, with its affinity.
    assert (await store.list("IPAMBlock")).items == []
    assert (await store.list("BlockAffinity")).items == []
    await assert_consistent(store)


async def test_a_pool_that_cannot_be_read_stops_no_allocation_or_release(store, caplog):
    """A pool written past what its CRD checks (by kubectl, or by hand) failed every pod's
    ADD and every release on that datastore; it is left out, and logged, naming it."""
    await add_pool(store, "p", "10.0.0.0/24")
    ipam = IPAM(store)
    got = await ipam.auto_assign("n1", handle_id="h1", num4=1)
    store.put_raw(Key("IPPool", "broken"), json.dumps({
        "apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": "broken"},
        "spec": {"cidr": "garbage"}}).encode())
    more = await ipam.auto_assign("n1", handle_id="h2", num4=1)
    assert ipaddress.ip_address(more.ipv4[0].ip) in ipaddress.ip_network("10.0.0.0/24")
    assert await ipam.release_by_handle("h1") == [str(got.ipv4[0].ip)]
    assert "IPAM leaves out a pool it cannot read" in caplog.text and "broken" in caplog.text
    await assert_consistent(store)


async def test_deleted_pool_addresses_can_still_be_released(store):
    await add_pool(store, "p", "10.0.0.0/24")
    ipam = IPAM(store)
    got = await ipam.auto_assign("n1", handle_id="h1", num4=2)
    await store.delete(Key("IPPool", "p"))
    result = await ipam.release_ips([str(got.ipv4[0].ip)])
    assert result.released == [str(got.ipv4[0].ip)]
    assert await ipam.release_by_handle("h1") == [str(got.ipv4[1].ip)]
    assert (await store.list("IPAMBlock")).items == []
    await assert_consistent(store)


async def test_assign_a_given_address(store):
    await add_pool(store, "p", "10.0.0.0/24")
    ipam = IPAM(store)
    await ipam.assign_ip("n1", "10.0.0.77", handle_id="fixed", attrs={"pod": "db"})
    allocation = await ipam.get_allocation("10.0.0.77")
    assert allocation.handle_id == "fixed" and allocation.block_affinity == "host:n1"
    with pytest.raises(AddressInUse):
        await ipam.assign_ip("n2", "10.0.0.77", handle_id="other")
    with pytest.raises(NotInPool):
        await ipam.assign_ip("n1", "192.168.9.9", handle_id="x")
    # The block now belongs to n1, so n1's next allocations come from it.
    nxt = await ipam.auto_assign("n1", handle_id="h", num4=1)
    assert nxt.ipv4[0].network == ipaddress.ip_network("10.0.0.64/26")
    await assert_consistent(store)


async def test_release_is_idempotent_and_guarded_by_sequence_numbers(store):
    await add_pool(store, "p", "10.0.0.0/24")
    ipam = IPAM(store)
    got = await ipam.auto_assign("n1", handle_id="h1", num4=1)
    ip = str(got.ipv4[0].ip)
    seen = await ipam.get_allocation(ip)
    first = await ipam.release_ips([ip])
    again = await ipam.release_ips([ip])
    assert first.released == [ip] and again.unallocated == [ip]
    # The address goes to someone else; a release holding the old sequence number must not free it.
    await ipam.assign_ip("n1", ip, handle_id="h2")
    stale = await ipam.release_ips([ip], sequence_numbers={ip: seen.sequence_number})
    assert stale.stale == [ip] and (await ipam.get_allocation(ip)).handle_id == "h2"
    assert await ipam.release_by_handle("h2") == [ip]
    assert await ipam.release_by_handle("h2") == []
    assert await ipam.release_ips(["172.16.0.1"]) == type(first)(unallocated=["172.16.0.1"])
    await assert_consistent(store)


async def test_empty_blocks_of_other_nodes_are_reclaimed_only_after_a_minute(store):
    await add_pool(store, "p", "10.0.0.0/29", blockSize=30)  # two blocks of four
    clock = Clock()
    ipam = IPAM(store, clock=clock)
    await ipam.set_config(strict_affinity=True)
    await ipam.auto_assign("n1", handle_id="a", num4=8)
    await ipam.release_by_handle("a")  # n1 keeps both blocks, empty
    with pytest.raises(StrictAffinityExhausted):
        await ipam.auto_assign("n2", handle_id="b", num4=1)
    clock.now += timedelta(minutes=2)
    got = await ipam.auto_assign("n2", handle_id="b", num4=1)
    block = ipaddress.ip_network(got.ipv4[0].network)
    owner = (await store.get(Key("IPAMBlock", str(block).replace("/", "-")))).value.spec.affinity
    assert owner == "host:n2"
    assert len((await store.list("BlockAffinity", node="n1")).items) == 1
    await assert_consistent(store)


async def test_a_claim_cut_short_is_finished_by_the_same_node(store):
    await add_pool(store, "p", "10.0.0.0/24")
    ipam = IPAM(store)
    probe = await ipam.auto_assign("n1", handle_id="probe", num4=1)
    cidr = str(probe.ipv4[0].network)
    await ipam.release_host_affinities("n1")
    await ipam.release_by_handle("probe")
    # The crash: pending affinity written, block created, affinity never confirmed.
    await store.create(BlockAffinity(metadata=ObjectMeta(name=affinity_name("n1", cidr)),
                                     spec=BlockAffinitySpec(state="pending", node="n1", cidr=cidr)))
    await store.create(IPAMBlock.empty(cidr, affinity="host:n1"))
    got = await ipam.auto_assign("n1", handle_id="h", num4=1)
    assert str(got.ipv4[0].network) == cidr
    affinity = await store.get(Key("BlockAffinity", affinity_name("n1", cidr)))
    assert affinity.value.spec.state == "confirmed"
    await assert_consistent(store)


async def test_releasing_a_nodes_affinities(store):
    await add_pool(store, "p", "10.0.0.0/24", blockSize=28)
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="keep", num4=1)
    await ipam.auto_assign("n1", handle_id="fill", num4=16)
    await ipam.release_by_handle("fill")
    await ipam.release_host_affinities("n1")
    assert (await store.list("BlockAffinity", node="n1")).items == []
    remaining = [kv.value.spec for kv in (await store.list("IPAMBlock")).items]
    assert len(remaining) == 1 and remaining[0].affinity is None  # holds "keep", now unaffine
    await ipam.release_by_handle("keep")
    assert (await store.list("IPAMBlock")).items == []


async def test_concurrent_nodes_in_one_process(store):
    await add_pool(store, "p", "10.0.0.0/26", blockSize=29)
    ipam = IPAM(store)

    async def node(n: int) -> list[str]:
        got = []
        for i in range(6):
            a = await ipam.auto_assign(f"n{n}", handle_id=f"h{n}-{i}", num4=1)
            got.append(str(a.ipv4[0].ip))
        return got

    results = await asyncio.gather(*(node(n) for n in range(8)))
    every = [ip for r in results for ip in r]
    assert len(every) == len(set(every)) == 48
    held = await assert_consistent(store)
    assert sorted(held) == sorted(every)


def test_tunnel_handles_follow_calicos_names():
    assert tunnel_handle("node1") == "vxlan-tunnel-addr-node1"
    assert tunnel_handle("node1", 6) == "vxlan-v6-tunnel-addr-node1"


async def test_the_first_free_address_of_a_tunnel_block(store):
    """Like Calico, a node's tunnel address is normally ordinal 0 of its first block."""
    await add_pool(store, "p", "10.1.0.0/16", vxlanMode="Always")
    ipam = IPAM(store)
    got = await ipam.auto_assign("n1", handle_id=tunnel_handle("n1"), num4=1, use="Tunnel",
                                 attrs={"type": "vxlanTunnelAddress"})
    assert got.ipv4[0].ip == got.ipv4[0].network.network_address
    spec = (await store.list("IPAMBlock")).items[0].value.spec
    assert blocks.handle_of(spec, 0) == "vxlan-tunnel-addr-n1"


async def test_deleting_a_pool_releases_its_blocks_in_calicos_order(store):
    kept_block, _ = await _pool_with_a_running_and_an_emptied_block(store)
    ipam = IPAM(store)

    await ipam.delete_pool("old")
    pools = [kv.key.name for kv in (await store.list("IPPool")).items]
    assert pools == ["other"]
    remaining = {kv.value.spec.cidr: kv.value.spec.affinity for kv in (await store.list("IPAMBlock")).items}
    # The running pod keeps its address in an unaffine block; the emptied block is gone; the
    # other pool is untouched.
    assert remaining[kept_block] is None
    assert [c for c in remaining if c.startswith("10.0.")] == [kept_block]
    assert [kv.value.spec.cidr for kv in (await store.list("BlockAffinity")).items] == [
        c for c, a in remaining.items() if a == "host:n2"]
    await ipam.release_by_handle("running-pod")
    assert all(c.startswith("10.9.") for c in
               (kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items))
    await assert_consistent(store)


def _unreadable_pool(name: str, cidr: object) -> bytes:
    """A pool as kubectl on the Kubernetes datastore or a hand edit can leave it: its CRD has no
    cross-field rules, and the model refuses blockSize 99."""
    return json.dumps({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
                       "spec": {"cidr": cidr, "blockSize": 99}}).encode()


async def _pool_with_a_running_and_an_emptied_block(store) -> tuple[str, str]:
    """Pool `old` with n1 holding a block that a running pod uses and emptied blocks; pool
    `other` with n2's block. The running pod's block and n2's."""
    await add_pool(store, "old", "10.0.0.0/24", blockSize=28)
    await add_pool(store, "other", "10.9.0.0/24", blockSize=28)
    ipam = IPAM(store)
    kept = await ipam.auto_assign("n1", handle_id="running-pod", num4=1, ipv4_pools=["old"])
    await ipam.auto_assign("n1", handle_id="gone-pod", num4=20, ipv4_pools=["old"])
    await ipam.release_by_handle("gone-pod")
    elsewhere = await ipam.auto_assign("n2", handle_id="elsewhere", num4=1, ipv4_pools=["other"])
    return str(kept.ipv4[0].network), str(elsewhere.ipv4[0].network)


async def test_a_pool_that_cannot_be_read_is_deleted_releasing_what_its_cidr_covers(store):
    """Calico reads and deletes such a pool; percalectl could not delete it, and it blocked
    every pool written meanwhile."""
    kept, elsewhere = await _pool_with_a_running_and_an_emptied_block(store)
    store.put_raw(Key("IPPool", "old"), _unreadable_pool("old", "10.0.0.0/24"))

    await IPAM(store).delete_pool("old")
    assert [kv.key.name for kv in (await store.list("IPPool")).items] == ["other"]
    remaining = {kv.value.spec.cidr: kv.value.spec.affinity
                 for kv in (await store.list("IPAMBlock")).items}
    assert remaining == {kept: None, elsewhere: "host:n2"}
    assert [kv.value.spec.cidr for kv in (await store.list("BlockAffinity")).items] == [elsewhere]


async def test_a_pool_that_cannot_be_read_nor_its_cidr_goes_alone(store):
    await _pool_with_a_running_and_an_emptied_block(store)
    affinities = [kv.key for kv in (await store.list("BlockAffinity")).items]
    store.put_raw(Key("IPPool", "old"), _unreadable_pool("old", ["10.0.0.0/24"]))

    await IPAM(store).delete_pool("old")
    assert [kv.key.name for kv in (await store.list("IPPool")).items] == ["other"]
    assert [kv.key for kv in (await store.list("BlockAffinity")).items] == affinities


async def test_a_pool_that_cannot_be_read_goes_only_at_the_revision_given(store):
    await add_pool(store, "old", "10.0.0.0/24")
    revision = store.put_raw(Key("IPPool", "old"), _unreadable_pool("old", "10.0.0.0/24"))
    with pytest.raises(Conflict):
        await IPAM(store).delete_pool("old", revision=str(int(revision) - 1))
    assert [kv.key.name for kv in (await store.list("IPPool")).items] == ["old"]
    await IPAM(store).delete_pool("old", revision=revision)
    assert (await store.list("IPPool")).items == []


class DecodesAsItReads:
    """The store as Kubernetes reads it: a get of a value it cannot read fails, and a list
    hands that value out unread (KVPair.unreadable) only when asked to defer errors."""

    def __init__(self, inner: MemoryDatastore) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get(self, key):
        pair = await self.inner.get(key)
        pair.value  # noqa: B018 - raises DatastoreError for a value that cannot be read
        return pair

    async def list(self, kind, namespace=None, *, node=None, defer_errors=False):
        listed = await self.inner.list(kind, namespace, node=node)
        items = []
        for pair in listed.items:
            try:
                pair.value  # noqa: B018
            except DatastoreError as err:
                if not defer_errors:
                    raise
                pair = KVPair.unreadable(pair.key, pair.revision, str(err))
            items.append(pair)
        return ListResult(items, listed.revision)


async def test_a_pool_that_cannot_be_read_is_found_where_get_refuses_it():
    inner = MemoryDatastore(multi_key=False)
    await _pool_with_a_running_and_an_emptied_block(inner)
    affinities = [kv.key for kv in (await inner.list("BlockAffinity")).items]
    inner.put_raw(Key("IPPool", "old"), _unreadable_pool("old", "10.0.0.0/24"))

    await IPAM(DecodesAsItReads(inner)).delete_pool("old")  # type: ignore[arg-type]
    assert [kv.key.name for kv in (await inner.list("IPPool")).items] == ["other"]
    # Such a store hands out no stored bytes to read the CIDR from: nothing else is touched.
    assert [kv.key for kv in (await inner.list("BlockAffinity")).items] == affinities
    with pytest.raises(NotFound):
        await IPAM(DecodesAsItReads(inner)).delete_pool("old")  # type: ignore[arg-type]


async def test_a_forbidden_config_names_the_field_and_changes_nothing(store):
    from percale.api import InvalidResource

    ipam = IPAM(store)
    with pytest.raises(InvalidResource) as caught:
        await ipam.set_config(max_blocks_per_host=3)
    assert [(p.field, "strictAffinity" in p.reason) for p in caught.value.problems] == [
        ("spec.maxBlocksPerHost", True)]
    assert (await store.list("IPAMConfig")).items == []


async def test_addresses_in_blocks_of_an_older_block_size_are_found_and_released(store):
    """A pool deleted and created again with another blockSize leaves blocks cut the old way."""
    await add_pool(store, "p", "10.0.0.0/24", blockSize=26)
    ipam = IPAM(store)
    got = await ipam.auto_assign("n1", handle_id="old", num4=1)
    ip = str(got.ipv4[0].ip)
    await store.delete(Key("IPPool", "p"))
    await add_pool(store, "p", "10.0.0.0/24", blockSize=28)
    assert (await ipam.get_allocation(ip)).handle_id == "old"
    assert (await ipam.release_ips([ip])).released == [ip]
    assert await ipam.get_allocation(ip) is None
    await assert_consistent(store)


@pytest.mark.parametrize("old_size, new_size", [(26, 28), (28, 26)])
async def test_a_pool_created_again_with_another_block_size_cuts_no_block_over_an_old_one(
        store, old_size, new_size):
    # A block cut at the new size over a surviving old block would hand out the old block's
    # addresses a second time; the walk steps round it, whether the old block is larger or
    # smaller than the new ones. In a pool of one /26, every new block would overlap the old.
    await add_pool(store, "p", "10.0.0.0/26", blockSize=old_size)
    ipam = IPAM(store)
    old = await ipam.auto_assign("n1", handle_id="old", num4=2)
    await store.delete(Key("IPPool", "p"))
    await add_pool(store, "p", "10.0.0.0/26", blockSize=new_size)
    new = await ipam.auto_assign("n2", handle_id="new", num4=3)
    held = await assert_consistent(store)  # no two blocks overlap, no address is held twice
    assert sorted(held.values()) == ["new"] * 3 + ["old"] * 2
    # n2 borrowed from the old block: no block of its own could be cut.
    [block] = [kv.value.spec for kv in (await store.list("IPAMBlock")).items]
    assert block.affinity == "host:n1"
    assert not {i.ip for i in old.ipv4} & {i.ip for i in new.ipv4}


async def test_a_given_address_in_a_block_of_an_older_size_is_taken_from_that_block(store):
    await add_pool(store, "p", "10.0.0.0/24", blockSize=26)
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="old", num4=1)
    [old_block] = [kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items]
    await store.delete(Key("IPPool", "p"))
    await add_pool(store, "p", "10.0.0.0/24", blockSize=28)
    wanted = str(ipaddress.ip_network(old_block)[40])  # in the old /26, outside its first /28
    await ipam.assign_ip("n1", wanted, handle_id="given")
    held = await assert_consistent(store)
    assert held[wanted] == "given"
    assert [kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items] == [old_block]


@pytest.mark.parametrize("through_view", [False, True], ids=["store", "agent-view"])
async def test_a_block_that_cannot_be_read_stops_no_one_else(store, caplog, through_view):
    # A block written by hand that the model refuses: nodes still claim, borrow and release
    # around it, never write it or cut a block over it, and say why it is left alone.
    await add_pool(store, "p", "10.0.0.0/28", blockSize=30)  # four blocks of four
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="a", num4=1)
    [first] = [kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items]
    bad = Key("IPAMBlock", block_name("10.0.0.8/30") if first != "10.0.0.8/30"
              else block_name("10.0.0.12/30"))
    store.put_raw(bad, json.dumps({"apiVersion": "percale.io/v1", "kind": "IPAMBlock",
                                   "metadata": {"name": bad.name},
                                   "spec": {"cidr": "not a cidr"}}).encode())
    following = None
    if through_view:  # the agent's view leaves the bad block out of its lists
        view, following = await agent_view(store, "n2")
        ipam = IPAM(view, authority=store)
    # Two new blocks and one address borrowed from n1: the walk and the borrowing meet the bad
    # block on the way.
    try:
        got = await ipam.auto_assign("n2", handle_id="b", num4=9)
    finally:
        if following is not None:
            following.cancel()
    assert len(got.ipv4) == 9
    taken = {i.ip for i in got.ipv4}
    assert not taken & set(ipaddress.ip_network(block_cidr(bad.name)))
    assert (await ipam.release_ips([str(i.ip) for i in got.ipv4])).released
    assert any("cannot be read" in r.getMessage() for r in caplog.records
               if r.name in ("percale.ipam.allocator", "percale.datastore.cache"))


async def test_a_pool_that_no_longer_selects_a_node_gets_its_empty_blocks_back(store):
    # Calico's autoAssign gives back, on the node's next allocation, the empty blocks of pools
    # that no longer select it; blocks still holding addresses wait until they are empty.
    from percale.api import Node

    await store.create(Node.model_validate({"apiVersion": "percale.io/v1", "kind": "Node",
                                            "metadata": {"name": "n1", "labels": {"rack": "a"}}}))
    await add_pool(store, "old", "10.0.0.0/24", blockSize=30)
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="keep", num4=1)
    await ipam.auto_assign("n1", handle_id="gone", num4=4)  # fills the rest, and a second block
    await ipam.release_by_handle("gone")
    kept_block = (await ipam.get_allocation(
        str((await ipam.ips_by_handle("keep"))[0]))).block
    assert len(await ipam._owned("n1")) == 2

    current = await store.get(Key("IPPool", "old"))
    narrowed = current.value.model_copy(update={"spec": current.value.spec.model_copy(
        update={"node_selector": "rack == 'b'"})})
    await store.update(narrowed, revision=current.revision)
    await add_pool(store, "new", "10.1.0.0/24", blockSize=30)
    await ipam.auto_assign("n1", handle_id="next", num4=1)

    owned = await ipam._owned("n1")
    assert kept_block in owned  # still holds an address
    assert [c for c in owned if c.startswith("10.0.")] == [kept_block]
    await assert_consistent(store)


async def test_a_given_address_never_gets_a_block_cut_over_an_older_smaller_one(store):
    await add_pool(store, "p", "10.0.0.0/24", blockSize=28)
    ipam = IPAM(store)
    await ipam.auto_assign("n1", handle_id="old", num4=1)  # 10.0.0.0, in 10.0.0.0/28
    await store.delete(Key("IPPool", "p"))
    await add_pool(store, "p", "10.0.0.0/24", blockSize=26)
    # 10.0.0.40 is in no old block, but its new /26 would cover the old /28.
    with pytest.raises(IPAMError, match="would overlap a block of another size"):
        await ipam.assign_ip("n2", "10.0.0.40", handle_id="given")
    await assert_consistent(store)
    await ipam.assign_ip("n2", "10.0.0.70", handle_id="given")  # a /26 clear of it is fine
    await assert_consistent(store)


async def test_a_block_whose_name_spells_no_cidr_stops_no_claim(store):
    await add_pool(store, "p", "10.0.0.0/24", blockSize=28)
    store.put_raw(Key("IPAMBlock", "junk"), json.dumps(
        {"apiVersion": "percale.io/v1", "kind": "IPAMBlock", "metadata": {"name": "junk"},
         "spec": {"cidr": "10.0.0.0/28"}}).encode())
    got = await IPAM(store).auto_assign("n1", handle_id="a", num4=1)
    assert len(got.ipv4) == 1


async def test_a_release_through_the_view_keeps_the_handle_of_a_block_it_cannot_read(store, caplog):
    # The agent's view leaves such a block out; releasing by handle used to take that as "the
    # handle overstated" and delete the handle, leaving the address held by no handle. Now the
    # pod's other addresses are freed, and the handle keeps counting the unreadable block's.
    await add_pool(store, "v4", "10.0.0.0/28", blockSize=30)
    await add_pool(store, "v6", "fd00::/120", blockSize=126)
    got = await IPAM(store).auto_assign("n1", handle_id="pod-a", num4=1, num6=1)
    [kv] = [kv for kv in (await store.list("IPAMBlock")).items if kv.value.spec.network.version == 4]
    view, following = await agent_view(store)
    try:
        document = kv.value.to_document()
        document["spec"]["allocations"] = "garbage"
        store.put_raw(kv.key, json.dumps(document).encode())
        # A listener that reads blocks (VXLAN, BGP) makes the view drop it: as one would.
        for _ in range(300):
            if view.cache.get_value("IPAMBlock", kv.key.name) is None:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(NotFound):
            await view.get(kv.key)
        released = await IPAM(view, authority=store).release_by_handle("pod-a")
    finally:
        following.cancel()
    assert released == [str(got.ipv6[0].ip)]
    assert (await store.get(Key("IPAMHandle", "pod-a"))).value.spec.block == {kv.value.spec.cidr: 1}
    assert any("cannot be read" in r.getMessage() and "stays held" in r.getMessage()
               for r in caplog.records)


class _DeleteBlockBeforeWrite:
    """A store that releases a block (as garbage collection or another node's reclaim would)
    between the allocator's read of it and its compare-and-swap write."""

    def __init__(self, store, victim: str):
        self._store, self.victim, self.armed = store, victim, True

    async def _strike(self, value) -> None:
        if self.armed and value.kind == "IPAMBlock" and value.spec.cidr == self.victim:
            self.armed = False
            await IPAM(self._store)._release_block_affinity("n1", self.victim, require_empty=True)

    async def update(self, value, *, revision):
        await self._strike(value)
        return await self._store.update(value, revision=revision)

    @property
    def write_together(self):
        inner = self._store.write_together
        if inner is None:
            return None

        async def write_together(writes):
            for write in writes:
                if isinstance(write, Update):
                    await self._strike(write.value)
            return await inner(writes)

        return write_together

    def __getattr__(self, name):
        return getattr(self._store, name)


async def test_a_block_deleted_under_an_allocation_is_not_recreated_without_its_affinity(store):
    await add_pool(store, "p", "10.0.0.0/24", blockSize=30)
    ipam = IPAM(store)
    for i in range(5):
        await ipam.auto_assign("n1", handle_id=f"h{i}", num4=1)
    await ipam.release_by_handle("h4")  # n1's second block is now empty
    second = sorted(kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items
                    if blocks.is_empty(kv.value.spec))[0]
    racing = _DeleteBlockBeforeWrite(store, second)
    got = await IPAM(racing).auto_assign("n1", handle_id="new", num4=1)
    assert not racing.armed, "the block was never released under the allocation"
    assert len(got.ipv4) == 1
    held = await assert_consistent(store)
    assert held[str(got.ipv4[0].ip)] == "new"
    # Every block with an affinity on it has that affinity confirmed.
    claimed = {kv.value.spec.cidr for kv in (await store.list("BlockAffinity")).items}
    assert {kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items
            if kv.value.spec.affinity} <= claimed


class _Counting:
    """Counts the datastore calls the allocator makes."""

    def __init__(self, store):
        self._store, self.calls = store, []

    def __getattr__(self, name):
        method = getattr(self._store, name)
        if method is None:  # a capability the store does not offer (write_together)
            return None

        async def counted(*args, **kwargs):
            self.calls.append(name)
            return await method(*args, **kwargs)

        return counted


async def agent_view(store, node: str = "n1") -> tuple[CachedDatastore, asyncio.Task]:
    """The agent's view of `store` for `node`, in sync, and the task that keeps it so (cancel it
    to freeze the view)."""
    cache = Cache(store, node=node)
    following = asyncio.create_task(cache.run())
    await cache.wait_synced()
    return CachedDatastore(store, cache), following


@pytest.mark.parametrize("multi_key, allocation, release", [
    # etcd: the handle and the block in one transaction; releasing reads the handle, then
    # writes the block and deletes the handle together.
    (True, ["write_together"], ["get", "write_together"]),
    # Kubernetes: handle create, block compare-and-swap; block, then the handle read and
    # deleted, then the final delete of a handle that might overstate.
    (False, ["create", "update"], ["get", "update", "get", "delete", "delete"]),
])
async def test_a_warm_agent_allocates_with_the_fewest_writes_and_no_reads(multi_key, allocation,
                                                                          release):
    """Over the agent's view (CachedDatastore) an allocation from the node's own block reads
    nothing: pools, IPAM config, the node, its affinities and the block come from memory."""
    async with counted_agent(multi_key) as (store, ipam, counting):
        await ipam.auto_assign("n1", handle_id="warm-up", num4=1)
        counting.calls.clear()
        for i in range(5):
            await ipam.auto_assign("n1", handle_id=f"pod-{i}", num4=1)
        assert counting.calls == allocation * 5
        counting.calls.clear()
        await ipam.release_by_handle("pod-0")
        assert counting.calls == release
        await assert_consistent(store)


@asynccontextmanager
async def counted_agent(multi_key: bool):
    """A store with one pool, and an agent's IPAM over its view whose every request to the
    store is counted: (store, ipam, counting)."""
    store = MemoryDatastore(multi_key=multi_key)
    await add_pool(store, "p", "10.0.0.0/16")
    counting = _Counting(store)
    view, following = await agent_view(store)
    try:
        yield store, IPAM(CachedDatastore(counting, view.cache), authority=counting), counting
    finally:
        following.cancel()


async def test_a_release_the_view_cannot_see_yet_is_made_sure_of_in_the_store(store):
    """An address handed out by another process a moment ago is not in the agent's view yet:
    releasing its handle must still free it (the view said there was nothing to free)."""
    await add_pool(store, "p", "10.0.0.0/16")
    view, following = await agent_view(store)
    try:
        agent = IPAM(view, authority=store)
        await agent.auto_assign("n1", handle_id="warm-up", num4=1)
        following.cancel()  # the view stops here
        elsewhere = IPAM(store)
        got = await elsewhere.auto_assign("n1", handle_id="late", num4=1)
        assert await agent.release_by_handle("late") == [str(got.ipv4[0].ip)]
        assert sorted((await allocations(store)).values()) == ["warm-up"]
    finally:
        following.cancel()


async def test_a_view_behind_a_released_block_does_not_bring_the_block_back(store):
    """percale-controllers gives an empty block back while the agent's view still shows it as
    the node's: the allocation must not recreate the block (without its affinity, no node would
    announce it), but go to a block the node really holds."""
    await add_pool(store, "p", "10.0.0.0/16")
    view, following = await agent_view(store)
    try:
        agent = IPAM(view, authority=store)
        first = (await agent.auto_assign("n1", handle_id="a", num4=1)).ipv4[0].network
        await agent.release_by_handle("a")
        await asyncio.sleep(0.05)  # the view has seen all of it
        following.cancel()  # ... and sees nothing from here on
        controllers = IPAM(store)
        assert await controllers._release_block_affinity("n1", str(first), require_empty=True)
        got = await agent.auto_assign("n1", handle_id="b", num4=1)
        blocks_now = {kv.value.spec.cidr: kv.value.spec for kv in (await store.list("IPAMBlock")).items}
        affinities = {kv.value.spec.cidr for kv in (await store.list("BlockAffinity")).items}
        assert str(got.ipv4[0].network) in affinities
        assert set(blocks_now) <= affinities, "a block without its affinity"
        await assert_consistent(store)
    finally:
        following.cancel()


async def test_a_view_behind_a_new_pool_does_not_refuse_the_pod():
    """A pod's ADD right after its pool was created: the agent's view has not seen the pool yet,
    the store has. The allocator asks the store before answering that there is no pool."""
    memory = MemoryDatastore()
    cache = Cache(memory, ["IPPool", "IPAMBlock", "BlockAffinity", "IPAMConfig", "Node"])
    following = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        following.cancel()  # the view stops here: it will not see the pool
        await asyncio.gather(following, return_exceptions=True)
        await add_pool(memory, "p", "10.0.0.0/24", blockSize=28)
        view = CachedDatastore(memory, cache)
        assert (await view.list("IPPool")).items == []
        got = await IPAM(view, authority=memory).auto_assign("node1", handle_id="h1", num4=1)
        [address] = got.ipv4
        assert address.ip in ipaddress.ip_network("10.0.0.0/24")
    finally:
        following.cancel()


@pytest.mark.parametrize("multi_key, first_allocation", [
    # etcd: the confirmed affinity and the block in one transaction, then the allocation.
    (True, ["write_together", "write_together"]),
    # Kubernetes: affinity pending, block, affinity confirmed, then handle and block.
    (False, ["create", "create", "update", "create", "update"]),
])
async def test_a_new_block_is_claimed_in_one_transaction_where_the_store_allows(
        multi_key, first_allocation):
    """A node's first pod waits for its block to be claimed: one round trip on etcd, not three,
    and never an affinity without its block (nor a pending one left behind)."""
    async with counted_agent(multi_key) as (store, ipam, counting):
        got = await ipam.auto_assign("n1", handle_id="first", num4=1)
        assert counting.calls == first_allocation
        affinity = await store.get(Key("BlockAffinity", affinity_name("n1", str(got.ipv4[0].network))))
        assert affinity.value.spec.state == "confirmed"
        await assert_consistent(store)


# -- assignmentMode and namespaceSelector (Calico's determinePools) -------------------------------


async def test_an_automatic_allocation_never_comes_from_a_manual_pool(store):
    """assignmentMode Manual: "used only when explicitly requested". A request that names no
    pool takes nothing from it, not from a block the node already holds there, not by
    borrowing, and not when the Automatic pools run out."""
    await add_pool(store, "manual", "10.9.0.0/24", blockSize=30, assignmentMode="Manual")
    ipam = IPAM(store)
    with pytest.raises(NoPools, match="manual .assignmentMode Manual: used only when a request names it"):
        await ipam.auto_assign("n1", handle_id="h0", num4=1)
    assert await allocations(store) == {}

    # n1 holds a Manual block with room (it named the pool once), and n1 takes every block of
    # the Automatic pool, so n2 must borrow: neither may touch the Manual pool.
    named = await ipam.auto_assign("n1", handle_id="named", num4=1, ipv4_pools=["manual"])
    assert named.ipv4[0].ip in ipaddress.ip_network("10.9.0.0/24")
    await add_pool(store, "auto", "10.0.0.0/28", blockSize=30)
    n1 = await ipam.auto_assign("n1", handle_id="n1-pods", num4=14)
    assert {str(i.network) for i in n1.ipv4} == {
        "10.0.0.0/30", "10.0.0.4/30", "10.0.0.8/30", "10.0.0.12/30"}
    n2 = await ipam.auto_assign("n2", handle_id="n2-pod", num4=2)
    assert all(i.ip in ipaddress.ip_network("10.0.0.0/28") for i in n2.ipv4)  # borrowed from n1
    with pytest.raises(PoolsExhausted, match=r"\[10.0.0.0/28\]"):
        await ipam.auto_assign("n2", handle_id="too-many", num4=1)
    held = await allocations(store)
    assert [ip for ip, handle in held.items() if ip.startswith("10.9.")] == [str(named.ipv4[0].ip)]
    await assert_consistent(store)


async def test_a_request_naming_a_manual_pool_gets_it(store):
    """The CNI config's ipam.ipv4_pools (or any caller) naming a Manual pool, by name or CIDR,
    is served from it, and only from it."""
    await add_pool(store, "auto", "10.0.0.0/24")
    await add_pool(store, "manual", "10.9.0.0/24", assignmentMode="Manual")
    ipam = IPAM(store)
    by_name = await ipam.auto_assign("n1", handle_id="a", num4=1, ipv4_pools=["manual"])
    by_cidr = await ipam.auto_assign("n1", handle_id="b", num4=1, ipv4_pools=["10.9.0.0/24"])
    plain = await ipam.auto_assign("n1", handle_id="c", num4=1)
    assert by_name.ipv4[0].ip in ipaddress.ip_network("10.9.0.0/24")
    assert by_cidr.ipv4[0].ip in ipaddress.ip_network("10.9.0.0/24")
    assert plain.ipv4[0].ip in ipaddress.ip_network("10.0.0.0/24")
    await assert_consistent(store)


async def _namespace(store, name: str, **labels: str) -> None:
    """The namespace's profile kns.<name>, as the Kubernetes datastore makes it of a Namespace."""
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "Profile",
                              "metadata": {"name": f"kns.{name}"},
                              "spec": {"labelsToApply": labels}}))


async def test_a_namespace_selector_must_select_the_pods_namespace(store):
    """namespaceSelector set: an automatic request takes from the pool only for a namespace it
    selects (its labels, and its name under kubernetes.io/metadata.name); nodeSelector must
    still select the node; a request naming the pool is not held to it, as in Calico."""
    await add_pool(store, "team-a", "10.1.0.0/24", namespaceSelector="team == 'a'")
    await add_pool(store, "by-name", "10.3.0.0/24",
                   namespaceSelector="kubernetes.io/metadata.name == 'ops'")
    await _namespace(store, "web", team="a")
    await _namespace(store, "db", team="b")
    ipam = IPAM(store)
    web = await ipam.auto_assign("n1", handle_id="web", num4=1, namespace="web")
    assert web.ipv4[0].ip in ipaddress.ip_network("10.1.0.0/24")
    ops = await ipam.auto_assign("n1", handle_id="ops", num4=1, namespace="ops")  # no profile
    assert ops.ipv4[0].ip in ipaddress.ip_network("10.3.0.0/24")
    with pytest.raises(NoPools, match="team-a .its namespaceSelector does not select namespace db"):
        await ipam.auto_assign("n1", handle_id="db", num4=1, namespace="db")
    with pytest.raises(NoPools, match="does not select a request without a namespace"):
        await ipam.auto_assign("n1", handle_id="none", num4=1)
    named = await ipam.auto_assign("n1", handle_id="db", num4=1, namespace="db", ipv4_pools=["team-a"])
    assert named.ipv4[0].ip in ipaddress.ip_network("10.1.0.0/24")

    # Both selectors: a node the pool does not select gets nothing from it, whatever the namespace.
    await add_pool(store, "rack-b", "10.2.0.0/24", nodeSelector="rack == 'b'",
                   namespaceSelector="team == 'b'")
    await store.create(parse({"apiVersion": "percale.io/v1", "kind": "Node",
                              "metadata": {"name": "n2", "labels": {"rack": "b"}}, "spec": {}}))
    in_rack = await ipam.auto_assign("n2", handle_id="db-2", num4=1, namespace="db")
    assert in_rack.ipv4[0].ip in ipaddress.ip_network("10.2.0.0/24")
    with pytest.raises(NoPools):
        await ipam.auto_assign("n1", handle_id="db-1", num4=1, namespace="db")
    await assert_consistent(store)


async def test_a_view_behind_a_namespaces_labels_asks_the_store():
    """A pod's ADD right after its namespace was labelled: the agent's view has not seen the
    label yet, the store has. The pool chosen is the one the store's labels select."""
    memory = MemoryDatastore()
    await add_pool(memory, "team-a", "10.1.0.0/24", namespaceSelector="team == 'a'")
    await add_pool(memory, "others", "10.2.0.0/24", namespaceSelector="!has(team)")
    cache = Cache(memory, ["IPPool", "IPAMBlock", "BlockAffinity", "IPAMConfig", "Node", "Profile"])
    following = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        following.cancel()  # the view stops here: it will not see the namespace
        await asyncio.gather(following, return_exceptions=True)
        await _namespace(memory, "web", team="a")
        got = await IPAM(CachedDatastore(memory, cache), authority=memory).auto_assign(
            "node1", handle_id="h1", num4=1, namespace="web")
        assert got.ipv4[0].ip in ipaddress.ip_network("10.1.0.0/24")
    finally:
        following.cancel()
