"""The datastore contract, run against every backend: memory, a real etcd and a real kube-apiserver.

Each test states one promise the rest of percale relies on (IPAM's compare-and-swap loop, the
agent's list-then-watch), so a backend that breaks it fails here first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import subprocess
import time
import uuid

import pytest
from pydantic import ValidationError

from percale.datastore import (
    AlreadyExists,
    Conflict,
    DatastoreError,
    Key,
    MemoryDatastore,
    NotFound,
    RevisionCompacted,
    TransactionConflict,
)
from percale.datastore import layout
from percale.datastore.cache import Cache, CachedDatastore
from percale.datastore.contract import Create, Delete, Update, reads_changes, writes_together
from percale.datastore.etcd import EtcdDatastore
from percale.datastore.kubernetes import KubeDatastore
from percale.api import IPAMConfig, IPPool, ObjectMeta, parse
from percale.api.workloadendpoint import workload_endpoint_name
from tests.helpers import cas_worker
from tests.helpers.store import with_store

pytestmark = pytest.mark.contract


def pool(name: str, cidr: str, **spec) -> object:
    return parse({
        "apiVersion": "percale.io/v1", "kind": "IPPool",
        "metadata": {"name": name}, "spec": {"cidr": cidr, **spec},
    })


def handle(handle_id: str, block: dict[str, int] | None = None) -> object:
    return parse({
        "apiVersion": "percale.io/v1", "kind": "IPAMHandle",
        "metadata": {"name": handle_id}, "spec": {"handleID": handle_id, "block": block or {}},
    })


def endpoint(namespace: str, pod: str) -> object:
    return parse({
        "apiVersion": "percale.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": workload_endpoint_name("node1", "k8s", pod, "eth0"),
                     "namespace": namespace},
        "spec": {"node": "node1", "pod": pod, "endpoint": "eth0", "orchestrator": "k8s",
                 "ipNetworks": ["10.0.0.5/32"]},
    })


@pytest.fixture(params=["memory", "etcd", "kubernetes"])
async def store(request):
    if request.param == "memory":
        ds = MemoryDatastore()
    elif request.param == "etcd":
        ds = EtcdDatastore([request.getfixturevalue("etcd").endpoint])
    else:
        ds = KubeDatastore(request.getfixturevalue("kube").admin)
        # On Kubernetes an endpoint is its Pod's: the pods the tests wire exist first.
        ds.kube = request.getfixturevalue("kube")
    yield ds
    await ds.close()


async def test_create_then_get_returns_the_value_with_identity(store):
    created = await store.create(pool("p1", "10.1.0.0/16"))
    got = await store.get(Key("IPPool", "p1"))
    assert got.revision == created.revision
    assert got.value == created.value
    assert got.value.spec.cidr == "10.1.0.0/16"
    assert got.value.metadata.uid and got.value.metadata.creation_timestamp
    assert got.value.metadata.resource_version == got.revision


async def test_duplicate_create_fails_and_keeps_the_first(store):
    first = await store.create(pool("p1", "10.1.0.0/16"))
    with pytest.raises(AlreadyExists):
        await store.create(pool("p1", "10.2.0.0/16"))
    got = await store.get(Key("IPPool", "p1"))
    assert got.value.spec.cidr == "10.1.0.0/16" and got.revision == first.revision


async def test_get_missing_raises_not_found(store):
    with pytest.raises(NotFound):
        await store.get(Key("IPPool", "nope"))


@pytest.mark.parametrize("key", [
    Key("WorkloadEndpoint", "foo", "default"),
    Key("IPAMBlock", "foo"),
    Key("BlockAffinity", "foo"),
    Key("BlockAffinity", "node1-not-26"),
    Key("IPAMConfig", "whatever"),
], ids=str)
async def test_a_name_no_object_can_have_is_not_found(store, key):
    """`percalectl get workloadendpoint foo` asks for a name the kind's objects never have (an
    endpoint is <node>-<orchestrator>-<pod>-<endpoint>): no such key, as for any other name,
    not a traceback from the backend's translation of the name. An IPAMConfig other than
    `default` names nothing even while the one config exists."""
    if key.kind == "IPAMConfig":
        await store.create(IPAMConfig(metadata=ObjectMeta(name="default")))
    with pytest.raises(NotFound) as missing:
        await store.get(key)
    assert missing.value.key == key
    with pytest.raises(NotFound):
        await store.delete(key)


async def test_a_missing_kubernetes_policy_is_not_found_under_the_key_asked_for(kube):
    """knp.default.<name> is read from Kubernetes' own NetworkPolicy: when there is none, the
    NotFound names the NetworkPolicy asked for, not the backend's internal kind."""
    store = KubeDatastore(kube.admin)
    key = Key("NetworkPolicy", "knp.default.nope", "default")
    try:
        with pytest.raises(NotFound) as missing:
            await store.get(key)
    finally:
        await store.close()
    assert missing.value.key == key
    assert "KubernetesNetworkPolicy" not in str(missing.value)


