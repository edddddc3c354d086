"""The agent's watch-fed view (datastore/cache.py) on the memory datastore, which keeps the
contract's hard parts (bounded history, RevisionCompacted): the view follows every change in
order, resumes a broken watch without losing an event, lists again after compaction and reports
the difference, follows only its own node's affinities, and CachedDatastore reads its own writes
at once without asking the store."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest

from percale.api import BlockAffinity, IPPool, ObjectMeta, parse
from percale.api.ipam import BlockAffinitySpec, affinity_name
from percale.datastore import DatastoreError, DatastoreUnavailable, Key, MemoryDatastore, NotFound
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

    async def list(self, kind, namespace=None, **options):
        self.reads += 1
        return await self.store.list(kind, namespace, **options)

    async def watch(self, kind, **options) -> AsyncIterator:
        seen = 0
        async for event in self.store.watch(kind, **options):
            yield event
            seen += 1
            if seen >= self.every:
                self.breaks += 1
                raise DatastoreUnavailable("the connection broke")


def paused_watches() -> type[FlakyWatches]:
    """Watches that wait until `release` is set (a fresh event per call), so the history moves
    on without them."""

    class Paused(FlakyWatches):
        release = asyncio.Event()

        async def watch(self, kind, **options):
            await self.release.wait()
            async for event in self.store.watch(kind, **options):
                yield event

    return Paused


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

    Paused = paused_watches()

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


# -- objects that cannot be read ---------------------------------------------------------------

UNPARSABLE = "not a selector((("  # a string the CRD schema takes and the model refuses


def unreadable_pool(name: str, cidr: str) -> bytes:
    """A pool as a hand edit or an older version can leave it: JSON the model refuses."""
    return json.dumps({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
                       "spec": {"cidr": cidr, "nodeSelector": UNPARSABLE}}).encode()


async def until(condition, timeout: float = 5.0) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), timeout)


def left_out_logs(caplog, key: Key) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "percale.datastore.cache" and r.levelno == logging.WARNING
            and r.getMessage().startswith(f"{key} (revision ")]


async def test_one_object_that_cannot_be_read_does_not_hide_the_rest_of_its_kind(caplog):
    """Among good pools, one the model refuses: the view holds every good one and keeps being
    told their changes; the bad one is left out as if absent, listed in `unreadable`, logged
    once per revision, and told as an addition once a write makes it readable. A store read of
    it still fails, naming it."""
    memory = MemoryDatastore()
    await memory.create(pool("a", "10.1.0.0/16"))
    await memory.create(pool("b", "10.2.0.0/16"))
    bad = Key("IPPool", "bad")
    broken_at = memory.put_raw(bad, unreadable_pool("bad", "10.9.0.0/16"))
    cache = Cache(memory, ["IPPool"])
    told: list[Change] = []
    cache.subscribe(told.append)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_synced(), 5)
        assert sorted(k.name for k in cache.items("IPPool")) == ["a", "b"]
        assert sorted(p.metadata.name for p in cache.values("IPPool")) == ["a", "b"]
        assert cache.get(bad) is None and cache.get_value("IPPool", "bad") is None
        assert [c.key.name for c in told] == ["a", "b"]
        assert list(cache.unreadable) == [bad]
        assert cache.unreadable[bad].revision == broken_at
        assert "nodeSelector" in cache.unreadable[bad].reason
        assert len(left_out_logs(caplog, bad)) == 1
        with pytest.raises(DatastoreError, match=r"IPPool\(bad\) \(revision \d+\) cannot be read"):
            (await memory.get(bad)).value

        # The good ones keep coming.
        c = await memory.create(pool("c", "10.3.0.0/16"))
        a = await memory.update(pool("a", "10.1.0.0/16", disabled=True), revision=None)
        await until(lambda: cache.get(c.key) is not None
                    and cache.get(a.key).revision == a.revision)
        assert cache.get_value("IPPool", "a").spec.disabled is True

        # Broken again by another write: one more warning, for the new revision only.
        again = memory.put_raw(bad, unreadable_pool("bad", "10.9.0.0/16"))
        await until(lambda: cache.unreadable.get(bad) and cache.unreadable[bad].revision == again)
        assert len(left_out_logs(caplog, bad)) == 2

        # Written readable: it appears, told as new.
        fixed = await memory.update(pool("bad", "10.9.0.0/16"), revision=None)
        await until(lambda: cache.get(bad) is not None)
        assert cache.get(bad).revision == fixed.revision and not cache.unreadable
        assert [(ch.old, ch.new.revision) for ch in told if ch.key == bad] == [(None, fixed.revision)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_object_that_becomes_unreadable_is_told_as_deleted_and_comes_back():
    """A readable pool overwritten with what cannot be read: listeners are told it was deleted
    (with the value they had), as Calico's syncer treats a key that fails to parse, rather than
    keep acting on a revision the store no longer holds."""
    memory = MemoryDatastore()
    made = await memory.create(pool("p", "10.1.0.0/16"))
    cache = Cache(memory, ["IPPool"])
    told: list[Change] = []
    cache.subscribe(told.append)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_synced(), 5)
        memory.put_raw(made.key, unreadable_pool("p", "10.1.0.0/16"))
        await until(lambda: cache.get(made.key) is None)
        gone = told[-1]
        assert gone.key == made.key and gone.new is None and gone.old.revision == made.revision
        assert cache.values("IPPool") == [] and list(cache.unreadable) == [made.key]

        back = await memory.update(pool("p", "10.1.0.0/16", disabled=True), revision=None)
        await until(lambda: cache.get(made.key) is not None)
        assert (told[-1].old, told[-1].new.revision) == (None, back.revision)
        # Deleted while unreadable: nothing more to tell, nothing left out.
        memory.put_raw(made.key, unreadable_pool("p", "10.1.0.0/16"))
        await until(lambda: made.key in cache.unreadable)
        count = len(told)
        await memory.delete(made.key)
        await until(lambda: not cache.unreadable)
        assert len(told) == count
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_view_nobody_listens_to_decodes_nothing_but_its_reads_leave_out_what_cannot_be_read():
    """With no listener that reads values, the view decodes nothing ahead of its readers (IPAM
    lists every block by name and reads few); values() and get_value(), which read, leave out
    what cannot be read and record it."""
    memory = MemoryDatastore()
    await memory.create(pool("a", "10.1.0.0/16"))
    bad = Key("IPPool", "bad")
    memory.put_raw(bad, unreadable_pool("bad", "10.9.0.0/16"))
    cache = Cache(memory, ["IPPool"])
    CachedDatastore(memory, cache)  # its bookkeeping reads revisions only
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_synced(), 5)
        assert cache.get(bad) is not None and not cache.unreadable  # not read yet
        assert [p.metadata.name for p in cache.values("IPPool")] == ["a"]
        assert cache.get(bad) is None and list(cache.unreadable) == [bad]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_busy_kind_polled_accounts_for_what_it_leaves_out():
    """A poll compares the store's count with what the view holds; an object left out as
    unreadable is still in the store's count, so it must not look like a deletion to find at
    every poll (one more read each time), and a deletion of it is still found."""
    from percale.api import IPAMBlock
    from percale.api.ipam import host_affinity

    class Counting(MemoryDatastore):
        keys_read = 0

        async def keys_at(self, kind, revision, *, node=None):
            self.keys_read += 1
            return await super().keys_at(kind, revision, node=node)

    memory = Counting()
    bad = Key("IPAMBlock", "10.201.0.0-26")
    memory.put_raw(bad, b"written by an older version")
    cache = Cache(memory, ["IPAMBlock"], busy_events=5, poll_seconds=0.05)
    cache.subscribe(lambda change: None)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_synced(), 5)
        assert list(cache.unreadable) == [bad]
        for i in range(20):
            await memory.create(IPAMBlock.empty(f"10.200.{i}.0/26", host_affinity("node-1")))
        await until(lambda: len(cache.items("IPAMBlock")) == 20)
        assert cache.polls > 0, "20 blocks at once never made the view poll"
        assert memory.keys_read == 0
        await memory.delete(bad)
        for i in range(20, 30):  # busy still, so a poll finds the deletion
            await memory.create(IPAMBlock.empty(f"10.200.{i}.0/26", host_affinity("node-1")))
        await until(lambda: not cache.unreadable and len(cache.items("IPAMBlock")) == 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_agents_metrics_count_what_its_view_leaves_out():
    from prometheus_client import generate_latest
    from types import SimpleNamespace

    from percale.node import health

    memory = MemoryDatastore()
    memory.put_raw(Key("IPPool", "bad"), unreadable_pool("bad", "10.9.0.0/16"))
    await memory.create(pool("good", "10.1.0.0/16"))
    cache = Cache(memory, ["IPPool", "Node"])
    cache.subscribe(lambda change: None)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_synced(), 5)
        bgp = SimpleNamespace(peers={}, rib=None, fib=None, synced=True, reconciled=True)
        metrics = generate_latest(health.registry_for(bgp, cache=cache)).decode()
        assert 'percale_datastore_view_unreadable_objects{kind="IPPool"} 1.0' in metrics
        assert 'percale_datastore_view_unreadable_objects{kind="Node"} 0.0' in metrics
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_listed_again_after_compaction_the_view_still_leaves_out_what_it_cannot_read(caplog):
    """A relist brings the unreadable object again: still left out, not logged again (same
    revision), and the difference with the view told as usual."""
    memory = MemoryDatastore(history_limit=5)
    await memory.create(pool("a", "10.1.0.0/16"))
    bad = Key("IPPool", "bad")
    memory.put_raw(bad, unreadable_pool("bad", "10.9.0.0/16"))

    Paused = paused_watches()

    cache = Cache(Paused(memory, every=10**9), ["IPPool"])
    told: list[Change] = []
    cache.subscribe(told.append)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_synced(), 5)
        for i in range(10):  # more than the history keeps
            await memory.create(pool(f"n{i}", f"10.{100 + i}.0.0/16"))
        Paused.release.set()
        await until(lambda: len(cache.items("IPPool")) == 11)
        assert cache.lists == 2 and list(cache.unreadable) == [bad]
        assert bad not in {c.key for c in told}
        assert len(left_out_logs(caplog, bad)) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_write_of_this_process_overtaken_by_an_unreadable_one_is_told_then_deleted():
    """The watch brings this process's write and, before the write is answered, someone else's
    write that cannot be read: the changes held meanwhile are told in order, the second as the
    object's deletion, and the view ends without it."""
    heard: list[Change] = []
    memory = MemoryDatastore()
    store = SlowAnswers(memory, 0.05, heard)
    cache = Cache(store, ["IPPool"])
    cache.subscribe(heard.append)
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        view = CachedDatastore(store, cache)
        key = Key("IPPool", "new")

        async def overwrite() -> None:
            await until(lambda: cache.get(key) is not None)  # the watch brought the write
            memory.put_raw(key, unreadable_pool("new", "10.245.0.0/16"))

        other = asyncio.create_task(overwrite())
        created = await view.create(pool("new", "10.245.0.0/16"))
        await other
        await until(lambda: key in cache.unreadable)
        assert store.seen_before_answer == [[]]  # both changes came while the write was out
        assert [(c.old and c.old.revision, c.new and c.new.revision) for c in heard] == [
            (None, created.revision), (created.revision, None)]
        assert cache.get(key) is None and cache.values("IPPool") == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_later_write_by_another_is_served_at_once_though_the_view_only_polls():
    """While a kind is polled, the view is told each key's latest value, never this process's
    write itself: its overlay entry then waited out OVERLAY_SECONDS, serving the process's own
    older write over another's newer one; likewise its own delete over another's re-create."""
    memory = MemoryDatastore()
    mine = await memory.create(pool("x", "10.20.0.0/16"))
    cache = Cache(memory, ["IPPool"], poll_when_busy=["IPPool"], busy_events=5, poll_seconds=0.05)
    view = CachedDatastore(memory, cache)
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        busy = await memory.create(pool("busy", "10.21.0.0/16"))
        for i in range(30):  # someone else's burst: the kind is polled from now on
            busy = await memory.update(pool("busy", "10.21.0.0/16", disabled=bool(i % 2)),
                                       revision=busy.revision)
        for _ in range(100):
            if cache.polling:
                break
            await asyncio.sleep(0.01)
        assert cache.polling == {"IPPool"}

        mine = await view.update(pool("x", "10.20.0.0/16", disabled=True), revision=mine.revision)
        theirs = await memory.update(pool("x", "10.20.0.0/16"), revision=mine.revision)
        for _ in range(100):
            if (await view.get(Key("IPPool", "x"))).revision == theirs.revision:
                break
            await asyncio.sleep(0.01)
        assert (await view.get(Key("IPPool", "x"))).revision == theirs.revision

        await view.delete(Key("IPPool", "x"))
        again = await memory.create(pool("x", "10.22.0.0/16"))
        for _ in range(100):
            try:
                if (await view.get(Key("IPPool", "x"))).revision == again.revision:
                    break
            except NotFound:
                pass
            await asyncio.sleep(0.01)
        assert (await view.get(Key("IPPool", "x"))).value.spec.cidr == "10.22.0.0/16"
    finally:
        task.cancel()


