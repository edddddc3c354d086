"""apply, create, replace, delete and patch: resources from files (or a patch) into the datastore.

Order of work for apply, create and replace, so that bad input loses nothing: read and validate
every document, read what is stored for each, check the whole batch (existence, immutable
fields, overlapping new pools), and only then write, one compare-and-swap at a time. A write
that still fails (another client raced us) is reported as calicoctl reports it: what succeeded,
then the error.

delete goes on past a resource it cannot delete, as calicoctl's does: it deletes every one that
exists, then names each failure ("Failed to delete 'IPPool' resource: ...") and exits 1. A pool
goes with its blocks' affinities, and a Node with its endpoints, addresses, affinities and BGP
settings (ipam/node_removal.py), as in Calico.

patch merges a JSON merge patch (RFC 7386) into the stored document and writes the result as
replace writes a file: the same validation, the same checks, at the revision it read. `label`
writes through patch.

A NetworkPolicy named knp.default.<name> is a Kubernetes NetworkPolicy's conversion (Calico's
name for it): written only as that conversion, never as a policy of percale's own nor edited in
place, as calicoctl refuses (see kubernetes_policy_refusal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import typer

from percale.ctl.documents import Document, InputError
from percale.datastore import Datastore, DatastoreError, Key, KVPair, NotFound
from percale.ipam.allocator import IPAM
from percale.ipam.node_removal import NodeRemoval, remove_node
from percale.api import InvalidResource, IPPool, Resource, parse
from percale.api.consistency import check_batch
from percale.policy.convert import KUBERNETES_POLICY_PREFIX, SOURCE_ANNOTATION, SOURCE_KUBERNETES

Action = Literal["apply", "create", "replace", "delete", "patch"]
PAST = {"apply": "applied", "create": "created", "replace": "replaced", "delete": "deleted",
        "patch": "patched"}


@dataclass
class Outcome:
    action: Action
    done: list[Key] = field(default_factory=list)  # what was written, by key
    skipped: int = 0
    failed: DatastoreError | None = None  # the write that ended an apply, create or replace
    # Each resource a delete could not delete; the delete went on with the next one.
    failures: list[DatastoreError] = field(default_factory=list)
    total: int = 0


def summary(outcome: Outcome, kinds: list[str]) -> tuple[list[str], list[str]]:
    """calicoctl's closing lines for a run over resources of `kinds`: those for stdout, and
    those for stderr, which are there exactly when the run failed."""
    verb = PAST[outcome.action]
    kind = f"'{kinds[0]}' " if len(set(kinds)) == 1 else ""
    handled = len(outcome.done) + outcome.skipped
    if outcome.action == "delete":
        # calicoctl's delete: the count of what it handled, when any, then each failure.
        done = [f"Successfully deleted {handled} {kind}resource(s)"] if handled else []
        return done, [f"Failed to delete {kind}resource: {err}" for err in outcome.failures]
    if outcome.action == "patch":
        # calicoctl's patch: one resource, so no "(s)"; a failure is its "hit error".
        if outcome.failed is None:
            return [f"Successfully patched {handled} {kind}resource"], []
        return [], [f"Hit error: {outcome.failed}"]
    if outcome.failed is None:
        return [f"Successfully {verb} {handled} {kind}resource(s)"], []
    if not outcome.done:
        return [], [f"Failed to {outcome.action} any {kind}resources: {outcome.failed}"]
    return [], [f"Partial success: {verb} the first {len(outcome.done)} out of {outcome.total} "
                f"{kind}resources:", f"Hit error: {outcome.failed}"]


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
    return (f"{kind} resources are maintained by percale's IPAM; they cannot be written with "
            "percalectl")


def _refuse_managed(action: Action, documents: list[Document]) -> None:
    for doc in documents:
        info = doc.resource.info
        if info.managed:
            raise InputError([f"{doc.source}: {managed_refusal(info.kind, action)}"])


def kubernetes_policy_refusal(name: str) -> str:
    """Why a NetworkPolicy named knp.default.<name> is not written as given. It stands for a
    Kubernetes NetworkPolicy: written over by a policy of percale's own (a copy of `get -o yaml`
    edited), the Kubernetes policy's rules went and `get` showed it as percale's. calicoctl's
    words, then where such a policy is changed."""
    return (f"NetworkPolicy {name!r}: kubernetes network policies must be managed through the "
            "kubernetes API (kubectl on the Kubernetes datastore; on etcd, `percalectl apply` "
            "or `delete -f` of the networking.k8s.io/v1 NetworkPolicy)")


def is_kubernetes_policy_name(kind: str, name: str) -> bool:
    return kind == "NetworkPolicy" and name.startswith(KUBERNETES_POLICY_PREFIX)


def _refuse_kubernetes_policies(documents: list[Document]) -> None:
    """A knp.default.<name> policy is written only as the conversion of a Kubernetes
    NetworkPolicy: converted from one in the input (documents.load), or as `get -o yaml`
    printed one, which keeps the conversion's mark, so a backup applies back."""
    problems = [
        f"{doc.source}: {kubernetes_policy_refusal(doc.resource.metadata.name)}"
        for doc in documents
        if is_kubernetes_policy_name(doc.resource.kind, doc.resource.metadata.name)
        and doc.resource.metadata.annotations.get(SOURCE_ANNOTATION) != SOURCE_KUBERNETES
    ]
    if problems:
        raise InputError(problems)


