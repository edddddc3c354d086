"""percale-operator: the kopf shell around render() (kubernetes.md §D). Thin on purpose: every
decision is in model.py (defaults, what is refused), render.py (what runs) and status.py
(conditions); this module reads, applies and reports.

For the Installation `default`, on create, update, resume and every RESYNC seconds:
  1. fill the defaults and write them back into its spec (tigera's "poor man's defaulting");
  2. refuse an invalid spec -- overlapping pools, a block size outside its family's range, an
     encapsulation percale lacks, a pool whose CIDR or block size changed since it was
     installed, an entry for a pool the operator does not own that differs from it -- with
     Degraded naming the field, and change nothing that runs;
  3. server-side apply every rendered object (field manager percale-operator, forced, owned by
     the Installation), which also puts back a deleted DaemonSet or a hand-edited field; create,
     update and retire the IP pools it owns to match `ipPools` (pools.py);
  4. write Ready / Progressing / Degraded from the workloads' own status, and `computed` and
     `mtu` once Ready.
A DaemonSet or Deployment of percale's that is deleted is put back at once, not at the next
resync. Deleting the Installation leaves its objects to Kubernetes' garbage collector (owner
references); the pools stay, as tigera's do.

    percale-operator [KOPF RUN OPTIONS]    (kopf run -m percale.installation.operator; see main)
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import kopf
from pydantic import ValidationError

from percale.api.meta import Problem, validation_problems
from percale.datastore.errors import DatastoreError
from percale.datastore.kube_client import KubeClient, KubeError, configuration
from percale.installation import model, pools, render, status
from percale.installation.rbac import NAMESPACE

log = logging.getLogger("percale.operator")
FIELD_MANAGER = "percale-operator"
RESYNC = 5.0
STOP_POLL = 0.5  # seconds between kopf's looks at a timer it is stopping (configure)
_INSTALLATION = f"/apis/{model.GROUP}/{model.VERSION}/{model.PLURAL}/{model.NAME}"
_client: KubeClient | None = None
_lock = asyncio.Lock()


def version() -> str:
    return metadata.version("percale")


def _plural(kind: str) -> str:
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


def object_path(obj: dict[str, Any]) -> str:
    """The REST path of an object from its apiVersion, kind, namespace and name."""
    api_version, meta = obj["apiVersion"], obj["metadata"]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    where = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{base}{where}/{_plural(obj['kind'])}/{meta['name']}"


async def client() -> KubeClient:
    global _client
    if _client is None:
        _client = KubeClient(await configuration())
    return _client


async def _get(path: str) -> dict[str, Any] | None:
    try:
        return await (await client()).request("GET", path)
    except KubeError as err:
        if err.status == 404:
            return None
        raise


def owned(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    meta = {**obj["metadata"], "ownerReferences": [{
        "apiVersion": model.API_VERSION, "kind": model.KIND, "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False}]}
    return {**obj, "metadata": meta}


async def apply(obj: dict[str, Any]) -> None:
    await (await client()).request(
        "PATCH", object_path(obj), query={"fieldManager": FIELD_MANAGER, "force": "true"},
        body=obj, content_type="application/apply-patch+yaml")


_IPPOOLS = "/apis/percale.io/v1/ippools"


async def stored_pools() -> list[dict[str, Any]]:
    """The cluster's IP pools as the apiserver holds them: the Installation's pools take the
    names of those of their CIDRs, may not overlap the others, and update the operator's own."""
    return (await (await client()).request("GET", _IPPOOLS)).get("items", [])


def _cidrs(pools: list[dict[str, Any]]) -> dict[str, str]:
    return {p["metadata"]["name"]: (p.get("spec") or {}).get("cidr", "") for p in pools}


async def platform_cidrs() -> list[str]:
    """kubeadm's pod CIDRs, [] on a cluster kubeadm did not make (tigera's fillDefaults, asked
    only while the cluster has no pool). PlatformError if its podSubnet does not read."""
    namespace, name = model.KUBEADM_CONFIG
    config = await _get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
    try:
        return [] if config is None else model.kubeadm_pod_cidrs(config.get("data") or {})
    except ValueError as err:
        raise PlatformError(f"{namespace}/{name}: {err}") from None


class PlatformError(Exception):
    """The cluster's own pod CIDRs cannot be read: no default pool is made until they can."""


