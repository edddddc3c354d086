"""The agent's view of the datastore: each kind listed once, then kept current by its watch
(Calico's watchersyncer), with a Datastore over it that reads from memory.

    cache = Cache(store, AGENT_KINDS, node="node1")   # BlockAffinity: only node1's
    cache.subscribe(on_change)       # every change, in revision order per kind, as it lands
    task = asyncio.create_task(cache.run())
    await cache.wait_synced()        # every kind listed once
    cache.items("Node"), cache.get(key)
    ipam = IPAM(CachedDatastore(store, cache))   # reads from the view, writes to the store

Who uses it: percale-node's parts (BGP, IPAM, status) read the view and react to the changes
they are told of, so a block claimed on another node costs this node one event and no reads.

How it keeps up. A watch resumes from the revision of the last event it delivered, so nothing is
lost or repeated across a broken connection; it is retried with a back-off bounded at
`max_retry_delay` (an agent must be current again within a second of etcd's return). When the
history it needs is compacted (RevisionCompacted), the kind is listed again and the difference
with the view is delivered as changes: what vanished as deletions, what changed as updates.
A kind too busy to take event by event (IPAMBlock while pods start everywhere; only the kinds
in `poll_when_busy`) is read every `poll_seconds` instead, when the store can say what changed
since a revision (etcd, memory), until the store calms down (_busy_limit, _poll_while_busy).
A kind the datastore does not have at all (NotInstalled: on Kubernetes its CRD is missing, as
when a node is upgraded before the cluster's CRDs) is followed as empty and looked for again
every `not_installed_seconds`, as Calico's watcher cache does: the view is in sync without it,
where it used to wait for it for ever and the agent never started.

Consistency. The view is exactly what the watches (or those reads) said, in their order: it
never runs ahead of them. A process that writes needs to read its own writes at once, though
(the IPAM claims a block, then confirms the affinity it just created), so CachedDatastore keeps
each of its own writes in an overlay that reads consult first, until the watch delivers that
revision of that key. Everything read from the view may be a moment old; whoever decides on it
writes with compare-and-swap, and a Conflict carries the current value, which the overlay keeps
too. When the watch brings back a revision this process wrote, the view keeps the object it
wrote rather than decode the event's copy (Cache.known); values of others' writes are decoded
when first read.

Objects that cannot be read. One stored object of a kind whose value cannot be decoded or
validated (written by hand, by an older version, accepted by a CRD schema the model refuses, a
Kubernetes NetworkPolicy whose converted name is too long) must not blind the agent to the rest
of the kind, as it did when the whole list or watch failed and was retried for ever. The view
asks the store to `defer_errors` (contract.Datastore.list), and reads each value before it
tells a listener of it (listeners that read values: subscribe); one it cannot read is left out
of the view as if absent (Cache.unreadable says which, and why), logged once per revision, and
taken in again when a write makes it readable. `values` and `get_value`, which read, leave such
an object out too. The view reads nothing else ahead of its readers: with no listener that
reads values, `items`, `get` and CachedDatastore hand out what the store handed, and a value
nobody has read fails its first reader (DatastoreError naming it), as the store's own pair would.

Values are shared between readers: never mutate what the view hands out (model_copy it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType

from percale.api import Resource
from percale.datastore.contract import (
    NODE_SCOPED_KINDS, Changes, ChangesDatastore, Datastore, Delete, Key, KVPair, ListResult,
    WatchEvent, Write, WriteTogether, node_of, reads_changes, writes_together,
)
from percale.datastore.errors import (
    AlreadyExists, Conflict, DatastoreError, NotFound, NotInstalled, RevisionCompacted,
    TransactionConflict,
)

log = logging.getLogger("percale.datastore.cache")

# What percale-node keeps: everything its BGP side, IPAM and status read more than once. Not
# handles, endpoints or NodeStatus: the agent reads those only for the object at hand.
AGENT_KINDS = ("Node", "BGPPeer", "BGPConfiguration", "BGPFilter", "IPPool", "IPAMConfig",
               "IPReservation", "BlockAffinity", "IPAMBlock")

# A kind whose watch brings more than BUSY_EVENTS changes within a second, and more than a read
# of all its objects every POLL_SECONDS would, is followed by such reads instead while the store
# stays that busy (Cache._busy_limit, Cache._poll_while_busy).
# Only kinds whose readers need where each object ends up, not every step on the way: a block's
# owner and borrowed addresses make routes. Not endpoints: the policy agent matches the revision
# its CNI side wrote, and a pod added and deleted between two reads would never be told.
POLL_WHEN_BUSY = ("IPAMBlock",)
BUSY_EVENTS = 100
POLL_SECONDS = 0.2
# How often a kind the datastore does not have (its CRD is missing) is looked for again.
NOT_INSTALLED_SECONDS = 10.0


@dataclass(frozen=True)
class Change:
    """One object as it was and as it is: `old` None for a new object, `new` None for a deleted
    one."""

    key: Key
    old: KVPair | None
    new: KVPair | None

    @property
    def kind(self) -> str:
        return self.key.kind


Listener = Callable[[Change], None]


@dataclass(frozen=True)
class Unreadable:
    """An object the view leaves out because its stored value cannot be read: the revision it
    could not read, and why (the DatastoreError's message, naming kind, name and revision)."""

    key: Key
    revision: str
    reason: str


class Cache:
    def __init__(self, store: Datastore, kinds: Iterable[str] = AGENT_KINDS, *,
                 node: str | None = None, retry_delay: float = 0.05,
                 max_retry_delay: float = 0.5, poll_when_busy: Iterable[str] = POLL_WHEN_BUSY,
                 busy_events: int = BUSY_EVENTS, poll_seconds: float = POLL_SECONDS,
                 not_installed_seconds: float = NOT_INSTALLED_SECONDS) -> None:
        self.store = store
        self.kinds = tuple(kinds)
        self.node = node  # node-scoped kinds are followed for this node only
        self.retry_delay, self.max_retry_delay = retry_delay, max_retry_delay
        # See _poll_while_busy.
        self.poll_when_busy = frozenset(poll_when_busy)
        self.busy_events, self.poll_seconds = busy_events, poll_seconds
        self.not_installed_seconds = not_installed_seconds
        self._objects: dict[str, dict[Key, KVPair]] = {kind: {} for kind in self.kinds}
        self._revisions: dict[str, str] = {}
        self._relisted: dict[str, int] = {}  # see relisted()
        self._listed: set[str] = set()
        self._synced = asyncio.Event()
        self._listeners: list[Listener] = []
        self._reading_listeners = 0  # how many of them read the values they are told of
        self._unreadable: dict[Key, Unreadable] = {}  # see unreadable
        self._known: dict[Key, list[KVPair]] = {}  # see known()
        # Keys this process is writing through a CachedDatastore (how many writes each), and the
        # changes of them the watch brought meanwhile, told once the writes are answered.
        self._writing: dict[Key, int] = {}
        self._held: dict[Key, list[Change]] = {}
        # Counts for tests, benchmarks and /metrics.
        self.lists = 0
        self.events = 0
        self.watch_restarts = 0
        self.polls = 0  # reads of what changed in a busy kind (_poll_while_busy)
        self.polling: set[str] = set()  # the kinds followed that way now
        # kinds the datastore does not have at all (_while_not_installed)
        self.not_installed: set[str] = set()

    # -- reading ---------------------------------------------------------------------------

    def covers(self, key: Key) -> bool:
        """Whether this cache follows `key` (its kind, and for a node-scoped kind its node)."""
        if key.kind not in self._objects:
            return False
        return self.node is None or key.kind not in NODE_SCOPED_KINDS or node_of(key) == self.node

    def listed(self, kind: str) -> bool:
        """Whether `kind` has been listed, so the view answers for it."""
        return kind in self._listed

    def get(self, key: Key) -> KVPair | None:
        return self._objects[key.kind].get(key)

    def get_value(self, kind: str, name: str, namespace: str | None = None) -> Resource | None:
        """The object's value; None when the view has none, or it cannot be read (which leaves
        it out of the view)."""
        kv = self._objects[kind].get(Key(kind, name, namespace))
        return self._read(kv) if kv is not None else None

    def items(self, kind: str) -> Mapping[Key, KVPair]:
        """Every object of a kind, read-only and live (it changes as the watch delivers). Every
        value a listener that reads values was told of can be read; see the module's docstring
        for a view without one."""
        return MappingProxyType(self._objects[kind])

    def values(self, kind: str) -> list[Resource]:
        """The value of every object of a kind, less those that cannot be read (which leave the
        view)."""
        read = [self._read(kv) for kv in list(self._objects[kind].values())]
        return [value for value in read if value is not None]

    @property
    def unreadable(self) -> Mapping[Key, Unreadable]:
        """The objects of the kinds followed that the view leaves out because their stored
        value cannot be read, each with the revision and the reason; an object leaves this when
        it is deleted or written again readable. Read-only and live. (Only what was read: a
        view with no listener that reads values has not read what nobody asked for.)"""
        return MappingProxyType(self._unreadable)

    def revision(self, kind: str) -> str:
        return self._revisions.get(kind, "0")

    def relisted(self, kind: str) -> int:
        """How many times `kind`'s objects were replaced by a list's (_take_list): a kind that
        vanished from the datastore empties the view without a new revision."""
        return self._relisted.get(kind, 0)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def subscribe(self, listener: Listener, *, reads_values: bool = True) -> None:
        """Call `listener` with every change, the initial list included (as additions). It runs
        on the event loop inside the watch: it must be quick and must not block.

        The view reads a value before it tells a listener of it, and tells a value it cannot
        read as a deletion (or not at all, if the listener never heard of the object): the
        agent's parts read what they are told, so that costs them nothing. A listener that
        reads only keys and revisions says `reads_values=False`, and a view with only such
        listeners decodes nothing ahead of its readers."""
        self._listeners.append(listener)
        if reads_values:
            self._reading_listeners += 1

    # -- following -------------------------------------------------------------------------

    async def run(self) -> None:
        """List every kind, then follow each one's watch until cancelled."""
        await asyncio.gather(*(self._follow(kind) for kind in self.kinds))

    def _scope(self, kind: str) -> str | None:
        return self.node if kind in NODE_SCOPED_KINDS else None

    async def _follow(self, kind: str) -> None:
        delay = self.retry_delay
        while kind not in self._listed:
            try:
                await self._list(kind)
            except NotInstalled as err:
                await self._while_not_installed(kind, err)
            except DatastoreError as err:
                log.warning("listing %s: %s; trying again in %.2f s", kind, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
        delay = self.retry_delay
        changes = reads_changes(self.store) if kind in self.poll_when_busy else None
        while True:
            try:
                busy = False
                # A deletion's last value is the one the view holds: etcd need not send it.
                # An object that cannot be read must not end the watch (see _readable).
                watch = self.store.watch(kind, revision=self._revisions[kind],
                                         node=self._scope(kind), deleted_values=False,
                                         defer_errors=True)
                burst = _Burst(lambda: self._busy_limit(kind)) if changes is not None else None
                async with aclosing(watch) as events:
                    async for event in events:
                        self._apply(event)
                        delay = self.retry_delay
                        if burst is not None and burst.outran():
                            busy = True
                            break
                if busy:
                    assert changes is not None
                    await self._poll_while_busy(kind, changes)
                    continue
            except RevisionCompacted:
                log.info("the history of %s was compacted; listing it again", kind)
                await self._relist(kind)
                continue
            except NotInstalled:
                # A 404 may be a moment's (an apiserver restarting): a list says whether the
                # kind is gone, and _relist follows it as empty only then.
                await self._relist(kind)
                continue
            except DatastoreError as err:
                log.warning("watching %s: %s; resuming in %.2f s", kind, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
            self.watch_restarts += 1

    def _busy_limit(self, kind: str) -> float:
        """How many changes a second make `kind` worth polling: at least `busy_events`, and
        enough that a poll, which reads every object of the kind (etcd reads them all to filter
        on revision), replaces at least as many events. A big cluster's blocks, written at a
        modest rate, stay on the watch: polling them would cost etcd more than the events."""
        return max(self.busy_events, len(self._objects[kind]) / self.poll_seconds)

    async def _poll_while_busy(self, kind: str, store: ChangesDatastore) -> None:
        """Follow `kind` by reading what changed every `poll_seconds` while it stays busy (see
        _busy_limit, counting the store's writes of every kind); then the watch resumes from
        the last read.

        Why: a kind written hundreds of times a second (every allocation rewrites its block)
        costs every view one message per write, though a view needs only where each object
        ends up: which node a block belongs to, which addresses another node borrowed. A few
        reads a second give the same end state, and the same changes to listeners, less the
        revisions in between; listeners hear of a change up to `poll_seconds` later."""
        log.info("%s changes more than %d times a second: reading what changed every %.2f s "
                 "until it calms down", kind, self._busy_limit(kind), self.poll_seconds)
        polls_a_second = max(1, round(1.0 / self.poll_seconds))
        polled = writes = 0
        self.polling.add(kind)
        try:
            while True:
                await asyncio.sleep(self.poll_seconds)
                changes = await store.changes_since(kind, self._revisions[kind],
                                                    node=self._scope(kind))
                self.polls += 1
                await self._apply_changes(kind, changes, store)
                polled, writes = polled + 1, writes + changes.writes
                if polled == polls_a_second:
                    if writes <= self._busy_limit(kind):
                        log.info("%s is quiet again: following its watch", kind)
                        return
                    polled = writes = 0
        finally:
            self.polling.discard(kind)

    async def _apply_changes(self, kind: str, changes: Changes, store: ChangesDatastore) -> None:
        """A poll's answer, told as the watch would have told it, less the revisions between."""
        objects = self._objects[kind]
        # The store counts the objects the view leaves out as unreadable too.
        left_out = [key for key in self._unreadable if key.kind == kind]
        fresh = sum(1 for kv in changes.changed
                    if kv.key not in objects and kv.key not in self._unreadable)
        if changes.count != len(objects) + len(left_out) + fresh:
            # Fewer than held plus new: something was deleted. Which keys are left, at the
            # same revision (rare: blocks are deleted when emptied and released).
            present = await store.keys_at(kind, changes.revision, node=self._scope(kind))
            for key in [key for key in (*objects, *left_out) if key not in present]:
                self._apply(WatchEvent.later("DELETED", key, changes.revision, None))
        for kv in changes.changed:
            self._apply(WatchEvent.of("MODIFIED" if kv.key in objects else "ADDED", kv))
        self._revisions[kind] = changes.revision

    async def _list(self, kind: str) -> None:
        result = await self.store.list(kind, node=self._scope(kind), defer_errors=True)
        self.lists += 1
        self._revisions[kind] = result.revision
        objects = self._objects[kind]
        items = self._not_known_unreadable(kind, result.items)
        for kv in items:
            objects[kv.key] = kv
        self._listed.add(kind)
        for kv in items:
            self._tell(Change(kv.key, None, kv))
        self._mark_listed(kind)

    def _mark_listed(self, kind: str) -> None:
        self._listed.add(kind)
        if self._listed.issuperset(self.kinds):
            self._synced.set()

    async def _relist(self, kind: str) -> None:
        while True:
            try:
                result = await self.store.list(kind, node=self._scope(kind), defer_errors=True)
                break
            except NotInstalled as err:
                await self._while_not_installed(kind, err)
                return
            except DatastoreError as err:
                log.warning("listing %s again: %s", kind, err)
                await asyncio.sleep(self.max_retry_delay)
        self.lists += 1
        self._take_list(kind, result)

    async def _while_not_installed(self, kind: str, err: NotInstalled) -> None:
        """`kind` is not in the datastore at all (its CRD is missing: a node upgraded before the
        cluster's CRDs). As Calico's watcher cache does, that is a state the view can live in:
        the kind is followed as empty (what the view held of it is told as deleted), counts as
        listed, so the view is in sync and the agent works with the rest, and is listed again
        every `not_installed_seconds` until it exists. Returns once it was listed."""
        log.warning("%s; following %s as empty, looking again every %g s", err, kind,
                    self.not_installed_seconds)
        self._take_list(kind, ListResult([], self._revisions.get(kind, "0")))
        self._mark_listed(kind)
        self.not_installed.add(kind)
        try:
            while True:
                await asyncio.sleep(self.not_installed_seconds)
                try:
                    result = await self.store.list(kind, node=self._scope(kind),
                                                   defer_errors=True)
                except NotInstalled:
                    continue
                except DatastoreError as failed:
                    log.debug("listing %s: %s", kind, failed)
                    continue
                break
        finally:
            self.not_installed.discard(kind)
        log.info("%s is in the datastore now: following it", kind)
        self.lists += 1
        self._take_list(kind, result)

    def _take_list(self, kind: str, result: ListResult) -> None:
        """A fresh list of `kind` in place of what the view held: the differences told."""
        self._relisted[kind] = self._relisted.get(kind, 0) + 1
        for key in [k for k in self._known if k.kind == kind]:
            del self._known[key]
        objects = self._objects[kind]
        before = dict(objects)
        after = {kv.key: kv for kv in self._not_known_unreadable(kind, result.items)}
        objects.clear()  # in place: a view handed out by items() stays live
        objects.update(after)
        self._revisions[kind] = result.revision
        for key, old in before.items():
            if key not in after:
                self._tell(Change(key, old, None))
        for key, new in after.items():
            old = before.get(key)
            if old is None or old.revision != new.revision:
                self._tell(Change(key, old, new))

    def _apply(self, event: WatchEvent) -> None:
        self.events += 1
        objects = self._objects[event.key.kind]
        old = objects.get(event.key)
        self._revisions[event.key.kind] = event.revision
        if event.type == "DELETED":
            # Every revision this process held of the key came before, or never will.
            self._known.pop(event.key, None)
            self._unreadable.pop(event.key, None)
            if old is None:
                return
            del objects[event.key]
            self._tell(Change(event.key, old, None))
        else:
            new = self._adopt(event)
            if new is None:
                assert event.pair is not None
                new = event.pair
            left_out = self._unreadable.get(event.key)
            if left_out is not None:
                if left_out.revision == new.revision:
                    return  # brought again (a poll after a relist): still unreadable
                # A new revision: readable or not, it is read afresh (_readable).
                del self._unreadable[event.key]
            objects[event.key] = new
            self._tell(Change(event.key, old, new))

    # -- objects that cannot be read -----------------------------------------------------------

    def _readable(self, kv: KVPair) -> bool:
        """Whether `kv`'s value can be read, reading it (once: the pair keeps it). One that
        cannot be is recorded in `unreadable` and logged, once per revision.

        Why not fail the kind: one bad object (a NetworkPolicy whose converted name is too long,
        a pool edited by hand) made the list or watch fail, the view retried it for ever, and
        the agent saw none of the kind's other objects. Calico's syncer logs a key it cannot
        parse and carries on with the rest."""
        known = self._unreadable.get(kv.key)
        if known is not None and known.revision == kv.revision:
            return False
        try:
            kv.value
        except DatastoreError as err:
            self._unreadable[kv.key] = Unreadable(kv.key, kv.revision, str(err))
            log.warning("%s; the view leaves it out until it is written again", err)
            return False
        return True

    def _read(self, kv: KVPair) -> Resource | None:
        """`kv`'s value for a reader of the view; None when it cannot be read, and then the view
        no longer holds it. Nobody is told: a listener that reads values was told of it already
        (and then it was read before), or never heard of it (subscribed later)."""
        if self._readable(kv):
            return kv.value
        objects = self._objects[kv.key.kind]
        if objects.get(kv.key) is kv:
            del objects[kv.key]
        return None

    def _not_known_unreadable(self, kind: str, items: list[KVPair]) -> list[KVPair]:
        """A list's items less those the view knows it cannot read at that revision (so a
        relist does not read them again); objects left out that are gone or written since are
        forgotten, and read afresh."""
        listed = {kv.key: kv.revision for kv in items}
        for key in [key for key in self._unreadable if key.kind == kind]:
            if listed.get(key) != self._unreadable[key].revision:
                del self._unreadable[key]
        return [kv for kv in items if kv.key not in self._unreadable]

    def _as_read(self, change: Change) -> Change | None:
        """`change` as listeners that read values hear it: a new value that cannot be read is
        left out of the view, and told as the object's deletion (nothing, if they never heard
        of it).

        Why a deletion, when the view held an older, readable revision: that revision is no
        longer what is stored. Keeping it would have this node act on a state the store has
        left (a pool's old CIDR, a policy as it was) while every other reader (percalectl, a
        node starting now) finds the object broken, so nodes would disagree by their start time
        and the view would no longer be what the store holds. Calico's syncer does the same: a
        key whose value fails to convert is sent on as a delete, so that bad configuration
        cannot leave a stale entry stuck in the syncer (libcalico-go, lib/backend/syncersv1/
        updateprocessors/conflictresolvingcache.go). The object comes back, as an addition,
        with the first write that can be read."""
        key, old, new = change.key, change.old, change.new
        left_out = self._unreadable.get(key)
        if old is not None and left_out is not None and left_out.revision == old.revision:
            # Held changes told in a row (see writing): listeners never had that revision.
            old = None
        if new is not None:
            if self._readable(new):
                self._unreadable.pop(key, None)
            else:
                objects = self._objects[key.kind]
                held = objects.get(key)
                if held is not None and held.revision == new.revision:
                    del objects[key]
                new = None
        if old is None and new is None:
            return None
        if old is change.old and new is change.new:
            return change
        return Change(key, old, new)

    def known(self, kv: KVPair) -> None:
        """`kv` is a revision of a key this process holds already (it wrote it, or a conflict
        handed it back): when the watch delivers that revision, the view keeps this object, the
        same value, instead of decoding the event's copy. An agent reads back every block it
        writes, and decoding a block costs about as much as encoding it did."""
        if not self.covers(kv.key):
            return
        objects = self._objects[kv.key.kind]
        held = objects.get(kv.key)
        if held is not None and held.revision == kv.revision:
            # The watch was quicker than the write's answer: the view has this revision already,
            # still undecoded. Same value, so no change to tell anyone of.
            objects[kv.key] = kv
            return
        if len(self._known) > 1000:
            # Revisions the watch will never deliver (one it had delivered already): let them go.
            self._known.clear()
        # Several writes of one key can land before the watch delivers the first: keep each, in
        # the order written, which is the order the watch delivers them.
        self._known[kv.key] = [*self._known.get(kv.key, [])[-7:], kv]

    def _adopt(self, event: WatchEvent) -> KVPair | None:
        """The object this process holds of the event's revision, if any (see known())."""
        held = self._known.get(event.key)
        if not held:
            return None
        for i, kv in enumerate(held):
            if kv.revision == event.revision:
                # The ones before it were delivered already (or skipped): never to come.
                if i + 1 < len(held):
                    self._known[event.key] = held[i + 1:]
                else:
                    del self._known[event.key]
                return kv
        return None  # an older revision, delivered late: what this process holds is still to come

    def _tell(self, change: Change) -> None:
        if change.key in self._writing:
            self._held.setdefault(change.key, []).append(change)
            return
        if self._reading_listeners:
            told = self._as_read(change)
            if told is None:
                return
            change = told
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # one part's bug must not stop the others hearing of changes
                log.exception("a listener failed on %s", change.key)

    @contextlib.contextmanager
    def writing(self, keys: Iterable[Key]) -> Iterator[None]:
        """While this process writes `keys`, their changes wait to be told until the write is
        answered. The watch often brings a write before its answer does; told at once, every
        listener decoded the event's copy of a value this process holds decoded already (an
        agent reads back every block it writes). Told after the answer, known() has swapped in
        the writer's object of that revision. Listeners hear of the same changes in the same
        order, a round trip later at most."""
        keys = [key for key in keys if self.covers(key)]
        for key in keys:
            self._writing[key] = self._writing.get(key, 0) + 1
        try:
            yield
        finally:
            for key in keys:
                left = self._writing[key] - 1
                if left:
                    self._writing[key] = left
                    continue
                del self._writing[key]
                for change in self._held.pop(key, ()):
                    now = self._objects[key.kind].get(key)
                    if change.new is not None and now is not None and now.revision == change.new.revision:
                        change = Change(key, change.old, now)  # the writer's decoded object
                    self._tell(change)


class _Burst:
    """Counts a watch's events and says when more than `limit()` came within one second."""

    def __init__(self, limit: Callable[[], float]) -> None:
        self.limit = limit
        self._start(time.monotonic())

    def _start(self, now: float) -> None:
        self.until, self.count, self.most = now + 1.0, 0, self.limit()

    def outran(self) -> bool:
        self.count += 1
        if self.count <= self.most:
            return False
        now = time.monotonic()
        if now < self.until:
            return True
        self._start(now)
        return False


# -- the Datastore over the view ---------------------------------------------------------------

_GONE = object()  # in the overlay: deleted by this process; the watch has not said so yet
_ASK = object()  # in the overlay: unknown (a create found the key taken); read it from the store


class CachedDatastore:
    """The Datastore contract with reads served by a Cache: get and list of the kinds it follows
    come from memory (before the kind is listed, and for other kinds, from the store); writes
    go to the store, and what they return is kept in an overlay so this process reads its own
    writes at once (see the module's docstring)."""

    OVERLAY_SECONDS = 10.0  # a safety net: the watch normally clears an entry within milliseconds

    def __init__(self, store: Datastore, cache: Cache) -> None:
        self.store, self.cache = store, cache
        self._overlay: dict[Key, tuple[object, str | None, float]] = {}  # key -> (KVPair|_GONE|_ASK, revision, when)
        cache.subscribe(self._caught_up, reads_values=False)  # revisions only
        self.reads_from_store = 0  # gets and lists the view could not answer
        # (kind, namespace, node) -> (the kind's revision, the selection, sorted): see list().
        self._selections: dict[tuple[str, str | None, str | None],
                               tuple[str, dict[Key, KVPair], list[KVPair]]] = {}

    def _served(self, key: Key) -> bool:
        return self.cache.covers(key) and self.cache.listed(key.kind)

    def _caught_up(self, change: Change) -> None:
        entry = self._overlay.get(change.key)
        if entry is None:
            return
        value, revision, _ = entry
        seen = change.new.revision if change.new is not None else None
        # The view has caught up with what this process wrote (or, for a key it knew nothing
        # of, now holds the current value), or holds something written after it: a poll or a
        # list after a compaction tells only the latest value, never the write itself, and the
        # entry then hid another's newer write for OVERLAY_SECONDS. For a delete, `revision` is
        # the deleted value's: a value newer than that was written after the delete.
        if value is _ASK or (value is _GONE and change.new is None) or (
                revision is not None and seen is not None
                and ((seen == revision and value is not _GONE) or _later(seen, revision))):
            # (A _GONE entry's own revision is the value it deleted: that value arriving late
            # from the watch is no news.)
            del self._overlay[change.key]

    def _remember(self, key: Key, value: object, revision: str | None) -> None:
        if not self.cache.covers(key):
            return
        if isinstance(value, KVPair):
            self.cache.known(value)
        seen = self.cache.get(key) if self.cache.listed(key.kind) else None
        if (value is _GONE and seen is None and self.cache.listed(key.kind)) or (
                value is not _GONE and seen is not None and revision is not None
                and seen.revision == revision):
            # The view holds this already (the watch was quicker): nothing to remember, and an
            # entry the watch will never match again would linger.
            self._overlay.pop(key, None)
            return
        now = time.monotonic()
        if len(self._overlay) > 1000:  # entries the watch never matched: let them go in time
            for stale in [k for k, (_, _, when) in self._overlay.items()
                          if now - when > self.OVERLAY_SECONDS]:
                del self._overlay[stale]
        self._overlay[key] = (value, revision, now)

    def _overlaid(self, key: Key) -> object | None:
        entry = self._overlay.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[2] > self.OVERLAY_SECONDS:
            del self._overlay[key]
            return None
        return entry[0]

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: Key) -> KVPair:
        if not self._served(key):
            self.reads_from_store += 1
            return await self.store.get(key)
        found = self._overlaid(key)
        if found is _ASK:
            self.reads_from_store += 1
            try:
                kv = await self.store.get(key)
            except NotFound:
                self._remember(key, _GONE, None)
                raise
            self._remember(key, kv, kv.revision)
            return kv
        if found is _GONE:
            raise NotFound(key)
        if isinstance(found, KVPair):
            return found
        kv = self.cache.get(key)
        if kv is None:
            raise NotFound(key)
        return kv

    async def list(self, kind: str, namespace: str | None = None, *,
                   node: str | None = None, defer_errors: bool = False) -> ListResult:
        """From the view when it follows the kind (what it holds: see Cache), else from the
        store (`defer_errors` as the caller asked)."""
        scoped = kind in NODE_SCOPED_KINDS and self.cache.node is not None
        if not (kind in self.cache.kinds and self.cache.listed(kind)) or (scoped and node != self.cache.node):
            self.reads_from_store += 1
            return await self.store.list(kind, namespace, node=node, defer_errors=defer_errors)
        # Select first, then overlay and sort what is left: an allocation lists one node's
        # affinities out of every node's, and hashing or comparing every Key shows in its cost.
        narrow = node is not None and kind in NODE_SCOPED_KINDS and self.cache.node is None
        prefix = f"{node}-"

        def wanted(key: Key) -> bool:
            return ((namespace is None or key.namespace == namespace)
                    and (not narrow or (key.name.startswith(prefix) and node_of(key) == node)))

        # The selection from the view, kept while the kind stands still: an allocation lists its
        # node's affinities and the pools every time, and they seldom change.
        revision = self.cache.revision(kind)
        # A kind listed anew (its CRD removed, say) may change at the same revision.
        stamp = (revision, self.cache.relisted(kind))
        kept = self._selections.get((kind, namespace, node))
        if kept is None or kept[0] != stamp:
            if len(self._selections) > 256:
                self._selections.clear()
            selected = {key: kv for key, kv in self.cache.items(kind).items() if wanted(key)}
            kept = self._selections[(kind, namespace, node)] = (
                stamp, selected, [kv for _, kv in sorted(selected.items(), key=_by_name)])
        overlaid = [k for k in self._overlay if k.kind == kind]
        if not overlaid:
            return ListResult(list(kept[2]), revision)
        found = dict(kept[1])
        for key in overlaid:
            value = self._overlaid(key)
            if value is _ASK:
                self.reads_from_store += 1
                return await self.store.list(kind, namespace, node=node, defer_errors=defer_errors)
            if not wanted(key):
                continue
            if value is _GONE:
                found.pop(key, None)
            elif isinstance(value, KVPair):
                found[key] = value
        chosen = sorted(found.items(), key=_by_name)
        return ListResult([kv for _, kv in chosen], revision)

    # -- writes --------------------------------------------------------------------------------

    async def create(self, value: Resource) -> KVPair:
        with self.cache.writing([Key.of(value)]):
            try:
                kv = await self.store.create(value)
            except AlreadyExists as err:
                self._remember(err.key, _ASK, None)
                raise
            self._remember(kv.key, kv, kv.revision)
            return kv

    async def update(self, value: Resource, *, revision: str | None) -> KVPair:
        with self.cache.writing([Key.of(value)]):
            try:
                kv = await self.store.update(value, revision=revision)
            except Conflict as err:
                self._remember(err.key, err.current, err.current.revision)
                raise
            except NotFound as err:
                self._remember(err.key, _GONE, None)
                raise
            self._remember(kv.key, kv, kv.revision)
            return kv

    async def delete(self, key: Key, *, revision: str | None = None) -> KVPair:
        with self.cache.writing([key]):
            try:
                kv = await self.store.delete(key, revision=revision)
            except Conflict as err:
                self._remember(key, err.current, err.current.revision)
                raise
            except NotFound:
                self._remember(key, _GONE, None)
                raise
            self._remember(key, _GONE, kv.revision)
            return kv

    @property
    def write_together(self) -> WriteTogether | None:
        """The store's multi-key transaction, with its outcome kept as for single writes; None
        when the store has none."""
        return self._write_together if writes_together(self.store) is not None else None

    async def _write_together(self, writes: Sequence[Write]) -> list[KVPair]:
        write_together = writes_together(self.store)
        assert write_together is not None
        with self.cache.writing([write.key for write in writes]):
            try:
                done = await write_together(writes)
            except TransactionConflict as err:
                for key, now in err.current.items():
                    if now is None:
                        self._remember(key, _GONE, None)
                    else:
                        self._remember(key, now, now.revision)
                raise
            for write, kv in zip(writes, done, strict=True):
                if isinstance(write, Delete):
                    self._remember(write.key, _GONE, kv.revision)
                else:
                    self._remember(kv.key, kv, kv.revision)
            return done

    def watch(self, kind: str, *, revision: str | None = None, namespace: str | None = None,
              node: str | None = None, deleted_values: bool = True,
              defer_errors: bool = False) -> AsyncIterator[WatchEvent]:
        return self.store.watch(kind, revision=revision, namespace=namespace, node=node,
                                deleted_values=deleted_values, defer_errors=defer_errors)

    async def compact(self, revision: str) -> None:
        await self.store.compact(revision)

    async def close(self) -> None:
        """The store belongs to whoever made it; closing this view closes nothing."""


def _later(revision: str, than: str) -> bool:
    """Whether `revision` comes after `than`: etcd's and memory's revisions are numbers, and so
    are Kubernetes' resourceVersions in practice; anything else is never taken for later."""
    return revision.isdigit() and than.isdigit() and int(revision) > int(than)


def _by_name(item: tuple[Key, KVPair]) -> tuple[str, str]:
    """The order Keys of one kind sort in (by name, then namespace), without comparing Keys."""
    return item[0].name, item[0].namespace or ""


@asynccontextmanager
async def followed(store: Datastore, kinds: Iterable[str] = AGENT_KINDS, *,
                   node: str | None = None) -> AsyncIterator[CachedDatastore]:
    """A CachedDatastore over a Cache that follows `store` while the block runs, in sync at the
    start: for tools and benchmarks that want to read as percale-node does."""
    cache = Cache(store, kinds, node=node)
    task = asyncio.create_task(cache.run())
    try:
        await cache.wait_synced()
        yield CachedDatastore(store, cache)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
