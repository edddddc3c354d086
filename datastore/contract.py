"""The datastore contract: one async interface for etcd v3, Kubernetes and memory.

Every value travels with an opaque revision string. Callers compare revisions only for equality
and pass them back; they never parse them, so the same code works whether the revision is an etcd
mod_revision or a Kubernetes resourceVersion.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from percale.api import Resource
from percale.datastore.errors import DatastoreError


# Kinds whose objects belong to one node, so `list(kind, node=...)` can read just that node's.
NODE_SCOPED_KINDS = frozenset({"BlockAffinity"})


def node_of(key: "Key") -> str:
    """The node a node-scoped object belongs to, from its name alone: a BlockAffinity is named
    <node>-<block name>, and a block name holds exactly one "-" (before its prefix length)."""
    if key.kind not in NODE_SCOPED_KINDS:
        raise ValueError(f"{key.kind} is not node-scoped")
    return key.name.rsplit("-", 2)[0]


@dataclass(frozen=True, order=True)
class Key:
    """Names one stored object: its kind, its name and, for namespaced kinds, its namespace."""

    kind: str
    name: str
    namespace: str | None = None

    @classmethod
    def of(cls, resource: Resource) -> Key:
        return cls(resource.kind, resource.metadata.name, resource.metadata.namespace)

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}({where}{self.name})"


class KVPair:
    """A stored object: its key, its value and the revision it was stored at.

    A backend may hand one out before decoding it (`KVPair.later`): the value is decoded, and
    checked, when first read, once, and kept. A watch-fed view follows every block of the
    cluster; a process that reads few of them decodes few, and a corrupt value fails whoever
    reads it (DatastoreError naming the object and the revision), not the whole watch. Treat
    it as immutable, as its value: both are shared between readers."""

    __slots__ = ("key", "revision", "_value", "_decode")

    def __init__(self, key: Key, value: Resource, revision: str):
        self.key, self.revision = key, revision
        self._value: Resource | None = value
        self._decode: Callable[[], Resource] | None = None

    @classmethod
    def later(cls, key: Key, revision: str, decode: Callable[[], Resource]) -> KVPair:
        """A pair whose value `decode()` gives, called on first use. It may raise
        DatastoreError saying what is wrong with the value; reading the pair then raises one
        that names the object and the revision too (the decoder has only the bytes)."""
        pair = cls.__new__(cls)
        pair.key, pair.revision, pair._value, pair._decode = key, revision, None, decode
        return pair

    @classmethod
    def unreadable(cls, key: Key, revision: str, reason: str) -> KVPair:
        """A pair whose value cannot be read: reading it raises DatastoreError(reason). What a
        backend that decodes as it reads (Kubernetes) hands out for such an object when asked
        to `defer_errors`, as etcd and memory hand out every value (see Datastore.list)."""

        def refuse() -> Resource:
            raise DatastoreError(reason)

        return cls.later(key, revision, refuse)

    @property
    def value(self) -> Resource:
        if self._decode is not None:
            try:
                value = self._decode()
            except DatastoreError as err:
                raise DatastoreError(
                    f"{self.key} (revision {self.revision}) cannot be read: {err}") from None
            self._value, self._decode = value, None
        return self._value  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVPair):
            return NotImplemented
        return (self.key, self.revision, self.value) == (other.key, other.revision, other.value)

    # Not hashable, as the dataclass it replaced was not: its value is a mutable model.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = "<not decoded yet>" if self._decode is not None else repr(self._value)
        return f"KVPair(key={self.key!r}, value={shown}, revision={self.revision!r})"


@dataclass(frozen=True)
class ListResult:
    items: list[KVPair]
    # The store's revision when the list was taken: watch from here to miss nothing.
    revision: str


class WatchEvent:
    """One change: `value` is the new value; for DELETED, the last value before deletion (None
    when the backend no longer has it). `pair` is the same as a KVPair, decoded at most once
    between them (see KVPair)."""

    __slots__ = ("type", "key", "revision", "pair")

    def __init__(self, type: Literal["ADDED", "MODIFIED", "DELETED"], key: Key,
                 value: Resource | None, revision: str):
        self.type, self.key, self.revision = type, key, revision
        self.pair: KVPair | None = None if value is None else KVPair(key, value, revision)

    @classmethod
    def later(cls, type: Literal["ADDED", "MODIFIED", "DELETED"], key: Key, revision: str,
              decode: Callable[[], Resource] | None) -> WatchEvent:
        """An event whose value `decode()` gives on first use (None: no value)."""
        event = cls(type, key, None, revision)
        if decode is not None:
            event.pair = KVPair.later(key, revision, decode)
        return event

    @classmethod
    def of(cls, type: Literal["ADDED", "MODIFIED", "DELETED"], pair: KVPair) -> WatchEvent:
        """An event carrying a pair already in hand (decoded or not)."""
        event = cls(type, pair.key, None, pair.revision)
        event.pair = pair
        return event

    @property
    def value(self) -> Resource | None:
        return None if self.pair is None else self.pair.value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WatchEvent):
            return NotImplemented
        return ((self.type, self.key, self.revision, self.value)
                == (other.type, other.key, other.revision, other.value))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WatchEvent(type={self.type!r}, key={self.key!r}, revision={self.revision!r})"


class Datastore(Protocol):
    async def get(self, key: Key) -> KVPair:
        """The stored value and its revision. Raises NotFound."""

    async def list(
        self, kind: str, namespace: str | None = None, *, node: str | None = None,
        defer_errors: bool = False,
    ) -> ListResult:
        """Every object of a kind (in one namespace, if given), ordered by key. `node` narrows a
        node-scoped kind (BlockAffinity) to one node's objects without reading the others'.

        An object whose stored value cannot be decoded or validated (written by hand, by an
        older version, or accepted by a CRD schema that the model refuses) fails its reader:
        reading its pair's value raises DatastoreError naming it. etcd and memory decode
        values when first read, so that is always where it fails. Kubernetes decodes as it
        reads, so by default the whole list fails; `defer_errors=True` asks it to hand such an
        object out as an unreadable pair (KVPair.unreadable) among the others instead. A reader
        that can do without one object (the agent's view; `percalectl get`, which names it on
        stderr) asks for that, and leaves it out."""

    async def create(self, value: Resource) -> KVPair:
        """Store a new object; the datastore sets its uid and creationTimestamp.
        Raises AlreadyExists if the key is taken. Any revision on `value` is ignored."""

    async def update(self, value: Resource, *, revision: str | None) -> KVPair:
        """Replace an existing object. With a revision, only if the stored revision is still that
        one (compare-and-swap), else Conflict carrying the current value. With None, whatever is
        stored. Raises NotFound if the object does not exist."""

    async def delete(self, key: Key, *, revision: str | None = None) -> KVPair:
        """Delete an object and return its last value. With a revision, compare-and-swap as for
        update. Raises NotFound."""

    def watch(
        self, kind: str, *, revision: str | None = None, namespace: str | None = None,
        node: str | None = None, deleted_values: bool = True, defer_errors: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        """Changes to a kind, in revision order, strictly after `revision` (from now if None);
        `node` narrows a node-scoped kind to one node's objects, as for list. Raises
        RevisionCompacted when that history is gone, DatastoreUnavailable when the connection
        breaks: resume by watching again from the last event's revision.

        `deleted_values=False`: a watcher that keeps its own copy of every object (the Cache)
        does not need DELETED events to carry the last value, and a backend may leave it out
        (etcd then skips reading the previous revision for every event and every watcher).

        `defer_errors=True`: as for list, an object that cannot be read comes as an event
        whose value raises DatastoreError, and the watch goes on; without it, a backend that
        decodes as it reads (Kubernetes) ends the watch with that DatastoreError."""

    async def compact(self, revision: str) -> None:
        """Forget history at and before `revision`; watches from there raise RevisionCompacted."""

    async def close(self) -> None: ...


# -- an optional capability: several keys written in one transaction ---------------------------

@dataclass(frozen=True)
class Create:
    """In write_together: store a new object; its key must not exist."""

    value: Resource

    @property
    def key(self) -> Key:
        return Key.of(self.value)


@dataclass(frozen=True)
class Update:
    """In write_together: replace an object only if its stored revision is still `revision`."""

    value: Resource
    revision: str

    @property
    def key(self) -> Key:
        return Key.of(self.value)


@dataclass(frozen=True)
class Delete:
    """In write_together: delete an object only if its stored revision is still `revision`."""

    key: Key
    revision: str


Write = Create | Update | Delete
WriteTogether = Callable[[Sequence[Write]], Awaitable[list[KVPair]]]


class MultiKeyDatastore(Datastore, Protocol):
    """A datastore that can write several keys in one transaction: etcd (a Txn) and memory.
    Kubernetes cannot (one object per request), so callers keep a path without it.

    `write_together(writes)` compares every write (a Create: the key is absent; an Update or
    Delete: the stored revision is the one given), and only if all hold makes them all, at one
    revision; else it writes nothing and raises TransactionConflict carrying what every key
    holds now, read in the same transaction. It returns one KVPair per write, in order: the
    value stored (a Create's with its uid and creationTimestamp), or for a Delete the last
    value. No key may appear twice."""

    write_together: WriteTogether


@dataclass(frozen=True)
class PodAnnotations:
    """A Kubernetes Pod's annotations and its Namespace's."""

    pod: Mapping[str, str]
    namespace: Mapping[str, str]


class ReadsPodAnnotations(Protocol):
    async def __call__(self, namespace: str, pod: str) -> PodAnnotations: ...


def reads_pod_annotations(store: Datastore) -> ReadsPodAnnotations | None:
    """The store's reader of a Pod's and its Namespace's annotations (the Kubernetes datastore,
    or a view over it: CachedDatastore's `store`), or None where there are no Pods (etcd)."""
    while store is not None:
        read = getattr(store, "pod_annotations", None)
        if read is not None:
            return read  # type: ignore[no-any-return]
        store = getattr(store, "store", None)  # type: ignore[assignment]
    return None


def writes_together(store: Datastore) -> WriteTogether | None:
    """`store`'s multi-key transaction, or None when it has none. A view over another store
    (CachedDatastore) offers it exactly when the store beneath does, so ask the object in hand."""
    return getattr(store, "write_together", None)


def failed_compares(writes: Sequence[Write], current: dict[Key, KVPair | None]) -> list[Key]:
    """The keys of `writes` whose compare does not hold against `current` (what each key holds:
    None when absent)."""
    failed = []
    for write in writes:
        now = current[write.key]
        if isinstance(write, Create):
            if now is not None:
                failed.append(write.key)
        elif now is None or now.revision != write.revision:
            failed.append(write.key)
    return failed


# -- an optional capability: what changed since a revision, in one read ------------------------

@dataclass(frozen=True)
class Changes:
    """A kind as it stands at `revision`, told against an earlier revision: `changed` holds the
    current value of every object written after it (a key written ten times appears once), in
    the order of their revisions; `count` is how many objects there are, so a reader that holds
    more than it can account for knows something was deleted (keys_at says what); `writes`
    says how busy the store was meanwhile (every kind's writes)."""

    revision: str
    changed: list[KVPair]
    count: int
    writes: int


class ChangesDatastore(Datastore, Protocol):
    """A datastore that can say, in one consistent read, what changed in a kind since a revision
    (etcd: one transaction of a count and a range filtered on mod_revision; memory). A watcher
    of a kind written far more often than it has objects reads this every so often instead of
    receiving every write (the Cache's polling): the same end state for less.

    `changes_since(kind, revision, *, node=None)` -> Changes; `keys_at(kind, revision, *,
    node=None)` -> the keys of every object there was at `revision` (RevisionCompacted when that
    is forgotten). `node` narrows a node-scoped kind as for list."""

    async def changes_since(self, kind: str, revision: str, *,
                            node: str | None = None) -> Changes: ...

    async def keys_at(self, kind: str, revision: str, *,
                      node: str | None = None) -> frozenset[Key]: ...


def reads_changes(store: Datastore) -> ChangesDatastore | None:
    """`store` if it offers changes_since and keys_at, else None (Kubernetes)."""
    if hasattr(store, "changes_since") and hasattr(store, "keys_at"):
        return store  # type: ignore[return-value]
    return None
