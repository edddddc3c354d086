"""The IPAM garbage collector on the memory datastore, with a fake clock."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from percale.datastore import DatastoreUnavailable, Key, MemoryDatastore, NotFound
from percale.ipam.allocator import IPAM
from percale.ipam.gc import UNREGISTERED_NODE_MARGIN, GarbageCollector
from percale.api.ipam import affinity_name, block_name
from tests.helpers.ipam_pods import (
    add_pod,
    allocate,
    endpoint,
    node,
    unreadable_endpoint,
    unreadable_node,
)
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
GRACE = timedelta(minutes=15)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Clock:
    """The allocator's clock, driven like the collector's: allocations are stamped with it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def ipam():
    store = MemoryDatastore()
    # /30 blocks (4 addresses) so that a few pods span several blocks.
    await add_pool(store, "pool1", "10.0.0.0/24", blockSize=30)
    for name in ("node1", "node2"):
        await store.create(node(name))
    return IPAM(store, clock=Clock())


class Interleaving:
    """A datastore that runs `hook` once, inside the n-th list of WorkloadEndpoints after
    arming: a write that lands in the middle of the collector's re-check."""

    def __init__(self, store):
        self._store = store
        self._hook = None
        self._skip = 0

    def arm(self, hook, skip: int = 0) -> None:
        self._hook, self._skip = hook, skip

    async def list(self, kind, namespace=None, **options):
        if kind == "WorkloadEndpoint" and self._hook is not None:
            if self._skip:
                self._skip -= 1
            else:
                hook, self._hook = self._hook, None
                await hook()
        return await self._store.list(kind, namespace, **options)

    def __getattr__(self, name):
        return getattr(self._store, name)


async def test_a_leak_is_released_only_after_the_grace_period(ipam):
    [used] = await add_pod(ipam, "node1", "web")
    [leaked] = await allocate(ipam, "node1", "crashed")
    gc = GarbageCollector(ipam)
    first = await gc.run_once(at(0))
    assert (first.candidates, first.confirmed, first.released) == (1, 0, 0)
    assert (await gc.run_once(at(14.99))).released == 0
    assert await ipam.get_allocation(leaked) is not None
    done = await gc.run_once(at(15))
    assert (done.confirmed, done.released) == (1, 1)
    assert await ipam.get_allocation(leaked) is None
    assert await ipam.get_allocation(used) is not None
    # Its handle went with it.
    assert [kv.value.spec.handle_id for kv in (await ipam.store.list("IPAMHandle")).items] == \
        [(await ipam.get_allocation(used)).handle_id]
    assert (await gc.run_once(at(16))).candidates == 0
    assert gc.total_released == 1


async def test_a_leak_on_a_deleted_node_is_released_at_once(ipam):
    [on_node2] = await allocate(ipam, "node2", "orphan")
    [unregistered] = await allocate(ipam, "node3", "early")  # node3 never had a Node
    gc = GarbageCollector(ipam)
    await gc.run_once(at(0))
    await ipam.store.delete(Key("Node", "node2"))
    done = await gc.run_once(at(0.1))
    assert (done.confirmed, done.released) == (1, 1)
    assert await ipam.get_allocation(on_node2) is None
    # A node the collector never saw and that has no Node may have an ADD in flight: its
    # address waits for the margin from its allocation, then goes.
    assert await ipam.get_allocation(unregistered) is not None
    assert (await gc.run_once(at(1))).released == 1
    assert await ipam.get_allocation(unregistered) is None