async def carry_out(plan: pools.PoolPlan) -> str | None:
    """Create, update and retire pools as planned (pools.py); what is still waiting, if any.
    Updates and deletes carry the resourceVersion read: a pool changed meanwhile is a
    Conflict, retried at the next pass with what is then stored."""
    kube = await client()
    for pool in plan.create:
        await kube.request("POST", _IPPOOLS, body=pool)
    for pool in plan.update:
        await kube.request("PUT", f"{_IPPOOLS}/{pool['metadata']['name']}", body=pool)
    waiting = []
    for pool in plan.retire:
        name, cidr = pool["metadata"]["name"], (pool.get("spec") or {}).get("cidr", "")
        if not (pool.get("spec") or {}).get("disabled"):
            pool = await kube.request("PUT", f"{_IPPOOLS}/{name}", body=pools.disabled(pool))
            log.info("IPPool %s is no longer in the Installation: disabled", name)
        blocks = (await kube.request("GET", "/apis/percale.io/v1/ipamblocks")).get("items", [])
        if held := pools.addresses_in_use(cidr, blocks):
            waiting.append(f"IPPool {name} ({cidr}), removed from spec.calicoNetwork.ipPools, is "
                           f"disabled and is deleted once the {held} addresses pods hold in it "
                           "are released (recreate those pods)")
            continue
        await kube.request("DELETE", f"{_IPPOOLS}/{name}", body={
            "preconditions": {"resourceVersion": pool["metadata"]["resourceVersion"]}})
        log.info("IPPool %s is no longer in the Installation and holds no address: deleted", name)
    return "; ".join(waiting) or None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def reconcile(body: dict[str, Any]) -> None:
    """One pass over the Installation; serialised, since handlers and the timer may overlap.
    The Installation is read again under the lock: a handler's body may predate the defaults
    the pass before wrote back, and a stale spec with no `ipPools` in a cluster that now has
    the pools the operator made from it reads as "pools managed out of band" (none), which
    retired them."""
    async with _lock:
        current = await _get(_INSTALLATION)
        if current is not None and current["metadata"].get("uid") == body["metadata"].get("uid"):
            await _reconcile(current)


async def _reconcile(body: dict[str, Any]) -> None:
    generation = body["metadata"].get("generation", 0)
    previous = [model.Condition.model_validate(c)
                for c in (body.get("status") or {}).get("conditions", [])]
    found: list[Problem] = []
    failure: tuple[str, str] | None = None  # (reason, message), as tigera's SetDegraded
    effective = None
    plan = pools.PoolPlan()
    try:
        spec = model.InstallationSpec.model_validate(body.get("spec") or {})
        stored = await stored_pools()
        unlisted = spec.calico_network is None or spec.calico_network.ip_pools is None
        platform = await platform_cidrs() if not stored and unlisted else []
        effective = model.with_defaults(spec, _cidrs(stored), platform)
        found = model.problems(effective, _cidrs(stored))
        if not found:
            plan = pools.plan(effective, stored)
            found = plan.problems
    except ValidationError as err:
        found = [Problem(f"spec.{p.field}", p.reason) for p in validation_problems(err)]
    except (KubeError, DatastoreError) as err:
        effective = None
        failure = ("ResourceReadError", f"reading the cluster's IP pools failed: {err}")
        log.warning("%s", failure[1])
    except PlatformError as err:  # as tigera's "error filling IP pool defaults"
        effective = None
        failure = ("ResourceReadError", f"error filling IP pool defaults: {err}")
        log.warning("%s", failure[1])
    if effective is not None and not found:
        try:
            written = effective.model_dump(by_alias=True, exclude_none=True, mode="json")
            if written != body.get("spec"):
                await (await client()).request(
                    "PATCH", _INSTALLATION, body={"spec": written},
                    content_type="application/merge-patch+json")
            for obj in render.render(effective, version()):
                await apply(owned(obj, body))
            if waiting := await carry_out(plan):
                failure = ("ResourceNotReady", waiting)
        except (KubeError, DatastoreError) as err:
            failure = ("ResourceUpdateError", str(err))
            log.warning("applying the Installation failed: %s", err)
    for problem in found:
        log.warning("Installation refused: %s", problem)
    workloads = {}
    apps = f"/apis/apps/v1/namespaces/{NAMESPACE}"
    for name, path in (("daemonset", f"{apps}/daemonsets/percale-node"),
                       ("deployment", f"{apps}/deployments/percale-controllers")):
        try:
            workloads[name] = await _get(path)
        except (KubeError, DatastoreError) as err:
            workloads[name] = None
            failure = failure or ("ResourceReadError", f"reading {path} failed: {err}")
            log.warning("reading %s failed: %s", path, err)
    conditions = status.conditions(generation=generation, problems=found, failure=failure,
                                   daemonset=workloads["daemonset"],
                                   deployment=workloads["deployment"],
                                   previous=previous, now=_now())
    new_status: dict[str, Any] = {"conditions": [c.model_dump(by_alias=True, exclude_none=True)
                                                 for c in conditions]}
    ready = conditions[0].status == "True"
    if ready and effective is not None:
        new_status["computed"] = effective.model_dump(by_alias=True, exclude_none=True, mode="json")
        if effective.calico_network.mtu:
            new_status["mtu"] = effective.calico_network.mtu
    if new_status != _comparable(body.get("status")):
        # Replaced whole: a merge patch keeps what it leaves out, so an mtu taken out of the
        # spec stayed in status (and in computed) and the patch was sent again every resync.
        await (await client()).request(
            "PATCH", _INSTALLATION + "/status",
            body=[{"op": "add", "path": "/status", "value": new_status}],
            content_type="application/json-patch+json")


