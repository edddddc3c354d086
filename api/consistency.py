"""Rules that span more than one resource, checked before anything is written.

One document can be valid alone and still wrong against the rest: a new pool overlapping another
pool, or a change to a field Calico makes immutable. One rule here concerns a document alone but
holds only for what is written now: no new IPIP pool (`ipip_refused`). These checks see the whole
batch and what is stored, so a bad batch is refused whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from percale.api.ippool import IPPool
from percale.api.meta import Problem, Resource

# Fields that cannot change once an object exists, and why (shown to the user).
_IMMUTABLE = {
    "IPPool": {
        "cidr": "a pool's CIDR cannot be changed; create a new pool and migrate to it",
        "block_size": "a pool's blockSize cannot be changed; existing blocks would not be re-cut",
    },
}
_WIRE_NAMES = {"block_size": "blockSize"}


def immutable_changes(stored: Resource, new: Resource) -> list[Problem]:
    problems = []
    for field, why in _IMMUTABLE.get(new.kind, {}).items():
        before, after = getattr(stored.spec, field), getattr(new.spec, field)
        if before != after:
            name = _WIRE_NAMES.get(field, field)
            problems.append(Problem(f"spec.{name}", f"{why} (stored {before}, given {after})"))
    if isinstance(stored, IPPool) and isinstance(new, IPPool) \
            and "LoadBalancer" in stored.spec.allowed_uses \
            and any(use != "LoadBalancer" for use in new.spec.allowed_uses):
        # As Calico refuses it on update (clientv3/ippool.go validateAndSetDefaults): such a
        # pool's addresses go to Services, not pods; made a Workload pool, its blocks would go
        # to nodes and its addresses to pods while Services may still hold them.
        problems.append(Problem("spec.allowedUses", "IPPool allowed use cannot be changed from "
                                "LoadBalancer to Workload or Tunnel"))
    return problems


def overlapping_pools(new: Iterable[IPPool], stored: Iterable[IPPool]) -> dict[int, Problem]:
    """For each new pool that overlaps another pool (stored or in the same batch), the problem,
    by its position in `new` (a batch may name one pool twice, with two CIDRs).

    A pool replacing a stored pool of the same name is not compared with its old self.
    """
    new = list(new)
    replacing = {p.metadata.name for p in new}
    others = [p for p in stored if p.metadata.name not in replacing] + new
    problems: dict[int, Problem] = {}
    for position, pool in enumerate(new):
        for other in others:
            if other is pool or other.metadata.name == pool.metadata.name:
                continue
            a, b = pool.spec.network, other.spec.network
            if a.version == b.version and a.overlaps(b):
                problems[position] = Problem(
                    "spec.cidr",
                    f"{pool.spec.cidr} overlaps IPPool {other.metadata.name!r} ({other.spec.cidr})",
                )
                break
    return problems


def ipip_refused(pool: IPPool) -> Problem | None:
    """percale has no IPIP dataplane (no tunnel device, routes or MTU for it, and some kernels it
    runs on have no ipip device), so a pool written now that asks for IPIP would be carried
    unencapsulated without a word: it is refused, pointing at vxlanMode, as the operator refuses
    an Installation pool with IPIP. Checked on write, not in the model, so that a pool already
    stored with IPIP (by Calico, or an older percale) stays readable."""
    if pool.spec.ipip_mode == "Never":
        return None
    return Problem("spec.ipipMode", f"ipipMode {pool.spec.ipip_mode} is not supported: percale has "
                   "no IPIP dataplane; set ipipMode to Never and use vxlanMode (Always or "
                   "CrossSubnet) to encapsulate")


def check_batch(
    batch: list[Resource], stored: Mapping[tuple[str, str | None, str], Resource],
    stored_pools: Iterable[IPPool], sources: list[str],
) -> dict[int, list[Problem]]:
    """Problems by position in `batch`. `stored` maps (kind, namespace, name) to what is stored
    now for the objects the batch names; `stored_pools` is every stored pool; `sources`, where
    each resource of the batch was given (a file and document), for the messages."""
    problems: dict[int, list[Problem]] = {}
    for i, resource in enumerate(batch):
        key = (resource.kind, resource.metadata.namespace, resource.metadata.name)
        if key in stored:
            problems.setdefault(i, []).extend(immutable_changes(stored[key], resource))
    pools = [(i, r) for i, r in enumerate(batch) if isinstance(r, IPPool)]
    for i, pool in pools:
        if (problem := ipip_refused(pool)) is not None:
            problems.setdefault(i, []).append(problem)
    overlaps = overlapping_pools([p for _, p in pools], stored_pools)
    for position, problem in overlaps.items():
        i, pool = pools[position]
        # Only a pool not stored yet, as Calico checks overlap on create alone (clientv3/
        # ippool.go validateAndSetDefaults, `old == nil`): two stored pools that overlap
        # (written by kubectl, etcdctl or a migration) could otherwise never be disabled.
        if (pool.kind, pool.metadata.namespace, pool.metadata.name) not in stored:
            problems.setdefault(i, []).append(problem)
    seen: dict[tuple[str, str | None, str], int] = {}
    for i, resource in enumerate(batch):
        key = (resource.kind, resource.metadata.namespace, resource.metadata.name)
        if key in seen:
            problems.setdefault(i, []).append(Problem(
                "metadata.name", f"the same {resource.kind} is also given in {sources[seen[key]]}"))
        seen[key] = i
    return problems
