"""The datastore contract in one process: for unit tests and single-process demos.

It keeps the contract's hard parts rather than skipping them: values are stored encoded (a reader
never shares an object with a writer), every write bumps one global revision, compare-and-swap
conflicts carry the current value, and watches replay a bounded history that can be compacted,
so code that forgets to handle RevisionCompacted fails here as it would on etcd.

It offers write_together as etcd does (every write at one revision, or none). With
`multi_key=False` it does not, as the Kubernetes datastore does not: tests run the allocator's
two-step path that way. It offers changes_since and keys_at as etcd does, whatever `multi_key`
says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial

from percale.datastore.contract import (
    NODE_SCOPED_KINDS, Changes, Create, Delete, Key, KVPair, ListResult, WatchEvent, Write,
    WriteTogether, failed_compares, node_of,
)
from percale.datastore.codec import decode, encode, stamped_for_create
from percale.datastore.errors import (
    AlreadyExists, Conflict, NotFound, RevisionCompacted, TransactionConflict,
)
from percale.api import Resource


@dataclass(frozen=True)
class _Stored:
    data: bytes
    mod_revision: int


@dataclass(frozen=True)
class _Change:
    type: str
    key: Key
    data: bytes
    revision: int


class MemoryDatastore:
    def __init__(self, *, history_limit: int = 100_000, multi_key: bool = True):
        self._multi_key = multi_key
        self._objects: dict[Key, _Stored] = {}
        self._revision = 1
        self._history: list[_Change] = []
        self._history_limit = history_limit
        self._compacted = 0
        self._changed = asyncio.Event()

    # -- reads ---------------------------------------------------------------------------------

    def _pair(self, key: Key, stored: _Stored) -> KVPair:
        rev = str(stored.mod_revision)
        return KVPair.later(key, rev, partial(decode, key.kind, stored.data, rev))

    async def get(self, key: Key) -> KVPair:
        stored = self._objects.get(key)
        if stored is None:
            raise NotFound(key)
        return self._pair(key, stored)

    async def list(
        self, kind: str, namespace: str | None = None, *, node: str | None = None,
        defer_errors: bool = False,
    ) -> ListResult:
        # defer_errors is moot: values are decoded when first read, as etcd's are.
        items = [
            self._pair(key, stored)
            for key, stored in sorted(self._objects.items(), key=lambda kv: _sort_key(kv[0]))
            if key.kind == kind and (namespace is None or key.namespace == namespace)
        ]
        if node is not None:
            if kind not in NODE_SCOPED_KINDS:
                raise ValueError(f"{kind} is not node-scoped")
            # By name, as etcd's key prefix and this store's watch select: no value is read, so
            # one that cannot be fails its reader, not the list.
            items = [kv for kv in items if node_of(kv.key) == node]
        return ListResult(items, str(self._revision))

    # -- writes --------------------------------------------------------------------------------

    def _write(self, type_: str, key: Key, data: bytes) -> KVPair:
        self._revision += 1
        kv = self._apply(type_, key, data)
        self._wake()
        return kv

    def _apply(self, type_: str, key: Key, data: bytes) -> KVPair:
        """One change at the current revision (a transaction applies several at one)."""
        if type_ == "DELETED":
            del self._objects[key]
        else:
            self._objects[key] = _Stored(data, self._revision)
        self._history.append(_Change(type_, key, data, self._revision))
        rev = str(self._revision)
        return KVPair.later(key, rev, partial(decode, key.kind, data, rev))

    def _wake(self) -> None:
        if len(self._history) > self._history_limit:
            drop = len(self._history) - self._history_limit
            # Never between two changes of one revision: a watch resumes after a whole revision.
            history = self._history
            while drop < len(history) and history[drop].revision == history[drop - 1].revision:
                drop += 1
            self._compacted = self._history[drop - 1].revision
            del self._history[:drop]
        # Wake every watcher; each one re-reads the history from its own position.
        self._changed.set()
        self._changed = asyncio.Event()

    def _check_revision(self, key: Key, revision: str | None) -> _Stored:
        stored = self._objects.get(key)
        if stored is None:
            raise NotFound(key)
        if revision is not None and revision != str(stored.mod_revision):
            raise Conflict(key, self._pair(key, stored))
        return stored

    async def create(self, value: Resource) -> KVPair:
        key = Key.of(value)
        if key in self._objects:
            raise AlreadyExists(key)
        return self._write("ADDED", key, encode(stamped_for_create(value)))

    async def update(self, value: Resource, *, revision: str | None) -> KVPair:
        key = Key.of(value)
        self._check_revision(key, revision)
        return self._write("MODIFIED", key, encode(value))

    async def delete(self, key: Key, *, revision: str | None = None) -> KVPair:
        stored = self._check_revision(key, revision)
        self._write("DELETED", key, stored.data)
        return self._pair(key, stored)

    def put_raw(self, key: Key, data: bytes) -> str:
        """Store `data` under `key` as it is, unchecked, and return its revision: what a hand
        edit, a bug or an older version can leave in etcd (`etcdctl put`), for tests of the
        readers that must survive it."""
        return self._write("MODIFIED" if key in self._objects else "ADDED", key, data).revision

    @property
    def write_together(self) -> WriteTogether | None:
        """contract.MultiKeyDatastore's transaction; None with multi_key=False."""
        return self._write_together if self._multi_key else None

    async def _write_together(self, writes: Sequence[Write]) -> list[KVPair]:
        keys = [w.key for w in writes]
        if len(set(keys)) != len(keys):
            raise ValueError("write_together: a key appears twice")
        current = {key: self._pair(key, self._objects[key]) if key in self._objects else None
                   for key in keys}
        failed = failed_compares(writes, current)
        if failed:
            raise TransactionConflict(failed, current)
        self._revision += 1
        done = []
        for write in writes:
            if isinstance(write, Delete):
                self._apply("DELETED", write.key, self._objects[write.key].data)
                done.append(current[write.key])
            elif isinstance(write, Create):
                data = encode(stamped_for_create(write.value))
                done.append(self._apply("ADDED", write.key, data))
            else:
                done.append(self._apply("MODIFIED", write.key, encode(write.value)))
        self._wake()
        return done

    async def compact(self, revision: str) -> None:
        rev = int(revision)
        self._history = [c for c in self._history if c.revision > rev]
        self._compacted = max(self._compacted, rev)

    async def changes_since(self, kind: str, revision: str, *,
                            node: str | None = None) -> Changes:
        """What changed in `kind` after `revision`, as etcd's changes_since says it."""
        after = int(revision)
        mine = (await self.list(kind, node=node)).items
        changed = sorted((kv for kv in mine if int(kv.revision) > after),
                         key=lambda kv: int(kv.revision))
        return Changes(str(self._revision), changed, len(mine), self._revision - after)

    async def keys_at(self, kind: str, revision: str, *,
                      node: str | None = None) -> frozenset[Key]:
        """The keys of `kind` at `revision`: today's, with the history since undone."""
        at = int(revision)
        if at < self._compacted:
            raise RevisionCompacted(revision, str(self._compacted + 1))
        keys = {kv.key for kv in (await self.list(kind, node=node)).items}
        for change in reversed(self._history):
            if change.revision <= at:
                break
            if change.key.kind != kind or (node is not None and node_of(change.key) != node):
                continue
            if change.type == "ADDED":
                keys.discard(change.key)
            elif change.type == "DELETED":
                keys.add(change.key)
        return frozenset(keys)

    # -- watch ---------------------------------------------------------------------------------

    async def watch(
        self, kind: str, *, revision: str | None = None, namespace: str | None = None,
        node: str | None = None, deleted_values: bool = True, defer_errors: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        # deleted_values is moot: the last value is at hand anyway; defer_errors too, as in list.
        if node is not None and kind not in NODE_SCOPED_KINDS:
            raise ValueError(f"{kind} is not node-scoped")
        after = self._revision if revision is None else int(revision)
        while True:
            if after < self._compacted:
                raise RevisionCompacted(str(after), str(self._compacted + 1))
            changed = self._changed
            pending = [c for c in self._history if c.revision > after]
            for change in pending:
                after = change.revision
                if change.key.kind != kind or (namespace and change.key.namespace != namespace):
                    continue
                if node is not None and node_of(change.key) != node:
                    continue
                rev = str(change.revision)
                yield WatchEvent.later(change.type, change.key, rev,  # type: ignore[arg-type]
                                       partial(decode, kind, change.data, rev))
            if not pending:
                await changed.wait()

    async def close(self) -> None:
        return None


def _sort_key(key: Key) -> tuple[str, str, str]:
    return (key.kind, key.namespace or "", key.name)
