"""The datastore's exceptions, one tree for every backend.

    DatastoreError
     ├── AlreadyExists        create: the key is taken                      -> fix the input
     ├── NotFound             get/update/delete: no such key                -> fix the input
     │    └── NotInstalled    list/watch: the datastore has no such kind    -> install its CRD
     │                        (Kubernetes: its CustomResourceDefinition)       (a view waits)
     ├── Conflict             update/delete: the revision is stale; carries -> re-read, retry
     │                        the current value
     ├── TransactionConflict  write_together: a compare failed, nothing    -> retry with what
     │                        was written; carries what every key holds      it carries
     ├── RevisionCompacted    watch: history before the revision is gone    -> list again, re-watch
     └── DatastoreUnavailable the backend cannot be reached                 -> retry with backoff

Callers retry only `Conflict` and `TransactionConflict` (at once) and `DatastoreUnavailable` (with
backoff); everything else is a verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from percale.datastore.contract import Key, KVPair


class DatastoreError(Exception):
    """Base of every datastore failure."""


class AlreadyExists(DatastoreError):
    def __init__(self, key: Key):
        self.key = key
        super().__init__(f"resource already exists: {key}")


class NotFound(DatastoreError):
    def __init__(self, key: Key):
        self.key = key
        super().__init__(f"resource does not exist: {key}")


class NotInstalled(NotFound):
    """The datastore holds no kind of that name at all: on Kubernetes, its CustomResourceDefinition
    is not installed (a percale newer than the cluster's CRDs, half-way through an upgrade)."""

    def __init__(self, kind: str, detail: str = ""):
        from percale.datastore.contract import Key

        self.kind = kind
        DatastoreError.__init__(
            self, f"the datastore has no {kind} at all: its CustomResourceDefinition is not"
                  f" installed{f' ({detail})' if detail else ''}")
        self.key = Key(kind, "")


class Conflict(DatastoreError):
    """A compare-and-swap lost: someone else wrote first. `current` is what is stored now."""

    def __init__(self, key: Key, current: KVPair):
        self.key, self.current = key, current
        super().__init__(
            f"update conflict: {key} has been modified (current revision {current.revision})"
        )


class TransactionConflict(DatastoreError):
    """A multi-key write (write_together) lost: some key was not as the caller said (taken,
    missing, or at another revision), so nothing was written. `current` maps every key of the
    transaction to what is stored now (None: absent), read in the same transaction; `failed`
    names the keys whose compare failed."""

    def __init__(self, failed: list[Key], current: dict[Key, KVPair | None]):
        self.failed, self.current = failed, current
        super().__init__(
            f"transaction conflict: {', '.join(map(str, failed))} "
            f"{'has' if len(failed) == 1 else 'have'} been modified; nothing was written"
        )


class RevisionCompacted(DatastoreError):
    def __init__(self, requested: str, oldest: str):
        self.requested, self.oldest = requested, oldest
        super().__init__(
            f"revision {requested} has been compacted (the oldest kept is {oldest}); "
            "list again and watch from the list's revision"
        )


class DatastoreUnavailable(DatastoreError):
    """The backend did not answer; the operation may be retried after a pause."""