@pytest.mark.parametrize("grace", [GRACE, timedelta(0)])
async def test_a_node_deleted_before_any_round_saw_it_is_collected_in_the_first_round(
    ipam, grace,
):
    """The Node went, its pods with it, while percale-controllers restarted or moved (often
    because the deleted node ran it): no round saw it. Its pods' addresses, its tunnel address,
    the block they emptied and its affinity all go in the first round, at any grace period, as
    Calico's kube-controllers does. They went after one grace period and the block after a
    second, and with a grace period of 0 never."""
    ipam.clock.now = at(-10)
    [used] = await add_pod(ipam, "node1", "web")
    pods = [(await allocate(ipam, "node2", f"p{i}"))[0] for i in range(2)]
    got = await ipam.auto_assign("node2", handle_id="vxlan-tunnel-addr-node2", num4=1,
                                 use="Tunnel", attrs={"type": "vxlanTunnelAddress"})
    gone = pods + [str(got.ipv4[0].ip)]
    cidrs = {(await ipam.get_allocation(ip)).block for ip in gone}
    await ipam.store.delete(Key("Node", "node2"))

    ipam.clock.now = at(0)
    gc = GarbageCollector(ipam, grace_period=grace)
    done = await gc.run_once(at(0))
    assert (done.confirmed, done.released, done.released_blocks) == (3, 3, len(cidrs))
    assert [await ipam.get_allocation(ip) for ip in gone] == [None] * 3
    for cidr in cidrs:
        assert not await block_exists(ipam, cidr)
        assert not await affinity_exists(ipam, "node2", cidr)
    assert await ipam.get_allocation(used) is not None


async def test_a_node_that_never_registered_keeps_addresses_younger_than_the_margin(ipam):
    """The allocator serves a node before its Node exists (on etcd an agent started with
    IP=none may never write one), and an ADD allocates before it writes the pod's endpoint: in
    between, the address is unused on a node without a Node. It stays, with its block, until
    the allocation is older than the margin, at any grace period; then it goes, as a gone
    node's."""
    ipam.clock.now = at(0) - UNREGISTERED_NODE_MARGIN / 2
    [ip] = await allocate(ipam, "node3", "starting")
    cidr = (await ipam.get_allocation(ip)).block
    gc = GarbageCollector(ipam, grace_period=timedelta(0))
    for moment in (at(0), at(0) + UNREGISTERED_NODE_MARGIN / 2 - timedelta(seconds=1)):
        done = await gc.run_once(moment)
        assert (done.candidates, done.released, done.released_blocks) == (1, 0, 0)
    assert await ipam.get_allocation(ip) is not None
    done = await gc.run_once(at(0) + UNREGISTERED_NODE_MARGIN / 2)
    assert (done.released, done.released_blocks) == (1, 1)
    assert not await block_exists(ipam, cidr)


class NodeReads:
    """A datastore whose reads of Nodes fail while `failing`, or that writes `register` (a
    Node) in the middle of the collector's scan: after its list of Nodes, before the
    collector's own read of the Node."""

    def __init__(self, store):
        self._store = store
        self.failing = False
        self.register = None

    async def get(self, key):
        if self.failing and key.kind == "Node":
            raise DatastoreUnavailable("etcd did not answer")
        return await self._store.get(key)

    async def list(self, kind, namespace=None, **options):
        listed = await self._store.list(kind, namespace, **options)
        if kind == "IPAMHandle" and self.register is not None:  # the scan's last list
            node_resource, self.register = self.register, None
            await self._store.create(node_resource)
        return listed

    def __getattr__(self, name):
        return getattr(self._store, name)


async def test_a_node_whose_read_fails_or_that_registers_during_the_scan_is_not_gone(
    ipam, caplog,
):
    """Only "not found" makes a node without a Node gone: a read that fails holds its
    addresses back (and says so), and a Node written after the scan listed the Nodes is seen
    by the collector's own read, which comes after the scan."""
    store = NodeReads(ipam.store)
    ipam.clock.now = at(-10)
    [ip] = await allocate(ipam, "node3", "lost")
    gc = GarbageCollector(IPAM(store), grace_period=timedelta(0))
    caplog.set_level(logging.WARNING, logger="percale.ipam.gc")
    store.failing = True
    assert (await gc.run_once(at(0))).released == 0
    assert any("cannot read Node node3" in r.getMessage() for r in caplog.records)
    store.failing, store.register = False, node("node3")
    assert (await gc.run_once(at(1))).released == 0
    assert await ipam.get_allocation(ip) is not None
    # No round's scan saw it; deleted again, it has no Node: gone.
    await ipam.store.delete(Key("Node", "node3"))
    assert (await gc.run_once(at(2))).released == 1
    assert await ipam.get_allocation(ip) is None