def readable(pairs: list[KVPair], left_out: str) -> list[Resource]:
    """The values of `pairs` that can be read. One that cannot (edited by hand, or written by
    kubectl past rules its CRD does not hold) is named on stderr, saying what it is `left_out`
    of, rather than failing the command for every other object."""
    found = []
    for kv in pairs:
        try:
            found.append(kv.value)
        except DatastoreError as err:
            typer.echo(f"warning: left out of {left_out}: {err}", err=True)
    return found


async def preflight(store: Datastore, action: Action, documents: list[Document],
                    skip: bool = False) -> dict[int, KVPair]:
    """Everything that can be known before writing; raises InputError listing every problem.

    `skip` is --skip-exists for create."""
    _refuse_managed(action, documents)
    _refuse_kubernetes_policies(documents)
    stored = await _stored(store, documents)
    problems: list[str] = []
    for i, doc in enumerate(documents):
        key = Key.of(doc.resource)
        if action == "create" and i in stored and not skip:
            problems.append(f"{doc.source}: resource already exists: {key}")
        if action == "replace" and i not in stored:
            problems.append(f"{doc.source}: resource does not exist: {key}")
        given = doc.resource.metadata.resource_version
        if action == "create" and given:
            # As calicoctl: a revision names a stored version, and a new object has none yet.
            problems.append(f"{doc.source}: metadata.resourceVersion: must not be set when "
                            f"creating {key} (got {given!r})")
        if action in ("apply", "replace") and i in stored and given and given != stored[i].revision:
            problems.append(
                f"{doc.source}: update conflict: {key} has been modified since resourceVersion "
                f"{given} was read (now {stored[i].revision}); get it again or remove "
                "resourceVersion"
            )
    stored_by_key = {
        (kv.value.kind, kv.value.metadata.namespace, kv.value.metadata.name): kv.value
        for kv in stored.values()
    }
    pools: list[IPPool] = []
    if any(isinstance(d.resource, IPPool) for d in documents):
        # One stored pool that cannot be read must not stop every other pool being written:
        # it is left out of the overlap check, and said so.
        listed = await store.list("IPPool", defer_errors=True)
        pools = [p for p in readable(listed.items, "the IPPool overlap check")
                 if isinstance(p, IPPool)]
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
    """`skip` is --skip-exists for create and --skip-not-exists for delete."""
    if action == "delete":
        _refuse_managed(action, documents)
        targets = [(Key.of(d.resource), d.resource.metadata.resource_version) for d in documents]
        return await delete_each(store, targets, skip)
    stored = await preflight(store, action, documents, skip)
    outcome = Outcome(action, total=len(documents))
    for i, doc in enumerate(documents):
        resource, current = doc.resource, stored.get(i)
        try:
            if current is None:
                if action == "replace":
                    raise NotFound(Key.of(resource))
                await store.create(resource)
            elif action == "create":
                outcome.skipped += 1  # --skip-exists
                continue
            elif _same_content(current.value, resource):
                # Applying what is stored changes nothing, not even the revision.
                outcome.skipped += 1
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
    if key.kind == "Node":
        return await _delete_node(store, key.name, revision)
    return await store.delete(key, revision=revision)


