"""What the operator does to the cluster's IP pools, as tigera's pool controller does it
(pkg/controller/ippool/pool_controller.go): the Installation's `ipPools` are the truth for the
pools the operator owns. Pure: the effective spec and the stored pools in, a plan out;
operator.py carries it out.

    ownership   a pool the operator created carries the label
                app.kubernetes.io/managed-by=percale-operator (tigera's: =tigera-operator). A pool
                without it that already equals its entry in every field is adopted (labelled),
                as tigera assumes control of a pool made before it or by calicoctl; one that
                differs is the administrator's, and the entry is refused (Degraded), since
                rewriting it would overwrite what someone else wrote.
    create      an entry with no pool of its name;
    update      the operator's pool whose spec differs from its entry (natOutgoing,
                encapsulation, nodeSelector, disableBGPExport, disableNewAllocations, and what
                the entry leaves to defaults): written whole, at the revision read;
    refused     a block size changed after install: blocks of the old size are already claimed
                and Calico refuses the change (the CIDR's change is refused in model.problems);
    retire      the operator's pool whose entry is gone. Deleting a pool whose addresses pods
                still hold would leave those pods with addresses of no pool (no route is
                exported or tunnelled for them), so it is done in Calico's migration order: the
                pool is disabled first (no new address), and deleted once no block inside it
                holds an address (`addresses_in_use`); until then the Installation says why.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from percale.api.ippool import IPPoolSpec
from percale.api.meta import Problem
from percale.installation import render
from percale.installation.model import InstallationSpec

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "percale-operator"

# IPPool spec fields by the Installation field that sets them (model.ip_pool), for messages.
_ENTRY_FIELD = {"vxlanMode": "encapsulation", "ipipMode": "encapsulation",
                "disabled": "disableNewAllocations"}


@dataclass
class PoolPlan:
    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)  # stored objects, rewritten
    retire: list[dict[str, Any]] = field(default_factory=list)  # stored objects, as read
    problems: list[Problem] = field(default_factory=list)


def owned(pool: Mapping[str, Any]) -> bool:
    return ((pool.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def _spec(pool: Mapping[str, Any]) -> dict[str, Any] | None:
    """A stored pool's spec in its normal form (defaults filled), None if it does not read."""
    try:
        return IPPoolSpec.model_validate(pool.get("spec") or {}).model_dump(by_alias=True)
    except ValidationError:
        return None


def _differences(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> list[str]:
    if stored is None:
        return ["spec"]
    return sorted({_ENTRY_FIELD.get(name, name) for name in wanted
                   if stored.get(name) != wanted[name]})


def plan(spec: InstallationSpec, stored: Sequence[Mapping[str, Any]]) -> PoolPlan:
    """What to do to the stored pools (apiserver objects) for an effective spec that
    model.problems found nothing wrong with."""
    out = PoolPlan()
    by_name = {p["metadata"]["name"]: p for p in stored}
    entries = (spec.calico_network.ip_pools if spec.calico_network else None) or []
    for i, (entry, document) in enumerate(zip(entries, render.pools(spec))):
        where = f"spec.calicoNetwork.ipPools[{i}]"
        wanted = document["spec"]
        current = by_name.get(entry.name or "")
        if current is None:
            document["metadata"]["labels"] = {MANAGED_BY_LABEL: MANAGED_BY}
            out.create.append(document)
            continue
        now = _spec(current)
        differ = _differences(now, IPPoolSpec.model_validate(wanted).model_dump(by_alias=True))
        if not owned(current):
            if differ:
                out.problems.append(Problem(where, (
                    f"Cannot update an IP pool not owned by the operator: IPPool {entry.name} "
                    f"exists and differs from this entry in {', '.join(differ)}; make the entry "
                    "match it, or delete the pool")))
            else:
                out.update.append(_rewritten(current, wanted))  # adopted: labelled
            continue
        if now is not None and now["blockSize"] != wanted["blockSize"]:
            out.problems.append(Problem(f"{where}.blockSize", (
                f"IPPool {entry.name} was installed with blockSize {now['blockSize']}; a pool's "
                "block size cannot be changed after install (add a new pool, and remove this "
                "one once its pods have moved)")))
        elif differ:
            out.update.append(_rewritten(current, wanted))
    listed = {entry.name for entry in entries}
    out.retire = [p for p in stored if owned(p) and p["metadata"]["name"] not in listed]
    return out


def _rewritten(current: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(current["metadata"])
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY}
    return {**current, "metadata": meta, "spec": dict(spec)}


def disabled(pool: Mapping[str, Any]) -> dict[str, Any]:
    """The pool with new allocations off: the first step of retiring it."""
    return {**pool, "spec": {**(pool.get("spec") or {}), "disabled": True}}


def addresses_in_use(cidr: str, blocks: Iterable[Mapping[str, Any]]) -> int:
    """How many addresses the IPAM blocks inside `cidr` hold (stored IPAMBlock objects; a block
    marked deleted holds none)."""
    try:
        pool = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return 0
    held = 0
    for block in blocks:
        spec = block.get("spec") or {}
        try:
            network = ipaddress.ip_network(spec.get("cidr", ""), strict=False)
        except ValueError:
            continue
        if (network.version == pool.version and network.subnet_of(pool)  # type: ignore[arg-type]
                and not spec.get("deleted")):
            held += sum(a is not None for a in spec.get("allocations") or [])
    return held