async def test_list_returns_one_kind_in_key_order(store):
    for name, cidr in [("b", "10.2.0.0/16"), ("a", "10.1.0.0/16")]:
        await store.create(pool(name, cidr))
    await store.create(handle("k8s-pod-network.abc"))
    if isinstance(store, KubeDatastore):
        store.kube.pod("ns1", "pod-a", node="node1")
        store.kube.pod("ns2", "pod-b", node="node1")
    await store.create(endpoint("ns1", "pod-a"))
    await store.create(endpoint("ns2", "pod-b"))

    pools = await store.list("IPPool")
    assert [kv.key.name for kv in pools.items] == ["a", "b"]
    assert all(kv.value.kind == "IPPool" for kv in pools.items)
    assert [kv.key.name for kv in (await store.list("IPAMHandle")).items] == ["k8s-pod-network.abc"]
    in_ns1 = await store.list("WorkloadEndpoint", namespace="ns1")
    assert [(kv.key.namespace, kv.value.spec.pod) for kv in in_ns1.items] == [("ns1", "pod-a")]
    assert len((await store.list("WorkloadEndpoint")).items) == 2
    assert (await store.list("BGPPeer")).items == []


async def test_list_narrows_node_scoped_kinds_to_one_node(store):
    for node, cidr in [("node-1", "10.0.0.0/26"), ("node-1", "10.0.0.64/26"), ("node-10", "10.0.1.0/26")]:
        await store.create(parse({
            "apiVersion": "percale.io/v1", "kind": "BlockAffinity",
            "metadata": {"name": f"{node}-{cidr.replace('/', '-')}"},
            "spec": {"state": "confirmed", "node": node, "cidr": cidr},
        }))
    mine = await store.list("BlockAffinity", node="node-1")
    assert [kv.value.spec.cidr for kv in mine.items] == ["10.0.0.0/26", "10.0.0.64/26"]
    assert len((await store.list("BlockAffinity")).items) == 3
    with pytest.raises(ValueError):
        await store.list("IPPool", node="node-1")


async def test_update_is_compare_and_swap(store):
    created = await store.create(pool("p1", "10.1.0.0/16"))
    changed = created.value.model_copy(deep=True)
    changed.spec.nat_outgoing = True
    updated = await store.update(changed, revision=created.revision)
    assert updated.revision != created.revision
    assert (await store.get(Key("IPPool", "p1"))).value.spec.nat_outgoing is True

    stale = created.value.model_copy(deep=True)
    stale.spec.disabled = True
    with pytest.raises(Conflict) as conflict:
        await store.update(stale, revision=created.revision)
    # The conflict carries what is stored now, so the caller can retry without another read.
    assert conflict.value.current.revision == updated.revision
    assert conflict.value.current.value.spec.nat_outgoing is True
    got = await store.get(Key("IPPool", "p1"))
    assert got.value.spec.disabled is False and got.revision == updated.revision


async def test_update_without_revision_needs_an_existing_key(store):
    with pytest.raises(NotFound):
        await store.update(pool("ghost", "10.9.0.0/16"), revision=None)
    created = await store.create(pool("p1", "10.1.0.0/16"))
    changed = created.value.model_copy(deep=True)
    changed.spec.nat_outgoing = True
    assert (await store.update(changed, revision=None)).revision != created.revision


async def test_delete_with_revision_is_compare_and_swap(store):
    created = await store.create(pool("p1", "10.1.0.0/16"))
    changed = created.value.model_copy(deep=True)
    changed.spec.disabled = True
    updated = await store.update(changed, revision=created.revision)
    with pytest.raises(Conflict) as conflict:
        await store.delete(Key("IPPool", "p1"), revision=created.revision)
    assert conflict.value.current.revision == updated.revision
    assert (await store.get(Key("IPPool", "p1"))).revision == updated.revision

    gone = await store.delete(Key("IPPool", "p1"), revision=updated.revision)
    assert gone.value.spec.cidr == "10.1.0.0/16"
    with pytest.raises(NotFound):
        await store.get(Key("IPPool", "p1"))
    with pytest.raises(NotFound):
        await store.delete(Key("IPPool", "p1"))


async def _take(events, n: int, timeout: float = 5.0) -> list:
    out = []
    async def collect():
        async for event in events:
            out.append(event)
            if len(out) == n:
                return
    await asyncio.wait_for(collect(), timeout)
    return out