async def _delete_node(store: Datastore, name: str, revision: str | None) -> KVPair:
    """A Node goes with its endpoints, addresses, affinities and BGP settings, as in Calico
    (ipam/node_removal.py): deleted alone, they leaked for good. What went is said in one line,
    also when the Node itself then could not be deleted, so a second run is no surprise."""
    removal = NodeRemoval(name)
    try:
        deleted = await remove_node(store, name, revision=revision, removal=removal)
    except Exception:
        if removal.anything_done:
            typer.echo(removal.summary())
        raise
    typer.echo(removal.summary())
    return deleted


async def delete_named(store: Datastore, kind: type[Resource], names: list[str],
                       namespace: str | None, skip_not_exists: bool) -> Outcome:
    # A name the kind refuses is looked up all the same (the datastore answers NotFound where
    # no object can have it): one stored by hand or by an older version goes.
    targets = [(Key(kind.info.kind, name, namespace), None) for name in names]
    return await delete_each(store, targets, skip_not_exists)


async def delete_each(store: Datastore, targets: list[tuple[Key, str | None]],
                      skip_not_exists: bool) -> Outcome:
    """Delete each key (at the revision given with it, if any), going on past those that
    cannot be: one missing name in a list must not leave the others standing."""
    outcome = Outcome("delete", total=len(targets))
    for key, revision in targets:
        try:
            await _delete(store, key, revision)
        except NotFound as err:
            if skip_not_exists:
                outcome.skipped += 1
            else:
                outcome.failures.append(err)
            continue
        except DatastoreError as err:
            outcome.failures.append(err)
            continue
        # Counted by its key: the value deleted may be one that does not read (which is why
        # it is being deleted), and decoding it now would report the deletion as a failure.
        outcome.done.append(key)
    return outcome


PATCH_SOURCE = "--patch"


def patch_document(text: str) -> dict[str, Any]:
    """The JSON object `--patch` gives; InputError saying why when it is none. A key given
    twice is refused, as in a file (documents.load), not read as its last value."""

    def refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in pairs:
            if key in found:
                raise ValueError(f'key "{key}" already set in map')
            found[key] = value
        return found

    try:
        changes = json.loads(text, object_pairs_hook=refuse_repeats)
    except RecursionError:
        raise InputError([f"{PATCH_SOURCE}: nested too deeply to read"]) from None
    except ValueError as err:
        raise InputError([f"{PATCH_SOURCE}: not valid JSON: {err}"]) from None
    if not isinstance(changes, dict):
        raise InputError([f"{PATCH_SOURCE}: must be a JSON object, such as "
                          '\'{"spec":{"disabled":true}}\''])
    return changes


def merge_patch(target: Any, changes: Any) -> Any:
    """RFC 7386 section 2: an object merges key by key, null removing the key; anything else,
    a list included, replaces what it patches whole."""
    if not isinstance(changes, dict):
        return changes
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


async def patch(store: Datastore, kind: type[Resource], name: str, namespace: str | None,
                changes: dict[str, Any]) -> Outcome:
    """Merge `changes` into the stored document and replace it with the result; InputError
    when the result is not valid or fails replace's checks. The revision read goes with the
    document, so a write in between is a conflict, not lost."""
    key = Key(kind.info.kind, name, namespace)
    refuse_kubernetes_policy_edit(key)
    try:
        current = await store.get(key)
    except NotFound as err:
        return Outcome("patch", failed=err, total=1)
    return await patch_stored(store, current, changes)


def refuse_kubernetes_policy_edit(key: Key, source: str = PATCH_SOURCE) -> None:
    """A conversion edited in place (patch, label) is no Kubernetes policy's any more, and the
    next apply of the Kubernetes one undoes the edit: the change belongs in that policy."""
    if is_kubernetes_policy_name(key.kind, key.name):
        raise InputError([f"{source}: {kubernetes_policy_refusal(key.name)}"])


async def patch_stored(store: Datastore, current: KVPair, changes: dict[str, Any]) -> Outcome:
    """`changes` merged into `current` and written as replace writes, at current's revision."""
    key = current.key
    patched = merge_patch(current.value.to_document(), changes)
    try:
        resource = parse(patched)
    except InvalidResource as err:
        where = f"{PATCH_SOURCE} ({key.kind} {key.name!r})"
        raise InputError([f"{where}: {problem}" for problem in err.problems]) from None
    if Key.of(resource) != key:
        raise InputError([f"{PATCH_SOURCE}: a patch cannot change the kind, name or namespace "
                          f"of {key} (it names {Key.of(resource)})"])
    outcome = await run(store, "replace", [Document(PATCH_SOURCE, resource)])
    outcome.action = "patch"
    return outcome