async def test_a_handle_with_one_valid_address_is_left_whole(ipam):
    ips = await allocate(ipam, "node1", "db", num4=2)
    await ipam.store.create(endpoint("node1", "db", ips[:1]))  # only the first is wired up
    gc = GarbageCollector(ipam)
    await gc.run_once(at(0))
    done = await gc.run_once(at(30))
    assert (done.candidates, done.confirmed, done.released, done.skipped_handles) == (1, 1, 0, 1)
    assert all([await ipam.get_allocation(ip) for ip in ips])


async def test_a_handle_is_released_only_when_every_address_is_confirmed(ipam):
    [first] = await allocate(ipam, "node1", "db", container_id="c1")
    gc = GarbageCollector(ipam)
    await gc.run_once(at(0))
    # A second ADD for the same container takes another address under the same handle later.
    [second] = await allocate(ipam, "node1", "db", container_id="c1")
    done = await gc.run_once(at(15))
    assert (done.confirmed, done.released, done.skipped_handles) == (1, 0, 1)
    done = await gc.run_once(at(30))
    assert done.released == 2
    assert await ipam.get_allocation(first) is None and await ipam.get_allocation(second) is None


async def test_an_address_reallocated_between_rounds_starts_over(ipam):
    [ip] = await allocate(ipam, "node1", "old")
    gc = GarbageCollector(ipam)
    await gc.run_once(at(0))
    await ipam.release_ips([ip])
    await ipam.assign_ip("node1", ip, handle_id="k8s-pod-network.new", attrs={"pod": "new"})
    done = await gc.run_once(at(15))
    assert (done.candidates, done.confirmed, done.released) == (1, 0, 0)
    assert (await ipam.get_allocation(ip)).handle_id == "k8s-pod-network.new"


async def test_an_address_reallocated_during_the_recheck_is_not_released(ipam):
    store = Interleaving(ipam.store)
    gc_ipam = IPAM(store)
    [ip] = await allocate(ipam, "node1", "old")
    gc = GarbageCollector(gc_ipam)
    await gc.run_once(at(0))

    async def reuse():
        # Between the re-check's read of the blocks and the release: the address is freed and
        # handed to a new pod whose endpoint is not written yet.
        await ipam.release_ips([ip])
        await ipam.assign_ip("node1", ip, handle_id="k8s-pod-network.new", attrs={"pod": "new"})

    store.arm(reuse, skip=1)  # the round's first scan, then the re-check
    done = await gc.run_once(at(15))
    assert (done.confirmed, done.released, done.changed) == (1, 0, 1)
    assert (await ipam.get_allocation(ip)).handle_id == "k8s-pod-network.new"


async def test_a_leaked_tunnel_address_of_a_deleted_node_goes_at_once(ipam):
    got = await ipam.auto_assign("node2", handle_id="vxlan-tunnel-addr-node2", num4=1,
                                 use="Tunnel", attrs={"type": "vxlanTunnelAddress"})
    tunnel = str(got.ipv4[0].ip)
    current = await ipam.store.get(Key("Node", "node2"))
    await ipam.store.update(node("node2", ipv4VXLANTunnelAddr=tunnel), revision=current.revision)
    gc = GarbageCollector(ipam)
    assert (await gc.run_once(at(0))).candidates == 0
    await ipam.store.delete(Key("Node", "node2"))
    assert (await gc.run_once(at(1))).released == 1
    assert await ipam.get_allocation(tunnel) is None


async def test_an_object_that_cannot_be_read_stops_no_round_and_loses_no_address(ipam, caplog):
    """One unreadable Node or pod endpoint used to fail every round: anyone who could annotate
    a pod switched off the cluster's GC. Now the rounds go on, the addresses such an object may
    own are held back (not released, however long), and the object is logged once by name."""
    [leaked] = await allocate(ipam, "node1", "crashed")
    [on_node2] = await allocate(ipam, "node2", "lost")
    [in_tenant] = await allocate(ipam, "node1", "mine", namespace="tenant-a")
    gc = GarbageCollector(ipam)
    assert (await gc.run_once(at(0))).candidates == 3
    bad_node = unreadable_node(ipam.store, "node2")
    bad_endpoint = unreadable_endpoint(ipam.store, "node1", "mine", namespace="tenant-a")

    caplog.set_level(logging.WARNING, logger="percale.ipam.gc")
    # node2 cannot be read, but it is there: not gone, so nothing of it goes at once.
    done = await gc.run_once(at(1))
    assert (done.candidates, done.held_back, done.released) == (1, 2, 0)
    done = await gc.run_once(at(16))
    assert (done.confirmed, done.released, done.held_back) == (1, 1, 2)
    assert await ipam.get_allocation(leaked) is None
    assert await ipam.get_allocation(on_node2) is not None
    assert await ipam.get_allocation(in_tenant) is not None
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(told) == 2  # once each, not every round
    assert any(str(bad_node) in m and "holding back the 1 unused" in m for m in told)
    assert any(str(bad_endpoint) in m and "holding back the 1 unused" in m for m in told)