@pytest.mark.parametrize("deleted_values", [True, False])
async def test_watch_delivers_changes_in_order(store, deleted_values):
    # deleted_values=False is the Cache's watch: it holds the last value itself, so a backend
    # may leave it out of a DELETED event; every change still arrives.
    await store.create(pool("before", "10.9.0.0/16"))
    start = (await store.list("IPPool")).revision
    events = store.watch("IPPool", revision=start, deleted_values=deleted_values)
    a = await store.create(pool("a", "10.1.0.0/16"))
    await store.create(handle("not-a-pool"))  # another kind: not delivered
    changed = a.value.model_copy(deep=True)
    changed.spec.nat_outgoing = True
    a2 = await store.update(changed, revision=a.revision)
    await store.delete(Key("IPPool", "a"))

    got = await _take(events, 3)
    await events.aclose()
    assert [(e.type, e.key.name) for e in got] == [
        ("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert got[1].revision == a2.revision
    assert got[1].value.spec.nat_outgoing is True
    if deleted_values:
        assert got[2].value.spec.cidr == "10.1.0.0/16"
    revisions = [int(e.revision) for e in got]
    assert revisions == sorted(revisions) and len(set(revisions)) == 3


async def test_watch_narrows_node_scoped_kinds_to_one_node(store):
    start = (await store.list("BlockAffinity")).revision
    events = store.watch("BlockAffinity", revision=start, node="node-1")
    for node, cidr in [("node-10", "10.0.1.0/26"), ("node-1", "10.0.0.0/26")]:
        await store.create(parse({
            "apiVersion": "percale.io/v1", "kind": "BlockAffinity",
            "metadata": {"name": f"{node}-{cidr.replace('/', '-')}"},
            "spec": {"state": "confirmed", "node": node, "cidr": cidr},
        }))
    got = await _take(events, 1)
    await events.aclose()
    assert [e.value.spec.node for e in got] == ["node-1"]


async def test_watch_resumes_from_a_revision_without_loss(store):
    start = (await store.list("IPPool")).revision
    for i in range(3):
        await store.create(pool(f"p{i}", f"10.{i}.0.0/16"))
    first = store.watch("IPPool", revision=start)
    seen = await _take(first, 2)
    await first.aclose()

    for i in range(3, 6):
        await store.create(pool(f"p{i}", f"10.{i}.0.0/16"))
    resumed = store.watch("IPPool", revision=seen[-1].revision)
    rest = await _take(resumed, 4)
    await resumed.aclose()
    assert [e.key.name for e in seen + rest] == [f"p{i}" for i in range(6)]


async def test_watch_from_a_compacted_revision_says_so(store):
    start = (await store.list("IPPool")).revision
    for i in range(4):
        await store.create(pool(f"p{i}", f"10.{i}.0.0/16"))
    now = (await store.list("IPPool")).revision
    if isinstance(store, KubeDatastore):
        # The apiserver compacts etcd itself and serves watches from its own window of history
        # (the watch cache, which begins after the CRD was installed): revision 1 is before it.
        start = "1"
    else:
        await store.compact(now)

    with pytest.raises(RevisionCompacted):
        await _take(store.watch("IPPool", revision=start), 1)
    # Re-listing and watching from the list's revision works again.
    after = store.watch("IPPool", revision=(await store.list("IPPool")).revision)
    await store.create(pool("fresh", "10.200.0.0/16"))
    assert [e.key.name for e in await _take(after, 1)] == ["fresh"]
    await after.aclose()


async def test_concurrent_cas_writers_never_lose_an_update(store):
    key = Key("IPAMHandle", "counter")
    await store.create(handle("counter"))
    writers, times = 8, 15

    async def writer() -> int:
        return sum([await cas_worker.add_one(store, key, "10.0.0.0/26") for _ in range(times)])

    retries = await asyncio.gather(*(writer() for _ in range(writers)))
    assert (await store.get(key)).value.spec.block["10.0.0.0/26"] == writers * times
    assert sum(retries) > 0, "the writers never raced; the test proves nothing"


def test_concurrent_cas_processes_never_lose_an_update(real_datastore):
    """Processes as separate nodes would be: only the datastore is shared between processes."""
    with_store(real_datastore, lambda store: store.create(handle("counter")))
    key = Key("IPAMHandle", "counter")
    processes, times = 4, 40
    start_at = time.time() + 3  # after every spawned interpreter has started
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as workers:
        retries = workers.starmap(
            cas_worker.run, [(real_datastore, key, "10.0.0.0/26", times, start_at)] * processes
        )

    stored = with_store(real_datastore, lambda store: store.get(key))
    assert stored.value.spec.block["10.0.0.0/26"] == processes * times
    assert sum(retries) > 0, "the writers never raced; the test proves nothing"


# -- write_together: several keys in one transaction (etcd and memory; not Kubernetes) ----------

@pytest.fixture(params=["memory", "etcd"])
async def together_store(request):
    """The backends with a multi-key transaction (Kubernetes has none: see the test below)."""
    ds = MemoryDatastore() if request.param == "memory" else EtcdDatastore(
        [request.getfixturevalue("etcd").endpoint])
    yield ds
    await ds.close()


def _together(store):
    """The store's multi-key transaction, as the allocator asks for it."""
    write_together = writes_together(store)
    assert write_together is not None
    return write_together


async def test_the_kubernetes_datastore_offers_neither_multi_key_transactions_nor_changes_since(kube):
    store = KubeDatastore(kube.admin)
    try:
        assert writes_together(store) is None, "the Kubernetes datastore writes one object per request"
        assert reads_changes(store) is None, "a view on Kubernetes follows every watch event"
    finally:
        await store.close()


async def test_write_together_writes_every_key_at_one_revision(together_store):
    store = together_store
    write_together = _together(store)
    block = await store.create(handle("block-like"))
    changed = block.value.model_copy(deep=True)
    changed.spec.block = {"10.0.0.0/26": 1}
    created, updated = await write_together([
        Create(handle("k8s-pod-network.c1", {"10.0.0.0/26": 1})),
        Update(changed, block.revision),
    ])
    assert created.revision == updated.revision != block.revision
    assert created.value.metadata.uid and created.value.metadata.creation_timestamp
    got = await store.get(Key("IPAMHandle", "k8s-pod-network.c1"))
    assert got.revision == created.revision and got.value == created.value
    got = await store.get(Key("IPAMHandle", "block-like"))
    assert got.revision == updated.revision and got.value.spec.block == {"10.0.0.0/26": 1}


async def test_write_together_deletes_with_compare_and_swap(together_store):
    store = together_store
    write_together = _together(store)
    old = await store.create(handle("old", {"10.0.0.0/26": 2}))
    keep = await store.create(handle("keep"))
    gone, kept = await write_together([Delete(old.key, old.revision),
                                       Update(keep.value, keep.revision)])
    assert gone.value.spec.block == {"10.0.0.0/26": 2}  # the last value, as delete returns
    assert kept.revision != keep.revision
    with pytest.raises(NotFound):
        await store.get(old.key)


@pytest.mark.parametrize("breaks", ["stale revision", "key taken", "key missing"])
async def test_write_together_writes_nothing_when_one_compare_fails(together_store, breaks):
    """Each compare is checked, whichever of the writes it belongs to, and a failure leaves every
    key as it was and says what each holds now."""
    store = together_store
    write_together = _together(store)
    first = await store.create(handle("first", {"10.0.0.0/26": 1}))
    second = await store.create(handle("second", {"10.0.0.64/26": 1}))
    newer = second.value.model_copy(deep=True)
    newer.spec.block = {"10.0.0.64/26": 5}
    moved = await store.update(newer, revision=second.revision)  # someone else's write
    bumped = first.value.model_copy(deep=True)
    bumped.spec.block = {"10.0.0.0/26": 2}
    writes = [Update(bumped, first.revision)]
    if breaks == "stale revision":
        writes.append(Update(second.value, second.revision))
        broken = second.key
    elif breaks == "key taken":
        writes.append(Create(handle("second")))
        broken = second.key
    else:
        writes.append(Delete(Key("IPAMHandle", "ghost"), second.revision))
        broken = Key("IPAMHandle", "ghost")

    with pytest.raises(TransactionConflict) as conflict:
        await write_together(writes)
    assert conflict.value.failed == [broken]
    current = conflict.value.current
    assert set(current) == {first.key, broken}
    assert current[first.key].revision == first.revision  # it held, and still holds
    if breaks == "key missing":
        assert current[broken] is None
    else:
        assert current[broken].revision == moved.revision
        assert current[broken].value.spec.block == {"10.0.0.64/26": 5}
    # Nothing was written: the first key keeps its value and revision.
    got = await store.get(first.key)
    assert got.revision == first.revision and got.value.spec.block == {"10.0.0.0/26": 1}
    assert (await store.get(second.key)).revision == moved.revision
    with pytest.raises(NotFound):
        await store.get(Key("IPAMHandle", "ghost"))


async def test_write_together_refuses_a_key_twice(together_store):
    store = together_store
    write_together = _together(store)
    with pytest.raises(ValueError):
        await write_together([Create(handle("twice")), Create(handle("twice"))])
    with pytest.raises(NotFound):
        await store.get(Key("IPAMHandle", "twice"))


async def test_write_together_is_watched_as_one_revision(together_store):
    store = together_store
    write_together = _together(store)
    start = (await store.list("IPPool")).revision
    pools = store.watch("IPPool", revision=start)
    handles = store.watch("IPAMHandle", revision=start)
    await write_together([Create(pool("p1", "10.1.0.0/16")), Create(handle("h1"))])
    [p], [h] = await _take(pools, 1), await _take(handles, 1)
    await pools.aclose()
    await handles.aclose()
    assert (p.type, p.key.name, h.type, h.key.name) == ("ADDED", "p1", "ADDED", "h1")
    assert p.revision == h.revision


async def test_concurrent_transactions_never_lose_an_update_on_either_key(together_store):
    """Writers that each add one to two counters in one transaction, retrying lost races: both
    end at the total, so no write was lost and none was half made."""
    store = together_store
    write_together = _together(store)
    keys = [Key("IPAMHandle", "left"), Key("IPAMHandle", "right")]
    for key in keys:
        await store.create(handle(key.name))
    writers, times = 8, 10

    async def add_to_both() -> int:
        retries = 0
        while True:
            writes = []
            for key in keys:
                current = await store.get(key)
                counts = {"10.0.0.0/26": current.value.spec.block.get("10.0.0.0/26", 0) + 1}
                value = current.value.model_copy(
                    update={"spec": current.value.spec.model_copy(update={"block": counts})})
                writes.append(Update(value, current.revision))
                await asyncio.sleep(0)  # let the writers interleave, even in memory
            try:
                await write_together(writes)
                return retries
            except TransactionConflict:
                retries += 1

    async def writer() -> int:
        return sum([await add_to_both() for _ in range(times)])

    retries = await asyncio.gather(*(writer() for _ in range(writers)))
    for key in keys:
        assert (await store.get(key)).value.spec.block["10.0.0.0/26"] == writers * times
    assert sum(retries) > 0, "the writers never raced; the test proves nothing"


async def test_a_view_offers_write_together_as_its_store_does_and_reads_it_back(store):
    """CachedDatastore over the store: the same capability, and what it wrote is read back at
    once from the view, before the watch has delivered it."""
    cache = Cache(store, ["IPAMHandle", "IPPool"])
    following = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        view = CachedDatastore(store, cache)
        if writes_together(store) is None:
            assert writes_together(view) is None
            return
        write_together = writes_together(view)
        created, _ = await write_together([Create(pool("p1", "10.1.0.0/16")), Create(handle("h1"))])
        assert (await view.get(created.key)).revision == created.revision
        with pytest.raises(TransactionConflict):
            await write_together([Create(pool("p1", "10.1.0.0/16"))])
        assert [kv.key.name for kv in (await view.list("IPPool")).items] == ["p1"]
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def test_a_view_tells_of_a_deletion_with_the_value_it_held(store):
    """The view's watch goes without the deleted value (deleted_values=False): what it tells its
    listeners of a deletion is the last value it held, and the object leaves the view."""
    cache = Cache(store, ["IPPool"])
    changes = []
    cache.subscribe(changes.append)
    following = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        created = await store.create(pool("p1", "10.1.0.0/16"))
        await store.delete(created.key)

        async def deleted() -> None:
            while not any(c.new is None for c in changes):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(deleted(), 10)
        gone = next(c for c in changes if c.new is None)
        assert gone.key == created.key and gone.old.value.spec.cidr == "10.1.0.0/16"
        assert cache.get(created.key) is None
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


# -- changes_since and keys_at: what changed since a revision (etcd and memory; not Kubernetes) -

@pytest.fixture
def changes_store(together_store):
    """The backends that can say what changed since a revision: the same two as write several
    keys at once (Kubernetes can do neither)."""
    return together_store


async def test_changes_since_gives_each_changed_object_once_in_revision_order(changes_store):
    store = changes_store
    assert reads_changes(store) is store
    kept = await store.create(pool("kept", "10.1.0.0/16"))
    doomed = await store.create(pool("doomed", "10.2.0.0/16"))
    busy = await store.create(pool("busy", "10.3.0.0/16"))
    since = (await store.list("IPPool")).revision
    for cidr in ("10.4.0.0/16", "10.5.0.0/16"):  # written twice: told once, as it ends
        busy = await store.update(busy.value.model_copy(
            update={"spec": busy.value.spec.model_copy(update={"cidr": cidr})}), revision=busy.revision)
    fresh = await store.create(pool("fresh", "10.6.0.0/16"))
    await store.delete(doomed.key)
    await store.create(handle("not-a-pool"))  # another kind: counted as a write, never told

    changes = await store.changes_since("IPPool", since)
    assert [(kv.key.name, kv.revision) for kv in changes.changed] == [
        ("busy", busy.revision), ("fresh", fresh.revision)]
    assert changes.changed[0].value.spec.cidr == "10.5.0.0/16"
    assert changes.count == 3, "kept, busy and fresh: the deleted pool is not counted"
    assert changes.revision == (await store.list("IPPool")).revision
    assert changes.writes == 5
    nothing = await store.changes_since("IPPool", changes.revision)
    assert (nothing.changed, nothing.count, nothing.writes) == ([], 3, 0)

    # Which keys there were, at either revision: the deleted pool only at the first.
    assert await store.keys_at("IPPool", changes.revision) == {kept.key, busy.key, fresh.key}
    assert await store.keys_at("IPPool", since) == {kept.key, doomed.key, busy.key}


async def test_changes_since_narrows_node_scoped_kinds_to_one_node(changes_store):
    store = changes_store
    since = (await store.list("BlockAffinity")).revision
    for node, cidr in [("node-1", "10.0.0.0/26"), ("node-10", "10.0.1.0/26")]:
        await store.create(parse({
            "apiVersion": "percale.io/v1", "kind": "BlockAffinity",
            "metadata": {"name": f"{node}-{cidr.replace('/', '-')}"},
            "spec": {"state": "confirmed", "node": node, "cidr": cidr},
        }))
    changes = await store.changes_since("BlockAffinity", since, node="node-1")
    assert [kv.value.spec.node for kv in changes.changed] == ["node-1"]
    assert changes.count == 1
    keys = await store.keys_at("BlockAffinity", changes.revision, node="node-1")
    assert [key.name for key in keys] == ["node-1-10.0.0.0-26"]


async def test_a_view_of_a_busy_kind_ends_where_the_store_ends(store):
    """A kind of `poll_when_busy` changing more often in a second than `busy_events`, and than
    its objects every `poll_seconds`: a view on etcd or memory reads what changed every
    `poll_seconds` instead of taking every event (on Kubernetes it keeps the watch). Either
    way it ends holding what the store holds, tells the last value of every object, tells a
    deletion with the value it held, and takes up its watch again once the kind is quiet."""
    # Five pools: a poll reads five objects, so ten changes a second make polling pay.
    cache = Cache(store, ["IPPool"], poll_when_busy=["IPPool"], busy_events=5, poll_seconds=0.5)
    told: dict = {}
    cache.subscribe(lambda change: told.__setitem__(change.key, change))
    following = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        doomed = await store.create(pool("doomed", "10.99.0.0/16"))
        pools = [await store.create(pool(f"p{i}", f"10.{i}.0.0/16")) for i in range(4)]
        for round_ in range(6):
            for i, kv in enumerate(pools):
                spec = kv.value.spec.model_copy(update={"node_selector": f"rack == 'r{round_}'"})
                pools[i] = await store.update(kv.value.model_copy(update={"spec": spec}),
                                              revision=kv.revision)
        await store.delete(doomed.key)
        last = await store.create(pool("last", "10.98.0.0/16"))

        async def settled() -> None:
            while not (last.key in told and cache.get(doomed.key) is None
                       and all(cache.get(kv.key) and cache.get(kv.key).revision == kv.revision
                               for kv in pools)):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), 10)
        if reads_changes(store) is not None:
            assert cache.polls > 0, "25 changes at once never made the view poll"
        held = {kv.key: kv.value.spec for kv in (await store.list("IPPool")).items}
        assert {key: kv.value.spec for key, kv in cache.items("IPPool").items()} == held
        assert {key: change.new.value.spec for key, change in told.items()
                if change.new is not None} == held
        assert {spec.node_selector for spec in held.values()} == {"rack == 'r5'", "all()"}
        assert told[doomed.key].new is None and told[doomed.key].old.value.spec.cidr == "10.99.0.0/16"

        # Quiet again: the watch is back, so the next change needs no poll.
        await asyncio.wait_for(_until(lambda: not cache.polling), 10)
        polls = cache.polls
        again = await store.create(pool("again", "10.97.0.0/16"))
        await asyncio.wait_for(_until(lambda: again.key in told), 10)
        await asyncio.sleep(0.2)
        assert cache.polls == polls, "the view still polls a quiet kind"
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# -- objects that cannot be read ---------------------------------------------------------------

