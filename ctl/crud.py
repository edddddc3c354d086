"""apply, create, replace and delete: resources from files into the datastore.

Order of work, so that bad input loses nothing: read and validate every document, read what is
stored for each, check the whole batch (existence, immutable fields, overlapping pools), and only
then write, one compare-and-swap at a time. A write that still fails (another client raced us) is
reported as calicoctl reports it: what succeeded, then the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from percale.ctl.documents import Document, InputError
from percale.datastore import Datastore, DatastoreError, Key, KVPair, NotFound
from percale.ipam.allocator import IPAM
from percale.api import IPPool, Resource
from percale.api.consistency import check_batch

Action = Literal["apply", "create", "replace", "delete"]
PAST = {"apply": "applied", "create": "created", "replace": "replaced", "delete": "deleted"}


@dataclass
class Outcome:
    action: Action
    done: list[Key] = field(default_factory=list)  # what was written, by key
    skipped: int = 0
    failed: DatastoreError | None = None
    total: int = 0


def summary(outcome: Outcome, kinds: list[str]) -> tuple[str, bool]:
    """calicoctl's closing line for a run over resources of `kinds`, and whether it succeeded."""
    verb = PAST[outcome.action]
    kind = f"'{kinds[0]}' " if len(set(kinds)) == 1 else ""
    if outcome.failed is None:
        return f"Successfully {verb} {len(outcome.done) + outcome.skipped} {kind}resource(s)", True
    if not outcome.done:
        return f"Failed to {outcome.action} any {kind}resources: {outcome.failed}", False
    return (
        f"Partial success: {verb} the first {len(outcome.done)} out of {outcome.total} "
        f"{kind}resources:\nHit error: {outcome.failed}",
        False,
    )


def _same_content(stored: Resource, new: Resource) -> bool:
    def content(r: Resource) -> dict:
        doc = r.to_document()
        meta = doc["metadata"]
        return {"metadata": {k: meta.get(k) for k in ("labels", "annotations")},
                **{k: v for k, v in doc.items() if k not in ("metadata", "status")}}

    return content(stored) == content(new)


async def _stored(store: Datastore, documents: list[Document]) -> dict[int, KVPair]:
    found = {}
    for i, doc in enumerate(documents):
        try:
            found[i] = await store.get(Key.of(doc.resource))
        except NotFound:
            pass
    return found


def managed_refusal(kind: str, action: Action) -> str:
    """Why percalectl neither writes nor deletes IPAM's own kinds: blocks, affinities and handles
    are kept consistent with each other by the allocator, and a block deleted by hand while it
    holds addresses is claimed again and gives a running pod's address to the next one."""
    if action == "delete":
        return (f"{kind} resources are maintained by percale's IPAM; they cannot be deleted with "
                "percalectl (free addresses with `percalectl ipam release`)")
    return f"{kind} resources are maintained by percale's IPAM; they cannot be written with percalectl"


async def preflight(store: Datastore, action: Action, documents: list[Document],
                    skip: bool = False) -> dict[int, KVPair]:
    """Everything that can be known before writing; raises InputError listing every problem.

    `skip` is --skip-exists for create and --skip-not-exists for delete."""
    for doc in documents:
        info = doc.resource.info
        if info.managed:
            raise InputError([f"{doc.source}: {managed_refusal(info.kind, action)}"])
    stored = await _stored(store, documents)
    problems: list[str] = []
    for i, doc in enumerate(documents):
        key = Key.of(doc.resource)
        if action == "create" and i in stored and not skip:
            problems.append(f"{doc.source}: resource already exists: {key}")
        if action in ("replace", "delete") and i not in stored and not (skip and action == "delete"):
            problems.append(f"{doc.source}: resource does not exist: {key}")
        given = doc.resource.metadata.resource_version
        if action == "create" and given:
            # As calicoctl: a revision names a stored version, and a new object has none yet.
            problems.append(f"{doc.source}: metadata.resourceVersion: must not be set when creating "
                            f"{key} (got {given!r})")
        if action in ("apply", "replace") and i in stored and given and given != stored[i].revision:
            problems.append(
                f"{doc.source}: update conflict: {key} has been modified since resourceVersion "
                f"{given} was read (now {stored[i].revision}); get it again or remove resourceVersion"
            )
    if action != "delete":
        stored_by_key = {
            (kv.value.kind, kv.value.metadata.namespace, kv.value.metadata.name): kv.value
            for kv in stored.values()
        }
        pools = [kv.value for kv in (await store.list("IPPool")).items] if any(
            isinstance(d.resource, IPPool) for d in documents) else []
        # What --skip-exists leaves alone is not written, so not checked against what it
        # would replace (a stored pool of another CIDR failed the whole batch).
        written = [d for i, d in enumerate(documents)
                   if not (action == "create" and skip and i in stored)]
        batch = [d.resource for d in written]
        sources = [d.source for d in written]
        for i, found in sorted(check_batch(batch, stored_by_key, pools, sources).items()):
            where = f"{written[i].source} ({batch[i].kind} {batch[i].metadata.name!r})"
            problems += [f"{where}: {p}" for p in found]
    if problems:
        raise InputError(problems)
    return stored


async def run(store: Datastore, action: Action, documents: list[Document],
              skip: bool = False) -> Outcome:
    stored = await preflight(store, action, documents, skip)
    outcome = Outcome(action, total=len(documents))
    for i, doc in enumerate(documents):
        resource, current = doc.resource, stored.get(i)
        try:
            if action == "delete":
                if current is None:
                    outcome.skipped += 1
                    continue
                await _delete(store, Key.of(resource), resource.metadata.resource_version)
            elif current is None:
                if action == "replace":
                    raise NotFound(Key.of(resource))
                await store.create(resource)
            elif action == "create":
                outcome.skipped += 1  # --skip-exists
                continue
            elif _same_content(current.value, resource):
                outcome.skipped += 1  # applying what is stored changes nothing, not even the revision
                continue
            else:
                meta = resource.metadata.model_copy(update={
                    "uid": current.value.metadata.uid,
                    "creation_timestamp": current.value.metadata.creation_timestamp,
                })
                await store.update(resource.model_copy(update={"metadata": meta}),
                                   revision=current.revision)
        except DatastoreError as err:
            outcome.failed = err
            return outcome
        outcome.done.append(Key.of(resource))
    return outcome


async def _delete(store: Datastore, key: Key, revision: str | None) -> KVPair:
    if key.kind == "IPPool":
        # Blocks and affinities hang off the pool: IPAM takes them down in Calico's order.
        return await IPAM(store).delete_pool(key.name, revision=revision)
    return await store.delete(key, revision=revision)


async def delete_named(store: Datastore, kind: type[Resource], names: list[str],
                       namespace: str | None, skip_not_exists: bool) -> Outcome:
    outcome = Outcome("delete", total=len(names))
    for name in names:
        key = Key(kind.info.kind, name, namespace)
        try:
            # A name the kind refuses is looked up all the same (the datastore answers NotFound
            # where no object can have it): one stored by hand or by an older version goes.
            await _delete(store, key, None)
        except NotFound as err:
            if not skip_not_exists:
                outcome.failed = err
                return outcome
            outcome.skipped += 1
            continue
        except DatastoreError as err:
            outcome.failed = err
            return outcome
        # Counted by its key: the value deleted may be one that does not read (which is why
        # it is being deleted), and decoding it now would report the deletion as a failure.
        outcome.done.append(key)
    return outcome
