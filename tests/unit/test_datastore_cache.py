"""The agent's watch-fed view (datastore/cache.py) on the memory datastore, which keeps the
contract's hard parts (bounded history, RevisionCompacted): the view follows every change in
order, resumes a broken watch without losing an event, lists again after compaction and reports
the difference, follows only its own node's affinities, and CachedDatastore reads its own writes
at once without asking the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from percale.api import BlockAffinity, IPPool, ObjectMeta, parse
from percale.api.ipam import BlockAffinitySpec, affinity_name
from percale.datastore import DatastoreUnavailable, Key, MemoryDatastore, NotFound
from percale.datastore.cache import Cache, CachedDatastore, Change
from percale.datastore.errors import Conflict

pytestmark = pytest.mark.unit


def pool(name: str, cidr: str, disabled: bool = False) -> IPPool:
    return parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
                  "spec": {"cidr": cidr, "disabled": disabled}})


def affinity(node: str, cidr: str) -> BlockAffinity:
    return BlockAffinity(metadata=ObjectMeta(name=affinity_name(node, cidr)),
                         spec=BlockAffinitySpec(state="confirmed", node=node, cidr=cidr))


async def settle(cache: Cache, store, kind: str) -> None:
    """Until the view of `kind` is what the store holds."""
    for _ in range(200):
        want = {kv.key: kv.revision for kv in (await store.list(kind)).items}
        if {k: kv.revision for k, kv in cache.items(kind).items()} == want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the view of {kind} did not catch up")


class FlakyWatches:
    """The memory datastore whose watches break after `every` events (as a connection to etcd
    does), raising DatastoreUnavailable; `reads` counts gets and lists."""

    def __init__(self, store: MemoryDatastore, every: int):
        self.store, self.every, self.reads, self.breaks = store, every, 0, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def get(self, key):
        self.reads += 1
        return await self.store.get(key)

    async def list(self, kind, namespace=None, *, node=None):
        self.reads += 1
        return await self.store.list(kind, namespace, node=node)

    async def watch(self, kind, *, revision=None, namespace=None, node=None,
                    deleted_values=True) -> AsyncIterator:
        seen = 0
        async for event in self.store.watch(kind, revision=revision, namespace=namespace, node=node,
                                            deleted_values=deleted_values):
            yield event
            seen += 1
            if seen >= self.every:
                self.breaks += 1
                raise DatastoreUnavailable("the connection broke")


async def test_the_view_follows_every_change_in_order_across_broken_watches():
    memory = MemoryDatastore()
    await memory.create(pool("before", "10.1.0.0/16"))
    store = FlakyWatches(memory, every=3)
    cache = Cache(store, ["IPPool"], retry_delay=0.001)
    seen: list[Change] = []
    cache.subscribe(seen.append)
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        assert [c.key.name for c in seen] == ["before"] and seen[0].old is None
        for i in range(20):
            await memory.create(pool(f"p{i}", f"10.{i + 2}.0.0/16"))
        current = await memory.get(Key("IPPool", "p3"))
        await memory.update(current.value.model_copy(update={"spec": current.value.spec.model_copy(
            update={"disabled": True})}), revision=current.revision)
        await memory.delete(Key("IPPool", "p5"))
        await settle(cache, memory, "IPPool")
        assert store.breaks >= 5  # the watch broke again and again, and nothing was lost
        names = [(c.key.name, c.old is None, c.new is None) for c in seen[1:]]
        assert names == [(f"p{i}", True, False) for i in range(20)] + [("p3", False, False), ("p5", False, True)]
        assert cache.get(Key("IPPool", "p3")).value.spec.disabled
        assert cache.lists == 1
    finally:
        task.cancel()


async def test_compacted_history_is_listed_again_and_the_difference_reported():
    memory = MemoryDatastore(history_limit=5)
    for name in ("a", "b", "c"):
        await memory.create(pool(name, f"10.{ord(name)}.0.0/16"))

    class Paused(FlakyWatches):
        """Watches that wait until released, so the history moves on without them."""
        release = asyncio.Event()

        async def watch(self, kind, *, revision=None, namespace=None, node=None, deleted_values=True):
            await self.release.wait()
            async for event in self.store.watch(kind, revision=revision, namespace=namespace, node=node,
                                                deleted_values=deleted_values):
                yield event

    store = Paused(memory, every=10**9)
    cache = Cache(store, ["IPPool"])
    seen: list[Change] = []
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        cache.subscribe(seen.append)
        await memory.delete(Key("IPPool", "a"))
        for i in range(10):  # more than the history keeps
            await memory.create(pool(f"n{i}", f"10.{100 + i}.0.0/16"))
        Paused.release.set()
        await settle(cache, memory, "IPPool")
        assert cache.lists == 2
        assert ("a", False, True) in [(c.key.name, c.old is None, c.new is None) for c in seen]
        assert {c.key.name for c in seen if c.old is None} == {f"n{i}" for i in range(10)}
    finally:
        task.cancel()


async def test_a_node_follows_only_its_own_affinities():
    memory = MemoryDatastore()
    await memory.create(affinity("node1", "10.0.0.0/26"))
    await memory.create(affinity("node2", "10.0.0.64/26"))
    await memory.create(affinity("node1-b", "10.0.0.128/26"))  # a name that starts like node1's
    cache = Cache(memory, ["BlockAffinity"], node="node1")
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        await memory.create(affinity("node2", "10.0.1.0/26"))
        await memory.create(affinity("node1", "10.0.1.64/26"))
        for _ in range(100):
            if len(cache.items("BlockAffinity")) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(kv.value.spec.cidr for kv in cache.items("BlockAffinity").values()) == [
            "10.0.0.0/26", "10.0.1.64/26"]
        # Another node's affinity is not in the view: CachedDatastore asks the store for it.
        view = CachedDatastore(memory, cache)
        other = await view.get(Key("BlockAffinity", affinity_name("node2", "10.0.1.0/26")))
        assert other.value.spec.node == "node2" and view.reads_from_store == 1
    finally:
        task.cancel()


async def test_cached_reads_cost_the_store_nothing_and_a_writer_reads_its_own_writes():
    memory = MemoryDatastore()
    await memory.create(pool("pods", "10.244.0.0/16"))
    store = FlakyWatches(memory, every=10**9)
    cache = Cache(store, ["IPPool"])
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        view = CachedDatastore(store, cache)
        reads = store.reads
        for _ in range(100):
            assert [kv.key.name for kv in (await view.list("IPPool")).items] == ["pods"]
            await view.get(Key("IPPool", "pods"))
        assert store.reads == reads  # all from memory

        # Written and read back before the watch can have delivered it (no await between).
        created = await view.create(pool("new", "10.245.0.0/16"))
        assert (await view.get(created.key)).revision == created.revision
        assert "new" in [kv.key.name for kv in (await view.list("IPPool")).items]
        await view.delete(created.key)
        with pytest.raises(NotFound):
            await view.get(created.key)

        # A write by someone else that the view has not seen yet: the Conflict carries it, and
        # the next read returns it.
        stale = await view.get(Key("IPPool", "pods"))
        await memory.update(stale.value, revision=stale.revision)
        with pytest.raises(Conflict) as lost:
            await view.update(stale.value, revision=stale.revision)
        assert (await view.get(stale.key)).revision == lost.value.current.revision
        assert store.reads == reads
        await settle(cache, memory, "IPPool")
        assert not view._overlay  # the watch caught up with every write
    finally:
        task.cancel()


async def test_before_its_first_list_the_view_sends_reads_to_the_store():
    memory = MemoryDatastore()
    await memory.create(pool("pods", "10.244.0.0/16"))
    cache = Cache(memory, ["IPPool"])  # never run
    view = CachedDatastore(memory, cache)
    assert [kv.key.name for kv in (await view.list("IPPool")).items] == ["pods"]
    assert view.reads_from_store == 1


async def test_the_view_lists_in_the_stores_order_and_narrows_to_a_node():
    memory = MemoryDatastore()
    for name, cidr in [("c", "10.3.0.0/16"), ("a", "10.1.0.0/16"), ("b", "10.2.0.0/16")]:
        await memory.create(pool(name, cidr))
    for node, cidr in [("node-1", "10.9.0.64/26"), ("node-10", "10.9.1.0/26"),
                       ("node-1", "10.9.0.0/26"), ("node-2", "10.9.2.0/26")]:
        await memory.create(affinity(node, cidr))
    cache = Cache(memory, ["IPPool", "BlockAffinity"])
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        view = CachedDatastore(memory, cache)
        # An overlaid write of this process joins the list in its place.
        await view.create(pool("b2", "10.4.0.0/16"))
        for kind, node in [("IPPool", None), ("BlockAffinity", None), ("BlockAffinity", "node-1"),
                           ("BlockAffinity", "node-10")]:
            want = [kv.key for kv in (await memory.list(kind, node=node)).items]
            assert [kv.key for kv in (await view.list(kind, node=node)).items] == want
        assert [kv.value.spec.cidr for kv in (await view.list("BlockAffinity", node="node-1")).items] == [
            "10.9.0.0/26", "10.9.0.64/26"]
        assert view.reads_from_store == 0
    finally:
        task.cancel()


async def test_only_the_kinds_polled_when_busy_give_up_their_watch():
    """A burst of writes makes the view read what changed in IPAMBlock (routes need only where a
    block ends up), but every other kind (endpoints: the policy agent matches the revision it
    wrote) keeps its watch and is told every change."""
    from percale.api import IPAMBlock
    from percale.api.ipam import host_affinity

    memory = MemoryDatastore()
    cache = Cache(memory, ["IPPool", "IPAMBlock"], busy_events=5, poll_seconds=0.05)
    assert cache.poll_when_busy == {"IPAMBlock"}
    told: list[Change] = []
    cache.subscribe(told.append)
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        for i in range(20):
            await memory.create(pool(f"p{i}", f"10.{i}.0.0/16"))
        await settle(cache, memory, "IPPool")
        assert cache.polls == 0 and not cache.polling
        assert len([c for c in told if c.kind == "IPPool"]) == 20

        for i in range(20):
            await memory.create(IPAMBlock.empty(f"10.200.{i}.0/26", host_affinity("node-1")))
        await settle(cache, memory, "IPAMBlock")
        assert cache.polls > 0, "20 blocks at once never made the view poll"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_poll_never_reads_more_objects_than_the_events_it_replaces():
    """etcd reads every object of the kind to answer a poll: 50 blocks changed 60 times within
    a second are cheaper to watch than to read 10 times a second, so the view keeps its watch."""
    from percale.api import IPAMBlock
    from percale.api.ipam import host_affinity

    memory = MemoryDatastore()
    made = [await memory.create(IPAMBlock.empty(f"10.200.{i}.0/26", host_affinity("node-1")))
            for i in range(50)]
    cache = Cache(memory, ["IPAMBlock"], busy_events=5, poll_seconds=0.1)
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        for kv in made + made[:10]:
            current = await memory.get(kv.key)
            spec = current.value.spec.model_copy(update={"sequence_number": 9})
            await memory.update(current.value.model_copy(update={"spec": spec}),
                                revision=current.revision)
        await settle(cache, memory, "IPAMBlock")
        assert cache.polls == 0 and not cache.polling
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class SlowAnswers(FlakyWatches):
    """Writes land at once, but their answers come `delay` later: the watch delivers first, as
    it often does from etcd. `seen_before_answer` records what a listener had heard by then."""

    def __init__(self, store: MemoryDatastore, delay: float, heard: list):
        super().__init__(store, every=10**9)
        self.delay, self.heard, self.seen_before_answer = delay, heard, []

    async def create(self, value):
        try:
            return await self.store.create(value)
        finally:
            await asyncio.sleep(self.delay)
            self.seen_before_answer.append(list(self.heard))


async def test_changes_of_a_key_being_written_are_told_after_the_answer_with_the_writers_object():
    heard: list[Change] = []
    memory = MemoryDatastore()
    store = SlowAnswers(memory, 0.05, heard)
    cache = Cache(store, ["IPPool"])
    cache.subscribe(lambda change: heard.append(change))
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        view = CachedDatastore(store, cache)
        created = await view.create(pool("new", "10.245.0.0/16"))
        assert cache.get(created.key).revision == created.revision  # the watch had brought it
        assert store.seen_before_answer == [[]]  # and nobody was told before the answer
        assert [(c.key, c.new.revision) for c in heard] == [(created.key, created.revision)]
        assert heard[0].new is created  # the writer's object: nothing to decode again

        # A write that fails releases the key too: a later change is told at once.
        with pytest.raises(Exception):
            await view.create(pool("new", "10.246.0.0/16"))
        updated = await memory.update(pool("new", "10.247.0.0/16"), revision=created.revision)
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.01)
        assert [c.new.revision for c in heard] == [created.revision, updated.revision]
        assert not cache._writing and not cache._held
    finally:
        task.cancel()