def _comparable(old: dict[str, Any] | None) -> dict[str, Any]:
    old = old or {}
    return {k: old[k] for k in ("conditions", "computed", "mtu") if k in old}


# -- kopf wiring -----------------------------------------------------------------------------------

@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and the last-handled spec live in annotations, not in status, which the CRD's
    # structural schema would prune.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="operator.percale.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="operator.percale.io")
    settings.persistence.finalizer = "operator.percale.io/finalizer"
    settings.posting.enabled = False
    settings.watching.server_timeout = 60
    # A deletion that lands while the resync timer's reconcile runs: kopf stops the timer, finds
    # it still finishing, and by default looks again (and only then drops its finalizer, which
    # lets the garbage collector take what the Installation owned) 60 s later. Measured against a
    # real apiserver: 60.2 s with the default, 0.66 s with 0.5. A look costs one patch.
    settings.background.cancellation_polling = STOP_POLL


def _is_default(name: str, **_: Any) -> bool:
    return name == model.NAME


@kopf.on.resume(model.GROUP, model.VERSION, model.PLURAL, when=_is_default)
@kopf.on.create(model.GROUP, model.VERSION, model.PLURAL, when=_is_default)
@kopf.on.update(model.GROUP, model.VERSION, model.PLURAL, when=_is_default)
async def on_change(body: kopf.Body, **_: Any) -> None:
    await reconcile(dict(body))


@kopf.timer(model.GROUP, model.VERSION, model.PLURAL, interval=RESYNC, when=_is_default)
async def resync(body: kopf.Body, **_: Any) -> None:
    await reconcile(dict(body))


@kopf.on.event("apps", "v1", "daemonsets", labels={"app.kubernetes.io/part-of": "percale"})
@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/part-of": "percale"})
async def workload_changed(event: dict[str, Any], **_: Any) -> None:
    """A workload of percale's was deleted (put it back now) or its status moved (report it)."""
    body = await _get(_INSTALLATION)
    if body is not None and event.get("type") in ("DELETED", "MODIFIED", None):
        await reconcile(body)


def kopf_arguments(args: list[str]) -> list[str]:
    """`kopf run`'s arguments for percale-operator's: this module, standalone (one replica, no
    peering) and cluster-wide, each default dropped only where the arguments choose otherwise
    (a peering name, a namespace), so `-v` alone still runs the operator as it is deployed."""
    def chosen(long: tuple[str, ...], short: tuple[str, ...]) -> bool:
        # --peering=NAME and -PNAME are the same choice as --peering NAME.
        return any(a.split("=", 1)[0] in long or a.startswith(short) for a in args)

    defaults = []
    if not chosen(("--standalone", "--peering"), ("-P",)):
        defaults.append("--standalone")
    if not chosen(("--all-namespaces", "--namespace"), ("-A", "-n")):
        defaults.append("--all-namespaces")
    return ["run", "-m", __name__, *defaults, *args]


HELP_PREFACE = (
    "percale-operator: installs percale from the Installation resource `default`. It runs kopf:\n"
    "  kopf run -m percale.installation.operator --standalone --all-namespaces [OPTIONS]\n"
    "with --standalone left out when --peering is given, and --all-namespaces when --namespace\n"
    "is. kopf's options:\n")


def main() -> None:
    """`percale-operator [OPTIONS]`: kopf run with this module (kopf_arguments)."""
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        print(HELP_PREFACE)
        args = ["--help"]
    sys.argv = ["kopf", *kopf_arguments(args)]
    from kopf.cli import main as kopf_main

    kopf_main()


if __name__ == "__main__":
    main()
