"""The Installation's conditions, as the tigera operator computes them (kubernetes.md §B3), from
the DaemonSet's and the Deployment's own status. Pure: statuses in, conditions out.

    Degraded     the spec is invalid, or applying it failed (reason and message say which field
                 or object); nothing that runs was changed
    Progressing  a workload is rolling out: fewer pods updated than desired, some unavailable,
                 none available, or the controller has not seen the newest generation yet
    Ready        neither: every pod is updated and available

`lastTransitionTime` moves only when a condition flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from percale.api.meta import Problem
from percale.installation.model import Condition


def daemonset_progress(ds: Mapping[str, Any] | None) -> str | None:
    """Why a DaemonSet is still rolling out, or None when it is done."""
    if ds is None:
        return "DaemonSet percale-node does not exist yet"
    status = ds.get("status") or {}
    desired = status.get("desiredNumberScheduled", 0)
    if ds["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return "DaemonSet percale-node: the controller has not seen the newest spec yet"
    if status.get("updatedNumberScheduled", 0) < desired:
        return (f"DaemonSet percale-node: {status.get('updatedNumberScheduled', 0)} of {desired} "
                "pods updated")
    if status.get("numberUnavailable", 0) > 0:
        return f"DaemonSet percale-node: {status['numberUnavailable']} of {desired} pods unavailable"
    if desired and status.get("numberAvailable", 0) == 0:
        return "DaemonSet percale-node: no pod available yet"
    return None


def deployment_progress(deploy: Mapping[str, Any] | None) -> str | None:
    if deploy is None:
        return "Deployment percale-controllers does not exist yet"
    status = deploy.get("status") or {}
    wanted = deploy["spec"].get("replicas", 1)
    if deploy["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return "Deployment percale-controllers: the controller has not seen the newest spec yet"
    if status.get("updatedReplicas", 0) < wanted or status.get("availableReplicas", 0) < wanted:
        return (f"Deployment percale-controllers: {status.get('availableReplicas', 0)} of {wanted} "
                "replicas available")
    return None


def conditions(*, generation: int, problems: Sequence[Problem], failure: tuple[str, str] | None,
               daemonset: Mapping[str, Any] | None, deployment: Mapping[str, Any] | None,
               previous: Sequence[Condition], now: str) -> list[Condition]:
    """Ready, Progressing and Degraded for one reconcile. `failure`: what failed talking to the
    apiserver, as (reason, message): ResourceReadError or ResourceUpdateError."""
    if problems:
        degraded = ("InvalidConfigurationError", "; ".join(map(str, problems)))
    elif failure:
        degraded = failure
    else:
        degraded = None
    rolling = [why for why in (daemonset_progress(daemonset), deployment_progress(deployment)) if why]
    wanted = {
        "Degraded": ("True", *degraded) if degraded else ("False", "AllObjectsValid", ""),
        "Progressing": ("True", "ResourceNotReady", "; ".join(rolling)) if rolling and not degraded
        else ("False", "AllObjectsAvailable" if not rolling else "Degraded", ""),
        "Ready": ("True", "AllObjectsAvailable", "All objects are available")
        if not rolling and not degraded
        else ("False", "Degraded" if degraded else "ResourceNotReady",
              degraded[1] if degraded else "; ".join(rolling)),
    }
    before = {c.type: c for c in previous}
    out = []
    for kind in ("Ready", "Progressing", "Degraded"):
        status, reason, message = wanted[kind]
        old = before.get(kind)
        since = old.last_transition_time if old is not None and old.status == status else now
        out.append(Condition(type=kind, status=status, reason=reason, message=message,
                             last_transition_time=since, observed_generation=generation))
    return out