class GatedWatch:
    """The memory store, whose watch hands over one event each time the test says so: a watch
    that lags behind this process's writes."""

    def __init__(self, store: MemoryDatastore) -> None:
        self.store, self.step = store, asyncio.Queue()

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def watch(self, kind, **options):
        async for event in self.store.watch(kind, **options):
            await self.step.get()
            yield event


async def test_an_own_delete_is_not_undone_by_the_lagging_news_of_the_write_before_it():
    """Update then delete through the view, the watch still behind: when it brings the update
    (the very value deleted), the view must not serve that value again."""
    memory = MemoryDatastore()
    gated = GatedWatch(memory)
    cache = Cache(gated, ["IPPool"], poll_when_busy=[])
    view = CachedDatastore(memory, cache)
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        key = Key("IPPool", "x")
        created = await view.create(pool("x", "10.20.0.0/16"))
        gated.step.put_nowait(1)  # the create arrives
        for _ in range(100):
            if cache.get(key) is not None:
                break
            await asyncio.sleep(0.01)
        await view.update(pool("x", "10.20.0.0/16", disabled=True), revision=created.revision)
        await view.delete(key)
        gated.step.put_nowait(1)  # only the update arrives
        await asyncio.sleep(0.1)
        assert cache.get(key) is not None  # the view itself is behind ...
        with pytest.raises(NotFound):
            await view.get(key)  # ... but reads through it know of the delete
    finally:
        task.cancel()
