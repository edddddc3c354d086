"""percale's Node and WorkloadEndpoint on the Kubernetes datastore are Kubernetes' own Node and
Pod, as in Calico's KDD (no CRD, nothing to keep in step):

- a **Node** is the Kubernetes Node: its name, labels and addresses (`status.addresses`) are
  Kubernetes'; percale's own fields live in `percale.io/*` annotations, written through the
  `nodes/status` subresource (so the agent needs no right to change the Node's spec);
- a **WorkloadEndpoint** is a Pod that percale wired: the CNI plugin writes its endpoint as
  annotations of the Pod through `pods/status` (the IPs as `percale.io/podIP(s)`, the container
  ID, and the endpoint itself in `percale.io/workloadEndpoint`); its labels are the Pod's. A Pod
  without the annotation has no endpoint, nor has a finished Pod (Succeeded or Failed); removing
  the endpoint removes the annotations but keeps `percale.io/containerID`, as Calico keeps
  cni.projectcalico.org/containerID.

The revision of both is the Kubernetes object's resourceVersion. These functions are pure: the
backend (kubernetes.py) makes the calls.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from percale.api import InvalidResource, Node, Profile, Resource, WorkloadEndpoint
from percale.api.meta import explained
from percale.api.k8s_policy import parse_kubernetes_policy
from percale.api.workloadendpoint import workload_endpoint_name
from percale.policy.convert import convert
from percale.datastore.codec import READ_CONTEXT, READ_EXTRA
from percale.datastore.contract import Key, KVPair
from percale.datastore.errors import DatastoreError

PREFIX = "percale.io/"
# Annotation -> (spec path): Calico's names under percale.io/.
NODE_ANNOTATIONS = {
    "IPv4Address": ("bgp", "ipv4Address"),
    "IPv6Address": ("bgp", "ipv6Address"),
    "ASNumber": ("bgp", "asNumber"),
    "RouteReflectorClusterID": ("bgp", "routeReflectorClusterID"),
    "IPv4IPIPTunnelAddr": ("bgp", "ipv4IPIPTunnelAddr"),
    "IPv4VXLANTunnelAddr": ("ipv4VXLANTunnelAddr",),
    "VXLANTunnelMACAddr": ("vxlanTunnelMACAddr",),
    "IPv6VXLANTunnelAddr": ("ipv6VXLANTunnelAddr",),
    "VXLANTunnelMACAddrV6": ("vxlanTunnelMACAddrV6",),
}
ENDPOINT = PREFIX + "workloadEndpoint"
POD_IP = PREFIX + "podIP"
POD_IPS = PREFIX + "podIPs"
CONTAINER_ID = PREFIX + "containerID"
# Pod phases after which a Pod never runs again (Kubernetes' PodSucceeded, PodFailed).
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


def _meta(obj: dict[str, Any], name: str, namespace: str | None = None,
          drop_prefix: bool = True) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not (drop_prefix and k.startswith(PREFIX))}
    kept: dict[str, Any] = {"name": name, "labels": meta.get("labels") or {},
                            "annotations": annotations}
    for field in ("uid", "creationTimestamp", "resourceVersion"):
        if field in meta:
            kept[field] = meta[field]
    if namespace:
        kept["namespace"] = namespace
    return kept


# -- Node ----------------------------------------------------------------------------------------

def node_from_object(obj: dict[str, Any]) -> KVPair:
    meta = obj.get("metadata", {})
    annotations = meta.get("annotations") or {}
    spec: dict[str, Any] = {}
    for suffix, path in NODE_ANNOTATIONS.items():
        value = annotations.get(PREFIX + suffix)
        if value is None:
            continue
        target = spec
        for part in path[:-1]:
            target = target.setdefault(part, {})
        if suffix == "ASNumber":
            try:
                value = int(value)
            except ValueError:
                raise DatastoreError(
                    f"the Node {meta.get('name')!r} read from Kubernetes is not valid: annotation "
                    f"{PREFIX}ASNumber {value!r} is not a number") from None
        target[path[-1]] = value
    addresses = [{"address": a["address"], "type": a["type"]}
                 for a in (obj.get("status") or {}).get("addresses", [])
                 if a.get("type") in ("InternalIP", "ExternalIP")]
    for family in ("ipv4Address", "ipv6Address"):
        if spec.get("bgp", {}).get(family):
            addresses.insert(0, {"address": spec["bgp"][family], "type": "CalicoNodeIP"})
    spec["addresses"] = addresses
    spec["orchRefs"] = [{"orchestrator": "k8s", "nodeName": meta.get("name")}]
    return _validated(Node, {"apiVersion": "percale.io/v1", "kind": "Node",
                             "metadata": _meta(obj, meta.get("name", "")), "spec": spec})


def node_annotations(value: Node) -> dict[str, str | None]:
    """The percale.io/* annotations a Node's spec becomes; None removes one."""
    doc = value.to_document().get("spec", {})
    out: dict[str, str | None] = {}
    for suffix, path in NODE_ANNOTATIONS.items():
        found: Any = doc
        for part in path:
            found = found.get(part) if isinstance(found, dict) else None
        out[PREFIX + suffix] = None if found is None else str(found)
    return out


def node_status_object(value: Node, current: dict[str, Any], revision: str) -> dict[str, Any]:
    """The Kubernetes Node to PUT to nodes/<name>/status: `current` with percale's annotations
    and the user's labels and annotations from `value`, at `revision` (compare-and-swap)."""
    obj = json.loads(json.dumps(current))
    meta = obj.setdefault("metadata", {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k.startswith(PREFIX)}
    annotations.update(value.metadata.annotations)
    for key, text in node_annotations(value).items():
        if text is None:
            annotations.pop(key, None)
        else:
            annotations[key] = text
    meta["annotations"] = annotations
    meta["labels"] = dict(value.metadata.labels)
    meta["resourceVersion"] = revision
    return obj


# -- WorkloadEndpoint ----------------------------------------------------------------------------

def split_endpoint_name(name: str) -> tuple[str, str, str, str]:
    """`node1-k8s-nginx--5d4f-eth0` -> ("node1", "k8s", "nginx-5d4f", "eth0"): segments are
    joined by single dashes, and a dash inside a segment is doubled."""
    parts = [p.replace("--", "-") for p in re.split(r"(?<!-)-(?!-)", name)]
    if len(parts) != 4:
        raise ValueError(f"{name!r} is not a WorkloadEndpoint name <node>-<orchestrator>-<pod>-<endpoint>")
    return parts[0], parts[1], parts[2], parts[3]


def finished(pod: dict[str, Any]) -> bool:
    """Whether the Pod has run to its end (a Job's pod, one evicted): its containers are gone
    and the kubelet tears its network down, so its addresses are free to be handed out again."""
    return (pod.get("status") or {}).get("phase") in FINISHED_PHASES


def endpoint_from_pod(pod: dict[str, Any]) -> KVPair | None:
    """The WorkloadEndpoint a Pod carries, or None when percale has not wired it or the Pod has
    finished. A finished Pod keeps its annotations until its CNI DEL (if that ever comes), but
    its addresses may already belong to another pod: reported, it would give two endpoints one
    address, so Calico's conversion drops finished Pods and so does this."""
    meta = pod.get("metadata", {})
    raw = (meta.get("annotations") or {}).get(ENDPOINT)
    if raw is None or finished(pod):
        return None
    try:
        stored = json.loads(raw)
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise DatastoreError(
            f"Pod {meta.get('namespace')}/{meta.get('name')}: annotation {ENDPOINT} is not a "
            "JSON object")
    spec = stored.get("spec", {})
    if not isinstance(spec, dict):
        raise DatastoreError(
            f"Pod {meta.get('namespace')}/{meta.get('name')}: annotation {ENDPOINT} has a spec "
            "that is not a JSON object")
    spec = dict(spec)
    pod_spec = pod.get("spec") or {}
    # Named ports, for policy: the Pod's containers', its init containers' too (a native
    # sidecar's metrics port), as Calico's conversion reads both; percale's record has none.
    named = [{"name": port["name"], "protocol": port.get("protocol", "TCP"), "port": port["containerPort"]}
             for container in [*(pod_spec.get("containers") or []),
                               *(pod_spec.get("initContainers") or [])]
             for port in container.get("ports") or [] if port.get("name") and port.get("containerPort")]
    if named:
        spec["ports"] = named
    # The service account, for Calico's projectcalico.org/serviceaccount label, from the Pod's
    # spec (which the Pod's owner cannot change once it runs), never from the annotation: a
    # policy written with that label selected nothing on this datastore, so a Deny denied nothing.
    account = pod_spec.get("serviceAccountName")
    spec["serviceAccountName"] = account if isinstance(account, str) and account else None
    try:
        return _validated(WorkloadEndpoint, {
            "apiVersion": "percale.io/v1", "kind": "WorkloadEndpoint",
            "metadata": _meta(pod, stored.get("name", ""), meta.get("namespace")),
            "spec": spec,
        })
    except DatastoreError as err:
        raise DatastoreError(f"Pod {meta.get('namespace')}/{meta.get('name')}: annotation "
                             f"{ENDPOINT}: {err}") from None


def endpoint_key(pod: dict[str, Any]) -> Key:
    """The key of the endpoint a Pod carries, read without checking the endpoint: the name its
    annotation gives, else the one percale's CNI side gives a pod's endpoint (eth0 on the Pod's
    node). For naming an endpoint that cannot be read."""
    meta = pod.get("metadata", {})
    try:
        stored = json.loads((meta.get("annotations") or {}).get(ENDPOINT) or "")
    except ValueError:
        stored = None
    name = stored.get("name") if isinstance(stored, dict) else None
    if not isinstance(name, str) or not name:
        name = workload_endpoint_name((pod.get("spec") or {}).get("nodeName") or "", "k8s",
                                      meta.get("name", ""), "eth0")
    return Key("WorkloadEndpoint", name, meta.get("namespace"))


def profile_from_namespace(namespace: dict[str, Any]) -> KVPair:
    """A Namespace as its profile `kns.<name>`: its labels applied to its pods for
    namespaceSelectors, and the default rules (allow both ways), as Calico's conversion makes it."""
    meta = namespace.get("metadata", {})
    return _validated(Profile, {
        "apiVersion": "percale.io/v1", "kind": "Profile",
        "metadata": {"name": f"kns.{meta.get('name', '')}",
                     "resourceVersion": meta.get("resourceVersion"), "uid": meta.get("uid")},
        "spec": {"labelsToApply": meta.get("labels") or {}},
    })


def policy_from_kubernetes(obj: dict[str, Any]) -> KVPair:
    """A networking.k8s.io NetworkPolicy as percale's, converted (knp.default.<name>)."""
    meta = obj.get("metadata", {})
    try:
        # convert() refuses too: the apiserver accepts names knp.default.<name> cannot hold.
        converted = convert(parse_kubernetes_policy({**obj, "metadata": {
            k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}}))
    except InvalidResource as err:
        raise DatastoreError(f"the Kubernetes NetworkPolicy {meta.get('namespace')}/{meta.get('name')} "
                             f"cannot be used: {err}") from None
    meta_out = converted.metadata.model_copy(update={"resource_version": meta.get("resourceVersion"),
                                                     "uid": meta.get("uid")})
    value = converted.model_copy(update={"metadata": meta_out})
    return KVPair(Key.of(value), value, meta.get("resourceVersion", ""))


def endpoint_patch(value: WorkloadEndpoint | None, revision: str | None,
                   container_id: str | None = None) -> dict[str, Any]:
    """A strategic-merge patch for pods/<name>/status writing (or, for None, removing) the
    endpoint; the resourceVersion in it makes the apiserver refuse a stale write (409)."""
    annotations: dict[str, Any]
    if value is None:
        annotations = {ENDPOINT: None, POD_IP: None, POD_IPS: None}
    else:
        nets = value.spec.ip_networks
        annotations = {
            ENDPOINT: json.dumps({"name": value.metadata.name,
                                  "spec": value.to_document()["spec"]},
                                 separators=(",", ":"), sort_keys=True),
            POD_IP: nets[0] if nets else None,
            POD_IPS: ",".join(nets) if nets else None,
            CONTAINER_ID: value.spec.container_id or container_id,
        }
    meta: dict[str, Any] = {"annotations": annotations}
    if revision is not None:
        meta["resourceVersion"] = revision
    return {"metadata": meta}


def _validated(cls: type[Resource], doc: dict[str, Any]) -> KVPair:
    try:
        value = cls.model_validate(doc, extra=READ_EXTRA, context=READ_CONTEXT)
    except ValidationError as err:
        name = doc["metadata"].get("name")
        raise DatastoreError(f"the {cls.info.kind} {name!r} read from Kubernetes is not valid: {explained(err)}") from None
    return KVPair(Key.of(value), value, value.metadata.resource_version or "")
