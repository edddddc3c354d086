"""The datastore contract on the Kubernetes API: percale's kinds are custom resources in
`percale.io/v1` (the CRDs in crds/), as Calico's KDD stores its kinds, except those kept in
Kubernetes' own objects (kube_native.py: Node, WorkloadEndpoint, Profile, Kubernetes
NetworkPolicy).

- revision = `metadata.resourceVersion`;
- create is a POST (409 AlreadyExists), update a PUT carrying the revision (409 Conflict, then
  one GET for the current value the Conflict carries); an update without a revision reads the
  current revision first, because the apiserver refuses unconditional updates of custom objects;
- delete sends `preconditions.resourceVersion`, the apiserver's compare-and-delete;
- lists are paged; a list's revision is the collection's, so a watch from it misses nothing;
- watches ask for bookmarks and resume by themselves from the newest revision they saw (event or
  bookmark) when the server ends the stream; a 410 ("too old resource version") is
  RevisionCompacted, and the caller lists again.

Names are translated as `kube_names` explains; a kind with a status writes it through the status
subresource after the object itself.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from percale.api import KINDS, Resource
from percale.api.meta import API_VERSION, explained
from percale.api.policy import NAMESPACE_PROFILE_PREFIX
from percale.policy.convert import KUBERNETES_POLICY_PREFIX
from percale.datastore import kube_names, kube_native
from percale.datastore.codec import READ_CONTEXT, READ_EXTRA
from percale.datastore.contract import (
    NODE_SCOPED_KINDS, Key, KVPair, ListResult, PodAnnotations, WatchEvent,
)
from percale.datastore.errors import (
    AlreadyExists, Conflict, DatastoreError, DatastoreUnavailable, NotFound, NotInstalled,
    RevisionCompacted,
)
from percale.datastore.kube_client import KubeClient, KubeError, configuration

GROUP, VERSION = API_VERSION.split("/")
PAGE = 500
# How long the server keeps one watch request open before the backend opens the next one.
WATCH_SECONDS = 300
# Labels percale sets for its own lookups; they are not part of the resource the user wrote.
_OWN_LABELS = {kube_names.HOSTNAME_HASH_LABEL, kube_names.AFFINITY_TYPE_LABEL,
               kube_names.IP_VERSION_LABEL}
# What Kubernetes adds to metadata that percale's ObjectMeta does not carry.
_KEPT_METADATA = ("namespace", "labels", "annotations", "resourceVersion", "uid",
                  "creationTimestamp")


NATIVE = {"Node": "nodes", "WorkloadEndpoint": "pods"}
# Profiles are the Namespaces (read-only); NetworkPolicies are percale's custom objects and, beside
# them, Kubernetes' own NetworkPolicies, converted (knp.default.<name>, read-only here).
KUBERNETES_POLICIES = "/apis/networking.k8s.io/v1"


def collection_path(kind: str, namespace: str | None = None) -> str:
    if kind == "Node":
        return "/api/v1/nodes"
    if kind == "Profile":
        return "/api/v1/namespaces"
    if kind == "KubernetesNetworkPolicy":
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"{KUBERNETES_POLICIES}{where}/networkpolicies"
    if kind == "WorkloadEndpoint":
        return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    plural = KINDS[kind].info.plural
    if namespace:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
    return f"/apis/{GROUP}/{VERSION}/{plural}"


def object_path(key: Key, name: str | None = None) -> str:
    """Where the object `key` names is. A name no such object can have (`foo` for an endpoint,
    which is <node>-<orchestrator>-<pod>-<endpoint>; a block name that is no CIDR) names
    nothing: NotFound, as etcd answers for a key it does not hold, not a ValueError that
    percalectl would print as a traceback."""
    if key.kind == "Profile":
        return f"/api/v1/namespaces/{key.name.removeprefix(NAMESPACE_PROFILE_PREFIX)}"
    if key.kind == "KubernetesNetworkPolicy":
        return f"{collection_path(key.kind, key.namespace)}/{key.name.removeprefix(KUBERNETES_POLICY_PREFIX)}"
    try:
        if key.kind == "WorkloadEndpoint":
            name = kube_native.split_endpoint_name(key.name)[2]
        return f"{collection_path(key.kind, key.namespace)}/{name or kube_names.object_name(key)}"
    except ValueError:
        raise NotFound(key) from None


def to_object(value: Resource, revision: str | None = None) -> dict[str, Any]:
    """The custom object for a percale resource (revision included when given)."""
    doc = value.to_document()
    meta = doc["metadata"]
    key = Key.of(value)
    spec = doc.get("spec")
    order = spec.get("order") if isinstance(spec, dict) else None
    if isinstance(order, float) and math.isinf(order):
        # etcd keeps Infinity (it sorts last); the apiserver reads JSON, which has none.
        raise DatastoreError(f"{key}: spec.order: Infinity cannot be stored in a Kubernetes "
                             "object (JSON has no infinity); leave order out, which sorts last")
    meta["name"] = kube_names.object_name(key, spec)
    for field in ("resourceVersion", "creationTimestamp"):
        meta.pop(field, None)
    if revision is not None:
        meta["resourceVersion"] = revision
    if value.kind == "BlockAffinity":
        meta["labels"] = {**meta.get("labels", {}),
                          **kube_names.affinity_labels(spec["node"], spec["cidr"])}
    return doc


def key_of(kind: str, obj: dict[str, Any]) -> Key:
    """The key of the percale object a Kubernetes object holds, read from its metadata (and the
    spec fields that name IPAM objects) without checking the rest, as from_object would key it
    if it could read it: an object it cannot read still has a name to be reported and left out
    under (a name the spec cannot give falls back to the Kubernetes name)."""
    meta = obj.get("metadata", {})
    name, namespace = meta.get("name", ""), meta.get("namespace")
    if kind == "Node":
        return Key(kind, name)
    if kind == "Profile":
        return Key(kind, f"{NAMESPACE_PROFILE_PREFIX}{name}")
    if kind == "KubernetesNetworkPolicy":
        return Key("NetworkPolicy", f"{KUBERNETES_POLICY_PREFIX}{name}", namespace)
    if kind == "WorkloadEndpoint":
        return kube_native.endpoint_key(obj)
    try:
        name = kube_names.percale_name(kind, name, obj.get("spec") or {})
    except (KeyError, ValueError, TypeError):
        pass
    return Key(kind, name, namespace)


def from_object(kind: str, obj: dict[str, Any]) -> KVPair:
    """The percale resource a custom object holds, under its percale name."""
    if kind == "Node":
        return kube_native.node_from_object(obj)
    if kind == "Profile":
        return kube_native.profile_from_namespace(obj)
    if kind == "KubernetesNetworkPolicy":
        return kube_native.policy_from_kubernetes(obj)
    meta = obj.get("metadata", {})
    spec = obj.get("spec") or {}
    doc = {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "spec", "status")}
    doc["kind"] = kind
    kept = {k: meta[k] for k in _KEPT_METADATA if k in meta}
    if "labels" in kept:
        kept["labels"] = {k: v for k, v in kept["labels"].items() if k not in _OWN_LABELS}
    revision = meta.get("resourceVersion", "")
    try:
        kept["name"] = kube_names.percale_name(kind, meta.get("name", ""), spec)
        value = KINDS[kind].model_validate({**doc, "metadata": kept}, extra=READ_EXTRA,
                                             context=READ_CONTEXT)
    except (ValidationError, KeyError, ValueError) as err:
        reason = explained(err) if isinstance(err, ValidationError) else err
        raise DatastoreError(
            f"the {kind} {meta.get('name')!r} stored in Kubernetes is not valid "
            f"(resourceVersion {revision}): {reason}") from None
    return KVPair(Key.of(value), value, revision)


def _read(kind: str, obj: dict[str, Any], defer_errors: bool) -> KVPair | None:
    """The pair an object holds (None: a Pod without an endpoint). With `defer_errors`, one
    that cannot be read is an unreadable pair under its key (see Datastore.list), not an error
    for the whole list or watch."""
    try:
        try:
            if kind == "WorkloadEndpoint":
                return kube_native.endpoint_from_pod(obj)
            return from_object(kind, obj)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            # A shape no check foresaw (an annotation edited by hand): the same verdict as a
            # value the model refuses, not an exception that ends the list or watch.
            meta = obj.get("metadata") or {}
            where = "/".join(filter(None, (meta.get("namespace"), meta.get("name"))))
            raise DatastoreError(f"the {kind} of {where} (resourceVersion "
                                 f"{meta.get('resourceVersion')}) cannot be read: {err}") from None
    except DatastoreError as err:
        if not defer_errors:
            raise
        revision = obj.get("metadata", {}).get("resourceVersion", "")
        return KVPair.unreadable(key_of(kind, obj), revision, str(err))


class KubeDatastore:
    """`kubeconfig`: a kubeconfig file; None means $KUBECONFIG, ~/.kube/config, or the pod's
    service account. It is read at the first request (loading it is a coroutine)."""

    def __init__(self, kubeconfig: str | None = None):
        self.client = _LazyClient(kubeconfig)
        self._policy_positions = _PolicyPositions()

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: Key) -> KVPair:
        if key.kind == "NetworkPolicy" and key.name.startswith(KUBERNETES_POLICY_PREFIX):
            try:
                return await self.get(Key("KubernetesNetworkPolicy", key.name, key.namespace))
            except NotFound:
                raise NotFound(key) from None  # the key asked for, not the internal kind
        if key.kind == "Profile" and not key.name.startswith(NAMESPACE_PROFILE_PREFIX):
            raise NotFound(key)
        try:
            obj = await self.client.request("GET", object_path(key))
        except KubeError as err:
            raise _verdict(err, key) from None
        if key.kind == "WorkloadEndpoint":
            pair = kube_native.endpoint_from_pod(obj)
            if pair is None or pair.key != key:
                raise NotFound(key)
            return pair
        return from_object(key.kind, obj)

    async def list(
        self, kind: str, namespace: str | None = None, *, node: str | None = None,
        defer_errors: bool = False,
    ) -> ListResult:
        if kind == "NetworkPolicy":
            own = await self._list(kind, namespace, node=node, defer_errors=defer_errors)
            native = await self._list("KubernetesNetworkPolicy", namespace, node=node,
                                      defer_errors=defer_errors)
            items = sorted(own.items + native.items, key=lambda kv: (kv.key.namespace or "", kv.key.name))
            # Two reads, each at its own revision. From the later one, a watch would miss a
            # policy written between them into the half read first; from the earlier one it
            # misses nothing, and may bring again what the later half holds (an update to a
            # value the reader has). This store remembers both, so its own watch from there
            # resumes each half exactly where it was read (see watch).
            revision = min(own.revision, native.revision, key=_revision_order)
            self._policy_positions.remember(namespace, revision, own.revision, native.revision)
            return ListResult(items, revision)
        return await self._list(kind, namespace, node=node, defer_errors=defer_errors)

    async def _list(
        self, kind: str, namespace: str | None = None, *, node: str | None = None,
        defer_errors: bool = False,
    ) -> ListResult:
        query: dict[str, Any] = {"limit": PAGE}
        if node is not None:
            if kind not in NODE_SCOPED_KINDS:
                raise ValueError(f"{kind} is not node-scoped")
            query["labelSelector"] = kube_names.node_selector(node)
        items: list[KVPair] = []
        revision = ""
        while True:
            try:
                page = await self.client.request("GET", collection_path(kind, namespace), query=query)
            except KubeError as err:
                if err.status == 410:
                    # The continue token expired between pages: start the list again.
                    query.pop("continue", None)
                    items = []
                    continue
                if err.status == 404:
                    # A collection the apiserver does not serve: its CRD is missing.
                    raise NotInstalled(kind, collection_path(kind, namespace)) from None
                raise _verdict(err, Key(kind, "", namespace)) from None
            found = (_read(kind, obj, defer_errors) for obj in page.get("items", []))
            items.extend(pair for pair in found if pair is not None)
            revision = revision or page["metadata"]["resourceVersion"]
            token = page["metadata"].get("continue")
            if not token:
                break
            query["continue"] = token
        items.sort(key=lambda kv: (kv.key.namespace or "", kv.key.name))
        return ListResult(items, revision)

    # -- writes --------------------------------------------------------------------------------

    async def _swap(self, key: Key, revision: str | None,
                    attempt: Callable[[], Awaitable[KVPair]]) -> KVPair:
        """Run one compare-and-swap `attempt` until it is decided. A 409 means the object changed
        since the revision the attempt wrote against: with the caller's revision that is the
        caller's Conflict; without one, the attempt reads the current revision and tries again."""
        while True:
            try:
                return await attempt()
            except KubeError as err:
                if err.status == 409 and revision is None:
                    continue
                if err.status == 409:
                    raise Conflict(key, await self.get(key)) from None
                raise _verdict(err, key) from None

    async def _write_status(self, value: Resource, written: dict[str, Any]) -> dict[str, Any]:
        """Kinds with a status subresource ignore `status` in the object's own writes."""
        if getattr(value, "status", None) is None:
            return written
        doc = to_object(value, written["metadata"]["resourceVersion"])
        return await self.client.request("PUT", object_path(Key.of(value), written["metadata"]["name"]) + "/status", body=doc)

    @staticmethod
    def _writable(key: Key) -> None:
        if key.kind == "Profile":
            raise DatastoreError(f"{key}: on the Kubernetes datastore a namespace's profile is its "
                                 "Namespace; change the Namespace's labels with kubectl")
        if key.kind == "NetworkPolicy" and key.name.startswith(KUBERNETES_POLICY_PREFIX):
            raise DatastoreError(
                f"{key}: this is the Kubernetes NetworkPolicy {key.namespace}/"
                f"{key.name.removeprefix(KUBERNETES_POLICY_PREFIX)}; on the Kubernetes datastore "
                "create, change and delete it with kubectl")

    async def create(self, value: Resource) -> KVPair:
        key = Key.of(value)
        self._writable(key)
        if key.kind == "Node":
            return await self._create_node(value)
        if key.kind == "WorkloadEndpoint":
            return await self._write_endpoint(key, value, None, create=True)
        doc = to_object(value)
        for field in ("uid",):
            doc["metadata"].pop(field, None)
        try:
            written = await self.client.request("POST", collection_path(key.kind, key.namespace), body=doc)
            written = await self._write_status(value, written)
        except KubeError as err:
            if err.status == 409:
                raise AlreadyExists(key) from None
            raise _verdict(err, key) from None
        return from_object(key.kind, written)

    async def update(self, value: Resource, *, revision: str | None) -> KVPair:
        key = Key.of(value)
        self._writable(key)
        if key.kind == "Node":
            return await self._update_node(value, revision)
        if key.kind == "WorkloadEndpoint":
            return await self._write_endpoint(key, value, revision)

        async def attempt() -> KVPair:
            current = revision if revision is not None else (await self.get(key)).revision
            doc = to_object(value, current)
            doc["metadata"].pop("uid", None)
            written = await self.client.request("PUT", object_path(key, doc["metadata"]["name"]), body=doc)
            return from_object(key.kind, await self._write_status(value, written))

        return await self._swap(key, revision, attempt)

    async def delete(self, key: Key, *, revision: str | None = None) -> KVPair:
        self._writable(key)
        if key.kind == "Node":
            raise DatastoreError(
                f"{key}: on the Kubernetes datastore a Node is the Kubernetes Node; delete it with "
                "kubectl delete node (percale-controllers then frees its addresses)")
        if key.kind == "WorkloadEndpoint":
            return await self._write_endpoint(key, None, revision)
        # The apiserver answers a delete with a Status, not the object: read it first, and delete
        # exactly that version, so what is returned is what was deleted.
        async def attempt() -> KVPair:
            current = await self.get(key)
            if revision is not None and current.revision != revision:
                raise Conflict(key, current)
            body = {"apiVersion": "v1", "kind": "DeleteOptions",
                    "preconditions": {"resourceVersion": current.revision}}
            await self.client.request("DELETE", object_path(key), body=body)
            return current

        return await self._swap(key, revision, attempt)

    # -- Node and WorkloadEndpoint: Kubernetes' own objects (kube_native) ---------------------

    async def _create_node(self, value: Resource) -> KVPair:
        """Write percale's fields onto the Node its kubelet registered. That Node changes on its
        own (heartbeats, controllers' annotations), which says nothing about percale's fields:
        a 409 reads it again and writes again, unless percale's annotations arrived meanwhile."""
        key = Key.of(value)

        async def attempt() -> KVPair:
            try:
                current = await self.client.request("GET", object_path(key))
            except KubeError as err:
                if err.status == 404:
                    raise DatastoreError(
                        f"{key}: no Kubernetes Node of that name; on the Kubernetes datastore "
                        "nodes are registered by their kubelet") from None
                raise
            annotations = current["metadata"].get("annotations") or {}
            if any(k.startswith(kube_native.PREFIX) for k in annotations):
                raise AlreadyExists(key)
            return await self._put_node_status(value, current)

        return await self._swap(key, None, attempt)

    async def _update_node(self, value: Resource, revision: str | None) -> KVPair:
        key = Key.of(value)

        async def attempt() -> KVPair:
            node = await self.client.request("GET", object_path(key))
            return await self._put_node_status(value, node, revision)

        return await self._swap(key, revision, attempt)

    async def _put_node_status(self, value: Resource, node: dict[str, Any],
                               revision: str | None = None) -> KVPair:
        """PUT `value`'s fields onto `node` at `revision` (None: the revision `node` was read
        at); a 409 is the KubeError the caller's _swap decides on."""
        rev = revision if revision is not None else node["metadata"]["resourceVersion"]
        doc = kube_native.node_status_object(value, node, rev)
        written = await self.client.request("PUT", object_path(Key.of(value)) + "/status", body=doc)
        return kube_native.node_from_object(written)

    async def _write_endpoint(self, key: Key, value: Resource | None, revision: str | None,
                              *, create: bool = False) -> KVPair:
        path = object_path(key) + "/status"
        while True:
            try:
                pod = await self.client.request("GET", object_path(key))
            except KubeError as err:
                if err.status == 404 and value is not None:
                    raise DatastoreError(
                        f"{key}: Pod {key.namespace}/{kube_native.split_endpoint_name(key.name)[2]} "
                        "does not exist; on the Kubernetes datastore an endpoint belongs to its Pod") from None
                raise _verdict(err, key) from None
            existing = kube_native.endpoint_from_pod(pod)
            if create and existing is not None:
                raise AlreadyExists(key)
            if create and kube_native.finished(pod):
                raise DatastoreError(f"{key}: Pod {key.namespace}/{pod['metadata']['name']} has "
                                     "finished; a finished Pod has no endpoint")
            if not create and (existing is None or existing.key != key):
                raise NotFound(key)
            # Without the caller's revision, write against the Pod just read: its kubelet
            # rewrites its status at any time, and a 409 then reads it again (below), so a
            # delete returns exactly the endpoint it removed.
            patch = kube_native.endpoint_patch(
                value, revision if revision is not None else pod["metadata"]["resourceVersion"])
            try:
                written = await self.client.request(
                    "PATCH", path, body=patch, content_type="application/strategic-merge-patch+json")
            except KubeError as err:
                if err.status == 409 and revision is None:
                    continue  # the Pod changed for another reason (its status): read it again
                if err.status == 409:
                    raise Conflict(key, await self.get(key)) from None
                raise _verdict(err, key) from None
            if value is None:
                return existing
            pair = kube_native.endpoint_from_pod(written)
            assert pair is not None
            return pair

    async def compact(self, revision: str) -> None:
        # The apiserver compacts its etcd itself (every 5 minutes by default); a client cannot.
        raise NotImplementedError("the Kubernetes datastore compacts its own history")

    # -- watch ---------------------------------------------------------------------------------

    async def watch(
        self, kind: str, *, revision: str | None = None, namespace: str | None = None,
        node: str | None = None, deleted_values: bool = True, defer_errors: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        # deleted_values is moot: the apiserver's DELETED events always carry the object.
        if kind != "NetworkPolicy":
            async for event in self._watch(kind, revision=revision, namespace=namespace, node=node,
                                           defer_errors=defer_errors):
                yield event
            return
        # percale's NetworkPolicies and Kubernetes' side by side, as one stream: two watches on
        # two connections, so one may deliver a revision before the other delivers an older
        # one, and a watch resumed from the newer would lose the older. Holding each event back
        # until the other half has passed its revision would keep the order, but an idle half
        # never passes anything: the apiserver sends it no bookmark while its kind is not
        # written (none in 80 s, measured), so a policy would wait for a write of the other
        # kind. Instead each half resumes from its own last event: when this stream ends, this
        # store remembers where each half stood under the revision of the last event it
        # delivered, and a watch from that revision starts each half there. The stream is in
        # revision order per half (so per policy), and resumes without loss (maybe with a
        # repeat). Handed to another store (another process), a revision resumes both halves
        # from it, which may lose an event that was in flight on the other connection.
        if revision is None:
            revision = await self._current_revision(kind, namespace)
        own_from, native_from = self._policy_positions.start(namespace, revision)
        positions = {"NetworkPolicy": own_from, "KubernetesNetworkPolicy": native_from}
        events: asyncio.Queue = asyncio.Queue()

        async def follow(sub: str) -> None:
            try:
                async for event in self._watch(sub, revision=positions[sub], namespace=namespace,
                                               node=node, defer_errors=defer_errors):
                    await events.put((sub, event))
            except BaseException as err:  # noqa: BLE001 - handed to the reader below
                await events.put(err)

        followers = [asyncio.create_task(follow(sub)) for sub in positions]
        last = None
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                sub, event = item
                positions[sub] = last = event.revision
                yield event
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            if last is not None:
                self._policy_positions.remember(namespace, last, positions["NetworkPolicy"],
                                                positions["KubernetesNetworkPolicy"])

    async def _watch(
        self, kind: str, *, revision: str | None = None, namespace: str | None = None,
        node: str | None = None, defer_errors: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        query: dict[str, Any] = {"watch": "true", "allowWatchBookmarks": "true",
                                 "timeoutSeconds": WATCH_SECONDS}
        if node is not None:
            if kind not in NODE_SCOPED_KINDS:
                raise ValueError(f"{kind} is not node-scoped")
            query["labelSelector"] = kube_names.node_selector(node)
        if revision is None:
            revision = await self._current_revision(kind, namespace)
        last = revision
        endpoints, nodes = _EndpointEvents(), _NodeChanges()
        while True:
            query["resourceVersion"] = last
            try:
                async for event in self.client.stream(collection_path(kind, namespace), query):
                    type_, obj = event.get("type"), event.get("object") or {}
                    if type_ == "BOOKMARK":
                        last = obj["metadata"]["resourceVersion"]
                        continue
                    if type_ == "ERROR":
                        raise _watch_error(obj, last, kind)
                    last = obj["metadata"]["resourceVersion"]
                    if kind == "WorkloadEndpoint":
                        event_out = endpoints.event(type_, obj, defer_errors)
                        if event_out is not None:
                            yield event_out
                        continue
                    pair = _read(kind, obj, defer_errors)
                    assert pair is not None
                    if kind == "Node" and not nodes.changed(type_, pair, obj):
                        continue  # a kubelet heartbeat: nothing percale reads changed
                    yield WatchEvent.of(type_, pair)
            except KubeError as err:
                raise _watch_failure(err, last, kind) from None

    async def _current_revision(self, kind: str, namespace: str | None) -> str:
        """The store's revision now, where a watch "from now" begins (one object read)."""
        try:
            probe = await self.client.request(
                "GET", collection_path(kind, namespace), query={"limit": 1})
        except KubeError as err:
            raise _watch_failure(err, "", kind) from None
        return probe["metadata"]["resourceVersion"]

    async def pod_annotations(self, namespace: str, pod: str) -> PodAnnotations:
        """The annotations of a Pod and of its Namespace: what Calico's CNI plugin reads for a
        pod's pools and fixed addresses (cni.projectcalico.org/ipv4pools, ipAddrs, ...)."""
        key = Key("WorkloadEndpoint", pod, namespace)
        try:
            found = await self.client.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
            space = await self.client.request("GET", f"/api/v1/namespaces/{namespace}")
        except KubeError as err:
            if err.status == 404:
                raise NotFound(key) from None
            raise DatastoreError(f"Kubernetes refused Pod {namespace}/{pod}: {err}") from None
        return PodAnnotations(found["metadata"].get("annotations") or {},
                              space["metadata"].get("annotations") or {})

    async def close(self) -> None:
        await self.client.close()


class _PolicyPositions:
    """Where each half of the NetworkPolicy stream (percale's, Kubernetes') stood, by the
    revision a reader will hand back to resume: a list's, or the last event a watch delivered
    (see KubeDatastore.watch). A few hundred are kept; a revision not known resumes both
    halves from itself."""

    KEPT = 256

    def __init__(self) -> None:
        self._at: dict[tuple[str | None, str], tuple[str, str]] = {}

    def remember(self, namespace: str | None, revision: str, own: str, native: str) -> None:
        known = self._at.pop((namespace, revision), None)
        if known is not None:
            # Two readers stopped at the same revision with the other half at different places:
            # the earlier of each, so neither misses an event (one may see an event again).
            own = min(own, known[0], key=_revision_order)
            native = min(native, known[1], key=_revision_order)
        self._at[(namespace, revision)] = (own, native)
        while len(self._at) > self.KEPT:
            del self._at[next(iter(self._at))]

    def start(self, namespace: str | None, revision: str) -> tuple[str, str]:
        return self._at.get((namespace, revision), (revision, revision))


class _EndpointEvents:
    """Pod events as WorkloadEndpoint events: a Pod that gains the endpoint annotation is ADDED,
    one that keeps it MODIFIED (only when the endpoint itself changed), one that loses it (or
    finishes) or goes away DELETED; Pods without an endpoint are not reported.

    A watch from a revision does not know what each Pod held at that revision: a Pod that first
    comes (MODIFIED, or DELETED) without an endpoint may have had one then, removed by a CNI DEL
    just after the list the watch follows. Dropping that change left the reader with a dead
    endpoint for ever, so it is told DELETED once, under the name the endpoint had (kube_native.
    endpoint_key); a reader that never held that key ignores it, as the Cache does."""

    def __init__(self) -> None:
        # Every Pod this watch has seen: its endpoint, or None when it has none.
        self._known: dict[tuple[str, str], KVPair | None] = {}

    def event(self, type_: str, pod: dict[str, Any],
              defer_errors: bool = False) -> WatchEvent | None:
        meta = pod.get("metadata", {})
        where = (meta.get("namespace", ""), meta.get("name", ""))
        now = None if type_ == "DELETED" else _read("WorkloadEndpoint", pod, defer_errors)
        seen = where in self._known
        before = self._known.pop(where, None)
        if type_ != "DELETED":
            self._known[where] = now
        if now is not None:
            if before is not None and _same_endpoint(before, now):
                return None
            return WatchEvent.of("MODIFIED" if before else "ADDED", now)
        if before is not None:
            return _deleted(before, meta["resourceVersion"])
        if seen or type_ == "ADDED":
            return None  # without an endpoint since this watch saw it first, or since it was made
        if type_ == "DELETED":
            gone = _read("WorkloadEndpoint", pod, defer_errors)
            if gone is not None:
                return _deleted(gone, meta["resourceVersion"])
        return WatchEvent.later("DELETED", kube_native.endpoint_key(pod),
                                meta["resourceVersion"], None)


def _same_endpoint(before: KVPair, now: KVPair) -> bool:
    try:
        return (before.value.spec == now.value.spec
                and before.value.metadata.labels == now.value.metadata.labels)
    except DatastoreError:  # one of them cannot be read (defer_errors): tell the change
        return False


def _deleted(last: KVPair, revision: str) -> WatchEvent:
    """A DELETED event at `revision` carrying `last`'s value (read when asked: it may be one
    that cannot be read)."""
    return WatchEvent.later("DELETED", last.key, revision, lambda: last.value)


class _NodeChanges:
    """Kubelets rewrite their Node's status every few seconds; percale reports a Node event only
    when the Node it derives from it differs."""

    def __init__(self) -> None:
        self._seen: dict[str, object] = {}

    def changed(self, type_: str, pair: KVPair, obj: dict[str, Any]) -> bool:
        if type_ == "DELETED":
            self._seen.pop(pair.key.name, None)
            return True
        try:
            meta = pair.value.metadata.model_copy(update={"resource_version": None})
            seen: object = pair.value.model_copy(update={"metadata": meta})
        except DatastoreError:
            # A Node percale cannot read (defer_errors): what percale reads of it, as it stands,
            # so heartbeats do not report (and log) it again and again.
            raw = obj.get("metadata", {})
            seen = ("unreadable", raw.get("annotations"), raw.get("labels"),
                    (obj.get("status") or {}).get("addresses"))
        if self._seen.get(pair.key.name) == seen:
            return False
        self._seen[pair.key.name] = seen
        return True


class _LazyClient:
    """A KubeClient made at the first request, so the datastore can be built outside a loop."""

    def __init__(self, kubeconfig: str | None):
        self._kubeconfig = kubeconfig
        self._client: KubeClient | None = None

    async def _get(self) -> KubeClient:
        if self._client is None:
            self._client = KubeClient(await configuration(self._kubeconfig))
        return self._client

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return await (await self._get()).request(method, path, **kwargs)

    async def stream(self, path: str, query: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for doc in (await self._get()).stream(path, query):
            yield doc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def _revision_order(revision: str) -> tuple[int, str]:
    return (int(revision), revision) if revision.isdigit() else (-1, revision)


def _verdict(err: KubeError, key: Key) -> Exception:
    if err.status == 404:
        return NotFound(key)
    return DatastoreError(f"Kubernetes refused {key}: {err}")


def _watch_failure(err: KubeError, revision: str, kind: str) -> Exception:
    """A watch request the apiserver refused, as _watch_error says it (the HTTP status where
    the body is no Status)."""
    return _watch_error({"code": err.status, **err.body}, revision, kind)


def _watch_error(status: dict[str, Any], revision: str, kind: str) -> Exception:
    code = status.get("code")
    if code == 404:
        return NotInstalled(kind, str(status.get("message") or "the watch found no such resource"))
    if code == 410:
        return RevisionCompacted(revision, _oldest(status.get("message", "")))
    if code in (429, 500, 503, 504):
        return DatastoreUnavailable(f"the Kubernetes watch ended: {status.get('message')}")
    return DatastoreError(f"the Kubernetes watch failed: {code} {status.get('message')}")


def _oldest(message: str) -> str:
    # "too old resource version: 5 (12)": the number in brackets is the oldest still kept.
    if "(" in message and message.endswith(")"):
        return message.rsplit("(", 1)[1].rstrip(")")
    return "unknown"