def unreadable_pool(name: str, cidr: str) -> dict:
    """A pool the model refuses (its nodeSelector does not parse) though the CRD's schema takes
    it (a string): what kubectl, a hand edit in etcd or an older version can leave stored."""
    return {"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, "nodeSelector": "not a selector((("}}


async def store_unchecked(store, doc: dict, *, kubectl_validate: str = "strict") -> None:
    """Store `doc` as it is, past percale's checks: memory's put_raw, etcdctl put under the
    kind's key, kubectl apply (the apiserver checks the CRD's schema only; with
    `kubectl_validate="false"` it drops the fields the schema does not declare instead)."""
    key = Key(doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace"))
    if isinstance(store, MemoryDatastore):
        store.put_raw(key, json.dumps(doc).encode())
    elif isinstance(store, EtcdDatastore):
        await asyncio.to_thread(
            subprocess.run, ["etcdctl", "--endpoints", store.client.endpoint, "put",
                             layout.path(key), json.dumps(doc)],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    else:
        await asyncio.to_thread(store.kube.kubectl, "apply", f"--validate={kubectl_validate}",
                                "-f", "-", input=json.dumps(doc))


async def repair(store, value) -> None:
    """Write `value` over an object that cannot be read, as its owner would: on Kubernetes with
    kubectl (percale's update reads the current object first, and cannot)."""
    if isinstance(store, KubeDatastore):
        await asyncio.to_thread(store.kube.kubectl, "apply", "-f", "-",
                                input=json.dumps(value.to_document()))
    else:
        await store.update(value, revision=None)


NAMED_BAD = r"IPPool\(bad\)|IPPool 'bad'"  # as etcd and memory name it | as Kubernetes does


async def test_with_defer_errors_an_object_that_cannot_be_read_fails_only_its_own_pair(store):
    """What the agent's view asks for: a list and a watch that hand an unreadable object out
    among the others, its value raising DatastoreError that names it. Without asking, a reader
    of every value (percalectl get) still hears of the broken one."""
    await store.create(pool("a", "10.1.0.0/16"))
    start = (await store.list("IPPool")).revision
    events = store.watch("IPPool", revision=start, defer_errors=True)
    await store_unchecked(store, unreadable_pool("bad", "10.9.0.0/16"))
    await store.create(pool("z", "10.26.0.0/16"))
    got = await _take(events, 2, timeout=30)
    await events.aclose()
    assert [(e.type, e.key.name) for e in got] == [("ADDED", "bad"), ("ADDED", "z")]
    with pytest.raises(DatastoreError, match=NAMED_BAD):
        got[0].value
    assert got[1].value.spec.cidr == "10.26.0.0/16"

    listed = (await store.list("IPPool", defer_errors=True)).items
    assert [kv.key.name for kv in listed] == ["a", "bad", "z"]
    with pytest.raises(DatastoreError, match=NAMED_BAD):
        listed[1].value
    assert [kv.value.spec.cidr for kv in (listed[0], listed[2])] == ["10.1.0.0/16", "10.26.0.0/16"]

    with pytest.raises(DatastoreError, match=NAMED_BAD):
        [kv.value for kv in (await store.list("IPPool")).items]
    with pytest.raises(DatastoreError, match=NAMED_BAD) as refused:
        (await store.get(Key("IPPool", "bad"))).value
    # One line, naming the field and the reason, as percalectl prints it: not pydantic's own
    # report (its input echo, the error's type and a link, over several lines).
    message = str(refused.value)
    assert "\n" not in message and "pydantic" not in message, message
    assert "spec.nodeSelector: " in message, message


async def test_a_view_follows_a_kind_past_an_object_it_cannot_read(store, caplog):
    """One stored pool the model refuses among good ones: the view holds every good one and
    keeps receiving their changes; the bad one is left out, listed in `unreadable` and logged
    once; a direct read still fails naming it; written readable, it appears. A good pool that
    becomes unreadable leaves the view as a deletion."""
    await store.create(pool("a", "10.1.0.0/16"))
    await store.create(pool("b", "10.2.0.0/16"))
    await store_unchecked(store, unreadable_pool("bad", "10.9.0.0/16"))
    bad, b = Key("IPPool", "bad"), Key("IPPool", "b")
    cache = Cache(store, ["IPPool"])
    told = []
    cache.subscribe(told.append)
    following = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_synced(), 30)
        assert sorted(key.name for key in cache.items("IPPool")) == ["a", "b"]
        assert list(cache.unreadable) == [bad]
        assert "nodeSelector" in cache.unreadable[bad].reason
        with pytest.raises(DatastoreError, match=NAMED_BAD):
            (await store.get(bad)).value

        # The good ones keep coming.
        c = await store.create(pool("c", "10.3.0.0/16"))
        a = await store.get(Key("IPPool", "a"))
        a = await store.update(pool("a", "10.1.0.0/16", natOutgoing=True), revision=a.revision)
        await asyncio.wait_for(_until(lambda: cache.get(c.key) is not None
                                      and cache.get(a.key).revision == a.revision), 30)
        assert cache.get_value("IPPool", "a").spec.nat_outgoing is True

        # Written readable: it appears, as a new object.
        await repair(store, pool("bad", "10.9.0.0/16"))
        await asyncio.wait_for(_until(lambda: cache.get(bad) is not None), 30)
        assert not cache.unreadable
        assert [change.old for change in told if change.key == bad] == [None]

        # A good pool overwritten with what cannot be read: told as deleted, with what it was.
        await store_unchecked(store, unreadable_pool("b", "10.2.0.0/16"))
        await asyncio.wait_for(_until(lambda: cache.get(b) is None), 30)
        assert told[-1].key == b and told[-1].new is None
        assert told[-1].old.value.spec.cidr == "10.2.0.0/16"
        assert list(cache.unreadable) == [b]
        assert sorted(p.metadata.name for p in cache.values("IPPool")) == ["a", "bad", "c"]

        warned = [r for r in caplog.records if r.name == "percale.datastore.cache"
                  and r.levelno == logging.WARNING and "cannot be read" in r.getMessage()]
        assert [r.getMessage().split(" (revision")[0] for r in warned] == ["IPPool(bad)", "IPPool(b)"]
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def test_fields_a_newer_version_stores_are_ignored_when_read(store):
    """A rolling upgrade: a newer percale stores a pool with fields this version has never heard
    of, at the top, in metadata and in spec. This version reads the pool as Calico's Go structs
    would, without them (a view that refused it would tell its nodes the pool was deleted), while
    a user who writes an unknown field is still refused. (On Kubernetes the apiserver drops the
    fields its CRD does not declare; test_kube_native_input covers a newer CRD that declares
    them.)"""
    newer = {"apiVersion": "percale.io/v1", "kind": "IPPool", "futureTop": {"x": 1},
             "metadata": {"name": "newer", "futureMeta": "m"},
             "spec": {"cidr": "10.7.0.0/16", "natOutgoing": True, "futureMode": "Sometimes",
                      "futureNested": {"a": [1, 2]}}}
    await store_unchecked(store, newer, kubectl_validate="false")
    got = (await store.get(Key("IPPool", "newer"))).value
    assert got.spec.cidr == "10.7.0.0/16" and got.spec.nat_outgoing is True
    assert [kv.value.metadata.name for kv in (await store.list("IPPool")).items] == ["newer"]

    cache = Cache(store, ["IPPool"])
    following = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_synced(), 30)
        assert [p.spec.cidr for p in cache.values("IPPool")] == ["10.7.0.0/16"]
        assert not cache.unreadable
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)

    with pytest.raises(ValidationError, match="futureMode"):
        IPPool.model_validate({k: v for k, v in newer.items() if k != "futureTop"})


async def test_a_view_follows_network_policies_past_a_kubernetes_policy_it_cannot_convert(kube):
    """The apiserver takes a NetworkPolicy name of up to 253 characters, but percale's
    knp.default.<name> holds at most 241: such a policy is left out of the view, which goes on
    following every other policy, percale's and Kubernetes'. Asked directly, the list and the
    get still fail, naming it."""
    store = KubeDatastore(kube.admin)
    namespace = f"unreadable-{uuid.uuid4().hex[:6]}"
    long_name = "a" * 250

    def kubernetes_policy(name: str) -> str:
        return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": {"podSelector": {}}})

    def here(cache: Cache) -> list[str]:
        """The policies the view holds in this test's namespace (it follows every namespace)."""
        return sorted(key.name for key in cache.items("NetworkPolicy") if key.namespace == namespace)

    kube.kubectl("create", "namespace", namespace)
    cache = Cache(store, ["NetworkPolicy"])
    cache.subscribe(lambda change: None)
    following = None
    try:
        for name in ("fine", long_name):
            kube.kubectl("create", "-f", "-", input=kubernetes_policy(name))
        await store.create(parse({"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
                                  "metadata": {"name": "own", "namespace": namespace},
                                  "spec": {"selector": "all()"}}))
        bad = Key("NetworkPolicy", f"knp.default.{long_name}", namespace)
        following = asyncio.create_task(cache.run())
        await asyncio.wait_for(cache.wait_synced(), 30)
        assert here(cache) == ["knp.default.fine", "own"]
        assert [key for key in cache.unreadable if key.namespace == namespace] == [bad]
        assert "at most 241 characters" in cache.unreadable[bad].reason

        # percalectl get's path, and a get: the broken policy is named.
        with pytest.raises(DatastoreError, match=long_name):
            await store.list("NetworkPolicy", namespace)
        with pytest.raises(DatastoreError, match=long_name):
            await store.get(bad)

        # Still following: a new policy arrives; the bad one deleted is no longer left out.
        await asyncio.to_thread(kube.kubectl, "create", "-f", "-", input=kubernetes_policy("later"))
        later = Key("NetworkPolicy", "knp.default.later", namespace)
        await asyncio.wait_for(_until(lambda: cache.get(later) is not None), 30)
        await asyncio.to_thread(kube.kubectl, "delete", "networkpolicy", long_name, "-n", namespace)
        await asyncio.wait_for(_until(lambda: bad not in cache.unreadable), 30)
        assert here(cache) == ["knp.default.fine", "knp.default.later", "own"]
    finally:
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        # kube.wipe() leaves Kubernetes' own policies: one this long breaks every later list.
        kube.kubectl("delete", "networkpolicies", "--all", "-n", namespace, "--wait=false")
        await store.close()


async def test_a_view_of_kubernetes_nodes_leaves_out_one_whose_percale_fields_cannot_be_read(
        kube, caplog):
    """A Node whose percale.io/ASNumber annotation someone set by hand to a word: the view
    follows every other Node, does not report the broken one again for each kubelet heartbeat
    (a status write that changes nothing percale reads), and takes it in once annotated right."""
    kube.node("good", "10.0.0.1")
    kube.node("odd", "10.0.0.2")
    kube.kubectl("annotate", "node", "odd", "percale.io/ASNumber=sixty-four")
    store = KubeDatastore(kube.admin)
    cache = Cache(store, ["Node"])
    cache.subscribe(lambda change: None)
    following = asyncio.create_task(cache.run())
    odd = Key("Node", "odd")
    try:
        await asyncio.wait_for(cache.wait_synced(), 30)
        assert list(cache.items("Node")) == [Key("Node", "good")]
        assert list(cache.unreadable) == [odd] and "ASNumber" in cache.unreadable[odd].reason

        def warnings() -> int:
            return len([r for r in caplog.records if r.name == "percale.datastore.cache"
                        and r.getMessage().startswith("Node(odd)")])

        async def heartbeat(at: str) -> None:
            status = {"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                "lastHeartbeatTime": at, "lastTransitionTime": "2030-01-01T00:00:00Z"}]}}
            await asyncio.to_thread(kube.kubectl, "patch", "node", "odd", "--subresource=status",
                                    "--type=merge", "-p", json.dumps(status))
            # One watch, in revision order: once this label is in the view, so is the heartbeat.
            await asyncio.to_thread(kube.kubectl, "label", "node", "good", f"beat={at[:4]}",
                                    "--overwrite")
            await asyncio.wait_for(_until(
                lambda: cache.get_value("Node", "good").metadata.labels.get("beat") == at[:4]), 30)

        # The watch had not seen the Node before its first heartbeat (the list had): that one
        # is a new revision to read. After it, heartbeats change nothing percale reads.
        await heartbeat("2030-01-01T00:00:00Z")
        logged = warnings()
        await heartbeat("2031-01-01T00:00:00Z")
        await heartbeat("2032-01-01T00:00:00Z")
        assert warnings() == logged and cache.get(odd) is None

        await asyncio.to_thread(kube.kubectl, "annotate", "node", "odd",
                                "percale.io/ASNumber=64512", "--overwrite")
        await asyncio.wait_for(_until(lambda: cache.get(odd) is not None), 30)
        assert cache.get_value("Node", "odd").spec.bgp.as_number == 64512
        assert not cache.unreadable
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await store.close()


async def test_an_infinite_policy_order_is_kept_or_refused_naming_the_field(store):
    """Infinity sorts last; etcd (and memory) keep it as written. A Kubernetes object is JSON,
    which has no Infinity: the write is refused naming spec.order, before the apiserver is
    asked, where it sent text that is no JSON."""
    policy = parse({"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "last", "namespace": "default"},
                    "spec": {"order": float("inf"), "selector": "all()"}})
    if isinstance(store, KubeDatastore):
        with pytest.raises(DatastoreError, match=r"spec\.order: Infinity cannot be stored"):
            await store.create(policy)
        with pytest.raises(NotFound):
            await store.get(Key.of(policy))
    else:
        await store.create(policy)
        assert (await store.get(Key.of(policy))).value.spec.order == float("inf")
