"""Pods for IPAM tests, wired up the way the CNI plugin does it: allocate, then write the
WorkloadEndpoint. Also the truth about leaks counted straight from the store, without the check's
code. Shared by the leak-check, garbage-collection and crash tests (pools: ipam_world.add_pool)."""

from __future__ import annotations

import asyncio
import json
import uuid

from percale.datastore import Datastore, Key, MemoryDatastore
from percale.ipam.allocator import IPAM
from percale.api import Node, WorkloadEndpoint, parse
from percale.api.workloadendpoint import workload_endpoint_name

NAMESPACE = "default"


def node(name: str, **spec) -> Node:
    return parse({"apiVersion": "percale.io/v1", "kind": "Node",
                  "metadata": {"name": name}, "spec": spec})


def endpoint(node_name: str, pod: str, ips: list[str], *, container_id: str | None = None,
             namespace: str = NAMESPACE) -> WorkloadEndpoint:
    spec = {"node": node_name, "pod": pod, "endpoint": "eth0", "orchestrator": "k8s",
            "ipNetworks": [f"{ip}/{32 if ':' not in ip else 128}" for ip in ips]}
    if container_id:
        spec["containerID"] = container_id
    return parse({
        "apiVersion": "percale.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": workload_endpoint_name(node_name, "k8s", pod, "eth0"),
                     "namespace": namespace},
        "spec": spec,
    })


def unreadable_node(store: MemoryDatastore, name: str) -> Key:
    """Write over a Node what the model refuses, as a hand edit can leave it (on Kubernetes,
    the annotation `percale.io/ASNumber: "65001a"`)."""
    key = Key("Node", name)
    store.put_raw(key, json.dumps({"apiVersion": "percale.io/v1", "kind": "Node",
                                   "metadata": {"name": name},
                                   "spec": {"bgp": {"asNumber": "65001a"}}}).encode())
    return key


def unreadable_endpoint(store: MemoryDatastore, node_name: str, pod: str, *,
                        namespace: str = NAMESPACE) -> Key:
    """A pod's WorkloadEndpoint that the model refuses (on Kubernetes, the Pod annotation
    `percale.io/workloadEndpoint: oops`): which addresses it lists cannot be known."""
    document = endpoint(node_name, pod, [], namespace=namespace).to_document()
    document["spec"]["ipNetworks"] = ["oops"]
    key = Key("WorkloadEndpoint", document["metadata"]["name"], namespace)
    store.put_raw(key, json.dumps(document).encode())
    return key


def pod_handle(container_id: str) -> str:
    return f"k8s-pod-network.{container_id}"


async def allocate(ipam: IPAM, node_name: str, pod: str, *, num4: int = 1,
                   container_id: str | None = None, namespace: str = NAMESPACE) -> list[str]:
    """IPAM's half of a CNI ADD: the pod's addresses, under its container's handle."""
    container_id = container_id or uuid.uuid4().hex
    got = await ipam.auto_assign(
        node_name, handle_id=pod_handle(container_id), num4=num4,
        attrs={"pod": pod, "namespace": namespace},
    )
    return [str(i.ip) for i in got.ipv4]


async def add_pod(ipam: IPAM, node_name: str, pod: str, *, num4: int = 1,
                  namespace: str = NAMESPACE, dataplane_seconds: float = 0) -> list[str]:
    """A whole CNI ADD: allocate, wire up the dataplane (`dataplane_seconds` stands in for it),
    then record the endpoint that uses the addresses."""
    container_id = uuid.uuid4().hex
    ips = await allocate(ipam, node_name, pod, num4=num4, container_id=container_id,
                         namespace=namespace)
    if dataplane_seconds:
        await asyncio.sleep(dataplane_seconds)
    await ipam.store.create(endpoint(node_name, pod, ips, container_id=container_id,
                                     namespace=namespace))
    return ips


async def allocated_and_used(store: Datastore) -> tuple[dict[str, tuple[str | None, int | None]], set[str]]:
    """The truth, read straight from the store without the check's code: every allocated address
    with its handle and sequence number, and every address a WorkloadEndpoint lists."""
    allocated: dict[str, tuple[str | None, int | None]] = {}
    for kv in (await store.list("IPAMBlock")).items:
        spec = kv.value.spec
        base = spec.network.network_address
        for ordinal, slot in enumerate(spec.allocations):
            if slot is not None:
                allocated[str(base + ordinal)] = (
                    spec.attributes[slot].handle_id,
                    spec.sequence_number_for_allocation.get(str(ordinal)))
    used = {net.split("/")[0] for kv in (await store.list("WorkloadEndpoint")).items
            for net in kv.value.spec.ip_networks}
    return allocated, used


async def overstating_handles(store: Datastore) -> set[str]:
    """Handles whose counts exceed what the blocks hold for them, counted straight from the store."""
    held: dict[tuple[str, str], int] = {}
    for kv in (await store.list("IPAMBlock")).items:
        spec = kv.value.spec
        for slot in spec.allocations:
            if slot is not None:
                key = (spec.attributes[slot].handle_id, spec.cidr)
                held[key] = held.get(key, 0) + 1
    return {kv.value.spec.handle_id for kv in (await store.list("IPAMHandle")).items
            if any(n > held.get((kv.value.spec.handle_id, cidr), 0)
                   for cidr, n in kv.value.spec.block.items())}
