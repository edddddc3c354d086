"""Removing a node with its state (ipam/node_removal.py), as Calico's node deletion does, against
the in-memory datastore: what goes, what of other nodes' stays, a second run after a failure,
and the Kubernetes datastore, where the Node and the Pods are Kubernetes' own."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from percale.api import parse
from percale.api.workloadendpoint import workload_endpoint_name
from percale.datastore import (
    Conflict, DatastoreError, DatastoreUnavailable, Key, MemoryDatastore, NotFound,
)
from percale.ipam.allocator import IPAM, tunnel_handle
from percale.ipam.node_removal import NodeRemoval, remove_node
from tests.helpers.ipam_world import add_pool, allocations, assert_consistent

pytestmark = pytest.mark.unit

POOL = "10.10.0.0/24"  # blocks of 16: 10.10.0.0/28, .16/28, ...


def resource(kind: str, name: str, spec: dict, namespace: str | None = None):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return parse({"apiVersion": "percale.io/v1", "kind": kind, "metadata": meta, "spec": spec})


async def pod(store, node: str, name: str, *, endpoint: bool = True) -> str:
    """A pod of `node` with an address (and, unless not, its WorkloadEndpoint listing it)."""
    got = await IPAM(store).auto_assign(node, handle_id=f"k8s-pod-network.{name}", num4=1,
                                        attrs={"namespace": "default", "pod": name})
    address = str(got.ipv4[0].ip)
    if endpoint:
        await store.create(wep(node, name, address))
    return address


def wep(node: str, name: str, address: str):
    return resource("WorkloadEndpoint", workload_endpoint_name(node, "k8s", name, "eth0"), {
        "orchestrator": "k8s", "node": node, "pod": name, "endpoint": "eth0",
        "ipNetworks": [f"{address}/32"]}, namespace="default")


async def world(store) -> dict[str, str]:
    """Nodes a, b and b-2 (whose endpoint names start with b's), each with a pod; b with a VXLAN
    tunnel address on its Node, a pod with no endpoint (a leak) and a pod whose address it
    borrowed from a's block; BGP settings of b, of b-2 and of the cluster."""
    await add_pool(store, "pods", POOL, blockSize=28)
    ipam = IPAM(store)
    found = {}
    for node in ("a", "b", "b-2"):
        await store.create(resource("Node", node, {}))
        found[node] = await pod(store, node, f"web-{node}")
    tunnel = await ipam.auto_assign("b", handle_id=tunnel_handle("b"), num4=1,
                                    attrs={"type": "vxlanTunnelAddress"}, use="Tunnel")
    found["tunnel"] = str(tunnel.ipv4[0].ip)
    current = await store.get(Key("Node", "b"))
    await store.update(resource("Node", "b", {"ipv4VXLANTunnelAddr": found["tunnel"]}),
                       revision=current.revision)
    found["leak"] = await pod(store, "b", "leak", endpoint=False)
    a_block = ipaddress.ip_network(f"{found['a']}/28", strict=False)
    found["borrowed"] = str(a_block.network_address + 9)
    await ipam.assign_ip("b", found["borrowed"], handle_id="k8s-pod-network.borrower",
                         attrs={"namespace": "default", "pod": "borrower"})
    await store.create(wep("b", "borrower", found["borrowed"]))
    for name, node in (("b-tor", "b"), ("b2-tor", "b-2"), ("everyone", None)):
        await store.create(resource("BGPPeer", name, {
            "peerIP": "192.0.2.254", "asNumber": 65001, **({"node": node} if node else {})}))
    for name in ("node.b", "node.b-2", "default"):
        await store.create(resource("BGPConfiguration", name, {}))
    return found


async def names(store, kind: str) -> list[str]:
    return [kv.key.name for kv in (await store.list(kind)).items]


def test_a_node_goes_with_its_endpoints_addresses_affinities_and_bgp_settings():
    async def scenario():
        store = MemoryDatastore()
        found = await world(store)
        removal = NodeRemoval("b")
        deleted = await remove_node(store, "b", removal=removal)
        assert deleted.key == Key("Node", "b")
        assert removal.summary() == (
            "Node b: released 3 IP addresses and 1 block affinity (1 block kept without affinity:"
            " still holding addresses); deleted 2 WorkloadEndpoints, 1 BGPPeer and"
            " BGPConfiguration node.b")

        assert await names(store, "Node") == ["a", "b-2"]
        held = await assert_consistent(store)
        # Only the leak is left of b (no endpoint lists it: the garbage collector's, as in
        # Calico), in b's block, which has lost its affinity.
        assert set(held) == {found["a"], found["b-2"], found["leak"]}
        affine = [kv.value.spec.node for kv in (await store.list("BlockAffinity")).items]
        assert "b" not in affine
        affinities = [kv.value.spec.affinity for kv in (await store.list("IPAMBlock")).items]
        assert sorted(affinities, key=str) == [None, "host:a", "host:b-2"]
        # b-2's endpoint names start with b's: it keeps them, and its BGP settings.
        assert [kv.value.spec.node for kv in (await store.list("WorkloadEndpoint")).items] == [
            "a", "b-2"]
        assert await names(store, "BGPPeer") == ["b2-tor", "everyone"]
        assert await names(store, "BGPConfiguration") == ["default", "node.b-2"]

        # Again: nothing left to remove, and the Node is missing.
        again = NodeRemoval("b")
        with pytest.raises(NotFound):
            await remove_node(store, "b", removal=again)
        assert not again.anything_done
        assert set(await allocations(store)) == set(held)

    asyncio.run(scenario())


def test_an_address_handed_to_another_node_since_stays_with_it():
    """An endpoint left behind lists an address that was freed and given to a pod of another
    node: releasing it by address, as Calico does, would cut that pod off."""
    async def scenario():
        store = MemoryDatastore()
        await add_pool(store, "pods", POOL, blockSize=28)
        for node in ("a", "b"):
            await store.create(resource("Node", node, {}))
        ipam = IPAM(store)
        stale = await pod(store, "b", "gone")
        await ipam.release_by_handle("k8s-pod-network.gone")  # its DEL freed it, not the endpoint
        await ipam.assign_ip("a", stale, handle_id="k8s-pod-network.new",
                             attrs={"namespace": "default", "pod": "new"})
        removal = NodeRemoval("b")
        await remove_node(store, "b", removal=removal)
        assert (await ipam.get_allocation(stale)).handle_id == "k8s-pod-network.new"
        assert removal.summary() == (
            "Node b: released 0 IP addresses and 1 block affinity (1 block kept without affinity:"
            f" still holding addresses); deleted 1 WorkloadEndpoint and 0 BGPPeers; left 1"
            f" address allocated to other nodes now ({stale})")

    asyncio.run(scenario())


class FailingOnce:
    """A store whose first list of `kind` fails as an unreachable datastore does."""

    def __init__(self, store, kind: str):
        self.store, self.kind, self.failed = store, kind, False

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def list(self, kind, *args, **kwargs):
        if kind == self.kind and not self.failed:
            self.failed = True
            raise DatastoreUnavailable("etcd went away")
        return await self.store.list(kind, *args, **kwargs)


def test_a_second_run_finishes_what_a_failed_one_began():
    async def scenario():
        store = MemoryDatastore()
        found = await world(store)
        first = NodeRemoval("b")
        with pytest.raises(DatastoreUnavailable):
            await remove_node(FailingOnce(store, "BGPPeer"), "b", removal=first)
        # Addresses, endpoints and affinities went; the Node stays for the second run.
        assert (len(first.released), first.endpoints, first.affinities) == (3, 2, 1)
        assert await names(store, "Node") == ["a", "b", "b-2"]
        second = NodeRemoval("b")
        await remove_node(store, "b", removal=second)
        assert second.summary() == (
            "Node b: released 0 IP addresses and 0 block affinities; deleted 0 WorkloadEndpoints,"
            " 1 BGPPeer and BGPConfiguration node.b")
        assert await names(store, "Node") == ["a", "b-2"]
        assert set(await assert_consistent(store)) == {found["a"], found["b-2"], found["leak"]}

    asyncio.run(scenario())


def test_a_node_deleted_alone_before_has_its_state_removed_and_is_reported_missing():
    """A percalectl that deleted only the Node left all of it behind for good."""
    async def scenario():
        store = MemoryDatastore()
        found = await world(store)
        await store.delete(Key("Node", "b"))
        removal = NodeRemoval("b")
        with pytest.raises(NotFound):
            await remove_node(store, "b", removal=removal)
        # The tunnel address goes by the node's handle, the Node being gone.
        assert set(await assert_consistent(store)) == {found["a"], found["b-2"], found["leak"]}
        assert removal.peers == ["b-tor"] and removal.configuration

    asyncio.run(scenario())


def test_a_stale_revision_touches_nothing():
    async def scenario():
        store = MemoryDatastore()
        await world(store)
        before = {kind: await names(store, kind) for kind in (
            "Node", "WorkloadEndpoint", "BlockAffinity", "IPAMHandle", "BGPPeer")}
        stale = str(int((await store.get(Key("Node", "b"))).revision) - 1)
        with pytest.raises(Conflict):
            await remove_node(store, "b", revision=stale)
        assert before == {kind: await names(store, kind) for kind in before}

    asyncio.run(scenario())


class KubernetesLike:
    """The in-memory store as the Kubernetes datastore behaves here: endpoints are Pods (it
    reads their annotations) and a Node, the Kubernetes Node, is not deleted through it."""

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def pod_annotations(self, namespace, pod):
        raise NotImplementedError

    async def delete(self, key, *, revision=None):
        if key.kind == "Node":
            raise DatastoreError(f"{key}: on the Kubernetes datastore a Node is the Kubernetes "
                                 "Node; delete it with kubectl delete node")
        return await self.store.delete(key, revision=revision)


def test_on_kubernetes_a_node_that_is_there_keeps_everything():
    """Calico clears and releases the pods' addresses, then fails on the Node: the pods, still
    running, lose their addresses. Here the refusal comes first."""
    async def scenario():
        memory = MemoryDatastore()
        await world(memory)
        before = await assert_consistent(memory)
        removal = NodeRemoval("b")
        with pytest.raises(DatastoreError, match="delete it with kubectl delete node"):
            await remove_node(KubernetesLike(memory), "b", removal=removal)
        assert not removal.anything_done
        assert await assert_consistent(memory) == before
        assert await names(memory, "BGPPeer") == ["b-tor", "b2-tor", "everyone"]

    asyncio.run(scenario())


def test_on_kubernetes_a_node_that_is_gone_leaves_its_pods_to_percale_controllers():
    async def scenario():
        memory = MemoryDatastore()
        found = await world(memory)
        await memory.delete(Key("Node", "b"))  # kubectl delete node
        removal = NodeRemoval("b")
        with pytest.raises(NotFound):
            await remove_node(KubernetesLike(memory), "b", removal=removal)
        held = await assert_consistent(memory)
        # The Pods and their addresses stay; the tunnel address, affinity and BGP settings go.
        assert found["tunnel"] not in held
        assert {found["b"], found["borrowed"]} <= set(held)
        assert len(await names(memory, "WorkloadEndpoint")) == 4
        assert removal.summary() == (
            "Node b: released 1 IP address and 1 block affinity (1 block kept without affinity:"
            " still holding addresses); deleted 0 WorkloadEndpoints, 1 BGPPeer and"
            " BGPConfiguration node.b; left the addresses of 2 Pods to percale-controllers")

    asyncio.run(scenario())