async def test_a_deleted_nodes_last_block_goes_with_its_affinity_once_nothing_valid_is_left(ipam):
    """Calico gives up a deleted node's affinities once no valid allocation remains; percale's
    collector kept a node's last block even after the node was deleted, for good."""
    await add_pod(ipam, "node1", "web")
    [orphan] = await allocate(ipam, "node2", "orphan")
    cidr = (await ipam.get_allocation(orphan)).block
    gc = GarbageCollector(ipam)
    await gc.run_once(at(0))
    await ipam.store.delete(Key("Node", "node2"))
    # The address, the block it emptied and its affinity, all in one round (Calico's
    # releaseNodes); they went two rounds apart, "seen empty twice".
    done = await gc.run_once(at(0.1))
    assert (done.released, done.released_blocks, done.kept_last_blocks) == (1, 1, 0)
    assert not await block_exists(ipam, cidr)
    with pytest.raises(NotFound):
        await ipam.store.get(Key("BlockAffinity", affinity_name("node2", cidr)))
    assert [kv.value.spec.affinity for kv in (await ipam.store.list("IPAMBlock")).items] == \
        ["host:node1"]


@pytest.mark.parametrize("grace", [GRACE, timedelta(0)])
async def test_the_empty_last_block_of_a_node_without_a_node_waits_for_the_margin(ipam, grace):
    """A node no round saw that has no Node may be claiming its first block (claimed before its
    Node exists): its empty last block waits until seen empty for the margin, at any grace
    period. It waited for the grace period, and with 0 for good."""
    [ip] = await allocate(ipam, "node3", "early")
    cidr = (await ipam.get_allocation(ip)).block
    await ipam.release_ips([ip])
    gc = GarbageCollector(ipam, grace_period=grace)
    for minute in (0, 0.5, 0.99):
        done = await gc.run_once(at(minute))
        assert (done.released_blocks, done.kept_last_blocks) == (0, 1 if minute else 0)
    assert (await gc.run_once(at(1))).released_blocks == 1
    assert not await block_exists(ipam, cidr)
    assert not await affinity_exists(ipam, "node3", cidr)


async def _affinity_without_block(ipam: IPAM, node_name: str) -> str:
    """What a claim cut short between its two writes leaves: the node's affinity, no block."""
    [ip] = await allocate(ipam, node_name, "short-lived")
    cidr = (await ipam.get_allocation(ip)).block
    await ipam.release_ips([ip])
    await ipam.store.delete(Key("IPAMBlock", block_name(cidr)))
    return cidr


async def affinity_exists(ipam: IPAM, node_name: str, cidr: str) -> bool:
    try:
        await ipam.store.get(Key("BlockAffinity", affinity_name(node_name, cidr)))
        return True
    except NotFound:
        return False


async def test_a_deleted_nodes_affinity_without_a_block_is_released(ipam):
    """Calico releases every affinity of a deleted node; percale's collector read blocks only,
    and an affinity whose block a crash never wrote kept its CIDR from every node for good.
    A node that exists keeps such an affinity (its next claim makes the block)."""
    gone = await _affinity_without_block(ipam, "node2")
    kept = await _affinity_without_block(ipam, "node1")
    gc = GarbageCollector(ipam)
    assert (await gc.run_once(at(0))).released_affinities == 0
    await ipam.store.delete(Key("Node", "node2"))
    assert (await gc.run_once(at(0.1))).released_affinities == 1
    assert not await affinity_exists(ipam, "node2", gone)
    assert await affinity_exists(ipam, "node1", kept)


