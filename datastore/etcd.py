"""The datastore contract on etcd v3.

Compare-and-swap is an etcd transaction: create compares `create_revision == 0`, update and delete
compare `mod_revision` with the caller's revision, and the failure branch reads the key back so a
Conflict carries the current value without a second round trip. The revision handed out is the
key's mod_revision; a list's revision is the store's, so a watch from it misses nothing.

write_together is the same transaction over several keys: every compare in one list (etcd ANDs
them), every write in the success branch, and a read of every key in the failure branch, so a
TransactionConflict carries what each key holds now. The IPAM allocator writes a handle and its
block this way: one round trip and one raft entry instead of two, and no moment at which one is
written without the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import assert_never

from aetcd import rpc

from percale.datastore import layout
from percale.datastore.contract import (
    Changes, Create, Delete, Key, KVPair, ListResult, Update, WatchEvent, Write, failed_compares,
)
from percale.datastore.codec import decode, encode, stamped_for_create, with_revision
from percale.datastore.errors import AlreadyExists, Conflict, NotFound, TransactionConflict
from percale.datastore.etcd_client import EtcdClient, TLSFiles, prefix_end
from percale.api import Resource

_EQUAL = rpc.Compare.CompareResult.Value("EQUAL")
_GREATER = rpc.Compare.CompareResult.Value("GREATER")
_CREATE = rpc.Compare.CompareTarget.Value("CREATE")
_MOD = rpc.Compare.CompareTarget.Value("MOD")
_DELETE = rpc.Event.EventType.Value("DELETE")


def _compare_revision(path: bytes, revision: str | None) -> list[rpc.Compare]:
    """The key exists, and (a revision given) was last written at `revision`. Both: etcd sees a
    missing key's mod_revision as 0, so revision "0" alone let an update create the key. A
    revision that is no etcd revision (not a positive number) matches nothing, as memory's."""
    exists = rpc.Compare(key=path, target=_CREATE, result=_GREATER, create_revision=0)
    if revision is None:
        return [exists]
    number = int(revision) if revision.isascii() and revision.isdigit() else 0
    # mod_revision 0 holds for no key that exists: a stale or foreign revision is a conflict.
    return [exists, rpc.Compare(key=path, target=_MOD, result=_EQUAL, mod_revision=number)]


def _fresh_at(stamped: Resource, revision: str) -> Resource:
    """A created value, as stored at `revision`. `stamped` is stamped_for_create's copy, which
    no one else holds yet, so the revision goes in place: with_revision's two more copies of a
    full block showed in every allocation."""
    stamped.metadata.resource_version = revision
    return stamped


def _read(path: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=path))


