"""The datastore contract: one async interface for etcd v3, Kubernetes and memory.

Every value travels with an opaque revision string. Callers compare revisions only for equality
and pass them back; they never parse them, so the same code works whether the revision is an etcd
mod_revision or a Kubernetes resourceVersion.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from percale.api import Resource


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


@dataclass(frozen=True)
class KVPair:
    key: Key
    value: Resource
    revision: str


@dataclass(frozen=True)
class ListResult:
    items: list[KVPair]
    # The store's revision when the list was taken: watch from here to miss nothing.
    revision: str


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    key: Key
    # The new value; for DELETED, the last value before deletion.
    value: Resource | None
    revision: str


class Datastore(Protocol):
    async def get(self, key: Key) -> KVPair:
        """The stored value and its revision. Raises NotFound."""

    async def list(
        self, kind: str, namespace: str | None = None, *, node: str | None = None
    ) -> ListResult:
        """Every object of a kind (in one namespace, if given), ordered by key. `node` narrows a
        node-scoped kind (BlockAffinity) to one node's objects without reading the others'."""

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
        node: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Changes to a kind, in revision order, strictly after `revision` (from now if None);
        `node` narrows a node-scoped kind to one node's objects, as for list. Raises
        RevisionCompacted when that history is gone, DatastoreUnavailable when the connection
        breaks: resume by watching again from the last event's revision."""

    async def compact(self, revision: str) -> None:
        """Forget history at and before `revision`; watches from there raise RevisionCompacted."""

    async def close(self) -> None: ...