@pytest.mark.parametrize("grace", [GRACE, timedelta(0)])
async def test_an_affinity_without_a_block_of_a_node_without_a_node_waits_for_the_margin(
    ipam, grace,
):
    """A node claiming before it registered looks the same for a moment (the affinity is
    written before the block): the affinity waits until seen so for the margin, at any grace
    period. It waited for the grace period, and with 0 for good."""
    cidr = await _affinity_without_block(ipam, "node3")
    gc = GarbageCollector(ipam, grace_period=grace)
    for minute in (0, 0.99):
        assert (await gc.run_once(at(minute))).released_affinities == 0
    assert (await gc.run_once(at(1))).released_affinities == 1
    assert not await affinity_exists(ipam, "node3", cidr)


async def block_exists(ipam: IPAM, cidr: str) -> bool:
    try:
        await ipam.store.get(Key("IPAMBlock", block_name(cidr)))
        return True
    except NotFound:
        return False


async def test_an_empty_block_goes_on_the_second_observation_and_the_last_block_stays(ipam):
    ips = [(await add_pod(ipam, "node1", f"p{i}"))[0] for i in range(9)]  # blocks of 4, 4, 1
    cidrs = sorted({(await ipam.get_allocation(ip)).block for ip in ips})
    assert len(cidrs) == 3
    by_block = {c: [ip for ip in ips if (await ipam.get_allocation(ip)).block == c] for c in cidrs}
    # Empty two of the three blocks (the pods went away cleanly: addresses and endpoints).
    for cidr in cidrs[1:]:
        await ipam.release_ips(by_block[cidr])
    gc = GarbageCollector(ipam)
    first = await gc.run_once(at(0))
    assert (first.empty_blocks, first.released_blocks) == (2, 0)
    second = await gc.run_once(at(1))
    assert second.released_blocks == 2
    assert [await block_exists(ipam, c) for c in cidrs] == [True, False, False]
    with pytest.raises(NotFound):
        await ipam.store.get(Key("BlockAffinity", affinity_name("node1", cidrs[1])))
    # Now the last block empties too: it is kept, however often it is seen.
    await ipam.release_ips(by_block[cidrs[0]])
    for minute in (2, 3, 4):
        done = await gc.run_once(at(minute))
        assert done.released_blocks == 0
    assert done.kept_last_blocks == 1
    assert await block_exists(ipam, cidrs[0])
    assert gc.total_released_blocks == 2


async def test_an_empty_block_that_changed_between_observations_waits_again(ipam):
    ips = [(await add_pod(ipam, "node1", f"p{i}"))[0] for i in range(5)]  # blocks of 4, 1
    [last] = ips[4:]
    cidr = (await ipam.get_allocation(last)).block
    await ipam.release_ips([last])
    gc = GarbageCollector(ipam)
    assert (await gc.run_once(at(0))).empty_blocks == 1
    # Used and emptied again in between: its sequence number moved, so this is a first sighting.
    [again] = await allocate(ipam, "node1", "brief")
    assert (await ipam.get_allocation(again)).block == cidr
    await ipam.release_ips([again])
    assert (await gc.run_once(at(1))).released_blocks == 0
    assert (await gc.run_once(at(2))).released_blocks == 1
    assert not await block_exists(ipam, cidr)


async def test_empty_blocks_of_both_families_are_collected_together():
    """A dual-stack cluster: its collector sorted IPv4 and IPv6 blocks together, which Python
    refuses (TypeError on every round, so nothing was ever collected)."""
    store = MemoryDatastore()
    await add_pool(store, "v4", "10.0.0.0/24", blockSize=30)
    await add_pool(store, "v6", "fd00:10::/120", blockSize=126)
    await store.create(node("node1"))
    ipam = IPAM(store)
    handles = []
    for i in range(5):  # two blocks of each family: one to empty, one to keep
        handle = f"k8s-pod-network.c{i}"
        await ipam.auto_assign("node1", handle_id=handle, num4=1, num6=1)
        handles.append(handle)
    for handle in handles[:4]:
        await ipam.release_by_handle(handle)
    gc = GarbageCollector(ipam)
    await gc.run_once(at(0))
    second = await gc.run_once(at(1))
    assert second.released_blocks == 2  # one empty block of each family; the last ones stay
    remaining = sorted(kv.value.spec.cidr for kv in (await store.list("IPAMBlock")).items)
    assert [":" in c for c in remaining] == [False, True]