class EtcdDatastore:
    def __init__(
        self,
        endpoints: Sequence[str] = ("http://127.0.0.1:2379",),
        *,
        tls: TLSFiles | None = None,
        timeout: float = 5.0,
    ):
        self.client = EtcdClient(endpoints, tls=tls, timeout=timeout)

    @staticmethod
    def _pair(key: Key, kv: rpc.KeyValue) -> KVPair:
        rev = str(kv.mod_revision)
        return KVPair.later(key, rev, partial(decode, key.kind, kv.value, rev))

    def _current(self, key: Key, response: rpc.TxnResponse) -> KVPair:
        kvs = response.responses[0].response_range.kvs
        if not kvs:
            raise NotFound(key)
        return self._pair(key, kvs[0])

    async def get(self, key: Key) -> KVPair:
        path = layout.stored_path(key)
        if path is None:
            raise NotFound(key)
        response = await self.client.range(path.encode())
        if not response.kvs:
            raise NotFound(key)
        return self._pair(key, response.kvs[0])

    async def list(
        self, kind: str, namespace: str | None = None, *, node: str | None = None,
        defer_errors: bool = False,
    ) -> ListResult:
        # defer_errors is moot: every value is decoded when first read (KVPair.later), so one
        # that cannot be fails its reader, never the list.
        prefix = layout.prefix(kind, namespace, node=node)
        response = await self.client.range(prefix.encode(), prefix=True)
        items = [self._pair(layout.key(kind, kv.key.decode()), kv) for kv in response.kvs]
        return ListResult(items, str(response.header.revision))

    async def create(self, value: Resource) -> KVPair:
        key = Key.of(value)
        path = layout.path(key).encode()
        stored = stamped_for_create(value)
        data = encode(stored)
        response = await self.client.txn(
            [rpc.Compare(key=path, target=_CREATE, result=_EQUAL, create_revision=0)],
            [rpc.RequestOp(request_put=rpc.PutRequest(key=path, value=data))],
            [],
        )
        if not response.succeeded:
            raise AlreadyExists(key)
        rev = str(response.header.revision)
        return KVPair(key, _fresh_at(stored, rev), rev)

    async def update(self, value: Resource, *, revision: str | None) -> KVPair:
        key = Key.of(value)
        path = layout.path(key).encode()
        data = encode(value)
        response = await self.client.txn(
            _compare_revision(path, revision),
            [rpc.RequestOp(request_put=rpc.PutRequest(key=path, value=data))],
            [_read(path)],
        )
        if not response.succeeded:
            raise Conflict(key, self._current(key, response))
        rev = str(response.header.revision)
        return KVPair(key, with_revision(value, rev), rev)

    async def delete(self, key: Key, *, revision: str | None = None) -> KVPair:
        stored = layout.stored_path(key)
        if stored is None:
            raise NotFound(key)
        path = stored.encode()
        response = await self.client.txn(
            _compare_revision(path, revision),
            [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=path, prev_kv=True))],
            [_read(path)],
        )
        if not response.succeeded:
            raise Conflict(key, self._current(key, response))
        return self._pair(key, response.responses[0].response_delete_range.prev_kvs[0])

    async def write_together(self, writes: Sequence[Write]) -> list[KVPair]:
        """Every write or none, in one etcd transaction (contract.MultiKeyDatastore)."""
        keys = [w.key for w in writes]
        if len(set(keys)) != len(keys):
            raise ValueError("write_together: a key appears twice")
        paths = [layout.path(key).encode() for key in keys]
        compare, success = [], []
        stored: list[Resource | None] = []  # what each write puts; None: a delete
        for write, path in zip(writes, paths, strict=True):
            if isinstance(write, Create):
                value: Resource | None = stamped_for_create(write.value)
                compare.append(
                    rpc.Compare(key=path, target=_CREATE, result=_EQUAL, create_revision=0))
            elif isinstance(write, Update):
                value = write.value
                compare += _compare_revision(path, write.revision)
            elif isinstance(write, Delete):
                value = None
                compare += _compare_revision(path, write.revision)
            else:
                assert_never(write)
            success.append(
                rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=path, prev_kv=True))
                if value is None else
                rpc.RequestOp(request_put=rpc.PutRequest(key=path, value=encode(value))))
            stored.append(value)
        response = await self.client.txn(compare, success, [_read(p) for p in paths])
        if not response.succeeded:
            current: dict[Key, KVPair | None] = {}
            for key, answer in zip(keys, response.responses, strict=True):
                kvs = answer.response_range.kvs
                current[key] = self._pair(key, kvs[0]) if kvs else None
            raise TransactionConflict(failed_compares(writes, current), current)
        rev = str(response.header.revision)
        done = []
        for write, key, value, answer in zip(writes, keys, stored, response.responses,
                                             strict=True):
            if value is None:
                done.append(self._pair(key, answer.response_delete_range.prev_kvs[0]))
            else:
                at = _fresh_at(value, rev) if isinstance(write, Create) else with_revision(value, rev)
                done.append(KVPair(key, at, rev))
        return done

    async def changes_since(self, kind: str, revision: str, *,
                            node: str | None = None) -> Changes:
        """What changed in `kind` after `revision` (contract.ChangesDatastore): one transaction,
        so the count and the range read the same revision. etcd reads every value under the
        prefix to filter on mod_revision (about 7 us per 13 kB block), so a poller must keep
        its reads fewer than the events they replace (Cache._poll_while_busy)."""
        prefix = layout.prefix(kind, None, node=node).encode()
        end = prefix_end(prefix)
        response = await self.client.txn([], [
            rpc.RequestOp(request_range=rpc.RangeRequest(key=prefix, range_end=end,
                                                         count_only=True)),
            rpc.RequestOp(request_range=rpc.RangeRequest(key=prefix, range_end=end,
                                                         min_mod_revision=int(revision) + 1)),
        ], [])
        counted, changed = (answer.response_range for answer in response.responses)
        in_order = sorted(changed.kvs, key=lambda kv: kv.mod_revision)
        return Changes(
            str(response.header.revision),
            [self._pair(layout.key(kind, kv.key.decode()), kv) for kv in in_order],
            counted.count,
            response.header.revision - int(revision),
        )

    async def keys_at(self, kind: str, revision: str, *,
                      node: str | None = None) -> frozenset[Key]:
        """The keys of every object of `kind` at `revision` (contract.ChangesDatastore)."""
        prefix = layout.prefix(kind, None, node=node).encode()
        request = rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), keys_only=True,
                                   revision=int(revision))
        response = await self.client.read(request)  # RevisionCompacted when etcd forgot it
        return frozenset(layout.key(kind, kv.key.decode()) for kv in response.kvs)

    async def watch(
        self, kind: str, *, revision: str | None = None, namespace: str | None = None,
        node: str | None = None, deleted_values: bool = True, defer_errors: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        # defer_errors is moot, as for list.
        prefix = layout.prefix(kind, namespace, node=node).encode()
        if revision is None:
            revision = str((await self.client.range(prefix)).header.revision)
        async for response in self.client.watch(prefix, after=int(revision),
                                                 previous=deleted_values):
            for event in response.events:
                key = layout.key(kind, event.kv.key.decode())
                rev = str(event.kv.mod_revision)
                # Decoded when read (KVPair.later): a view whose listeners read no values (IPAM's
                # bookkeeping) decodes nothing; one whose listeners do reads each once.
                if event.type == _DELETE:
                    prev = event.prev_kv.value if event.HasField("prev_kv") else None
                    yield WatchEvent.later("DELETED", key, rev,
                                           partial(decode, kind, prev, rev) if prev else None)
                else:
                    created = event.kv.create_revision == event.kv.mod_revision
                    yield WatchEvent.later("ADDED" if created else "MODIFIED", key, rev,
                                           partial(decode, kind, event.kv.value, rev))

    async def compact(self, revision: str) -> None:
        await self.client.compact(int(revision))

    async def compact_history(self, keep_revisions: int = 10_000) -> None:
        """Compact all but the newest `keep_revisions` revisions, so a long-lived cluster's etcd
        stays small and fast (etcd slows several-fold with an uncompacted history)."""
        current = (await self.client.range(b"/percale/")).header.revision
        if current > keep_revisions:
            await self.compact(str(current - keep_revisions))

    async def close(self) -> None:
        await self.client.close()

