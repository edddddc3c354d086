"""`percalectl delete node` as a user runs it: on etcd the node goes with its endpoints,
addresses, block affinities, BGPPeers and BGPConfiguration, as Calico's node deletion takes them
(it deleted the Node alone, and the rest leaked for good); on the Kubernetes datastore a Node that
is there is refused before anything is touched, and a gone one has the rest removed."""

from __future__ import annotations

import pytest

from percale.api import parse
from percale.api.workloadendpoint import workload_endpoint_name
from percale.ipam.allocator import IPAM
from tests.cli.conftest import CLI
from tests.helpers.ipam_world import add_pool
from tests.helpers.store import with_store

pytestmark = pytest.mark.cli


def resource(kind: str, name: str, spec: dict, namespace: str | None = None):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return parse({"apiVersion": "percale.io/v1", "kind": kind, "metadata": meta, "spec": spec})


async def pod(store, node: str, name: str) -> str:
    """A pod of `node`: an address, and the WorkloadEndpoint listing it."""
    got = await IPAM(store).auto_assign(node, handle_id=f"k8s-pod-network.{name}", num4=1,
                                        attrs={"namespace": "default", "pod": name})
    address = str(got.ipv4[0].ip)
    await store.create(resource(
        "WorkloadEndpoint", workload_endpoint_name(node, "k8s", name, "eth0"), {
            "orchestrator": "k8s", "node": node, "pod": name, "endpoint": "eth0",
            "ipNetworks": [f"{address}/32"]}, namespace="default"))
    return address


async def bgp_of(store, node: str) -> None:
    await store.create(resource("BGPPeer", f"{node}-tor", {
        "node": node, "peerIP": "192.0.2.254", "asNumber": 65001}))
    await store.create(resource("BGPConfiguration", f"node.{node}", {}))


def test_a_node_goes_with_its_state_and_a_second_delete_finds_nothing(cli):
    async def world(store) -> dict[str, str]:
        await add_pool(store, "pods", "10.20.0.0/24", blockSize=28)
        found = {}
        for node in ("node-a", "node-b"):
            await store.create(resource("Node", node, {"bgp": {"ipv4Address": "192.0.2.1/24"}}
                                        if node == "node-a" else {}))
            found[node] = await pod(store, node, f"web-{node}")
            await bgp_of(store, node)
        return found

    found = with_store(cli.endpoint, world)
    done = cli("delete", "node", "node-b")
    assert (done.code, done.err) == (0, "")
    assert done.out == (
        "Node node-b: released 1 IP address and 1 block affinity; deleted 1 WorkloadEndpoint,"
        " 1 BGPPeer and BGPConfiguration node.node-b\n"
        "Successfully deleted 1 'Node' resource(s)\n")
    # Nothing of node-b left to leak, and node-a untouched.
    check = cli("ipam", "check")
    assert check.code == 0 and "Check complete; found 0 problems." in check.out, check.out
    assert cli("get", "bgppeers").out.split()[4:] == ["node-a-tor", "192.0.2.254", "node-a",
                                                      "65001"]
    assert [line.split()[0] for line in cli("get", "bgpconfig").out.splitlines()[1:] if line] == [
        "node.node-a"]

    async def node_a(store):
        return (await IPAM(store).get_allocation(found["node-a"])).handle_id

    assert with_store(cli.endpoint, node_a) == "k8s-pod-network.web-node-a"

    again = cli("delete", "node", "node-b")
    assert (again.code, again.out) == (1, "")
    assert again.err == "Failed to delete 'Node' resource: resource does not exist: Node(node-b)\n"
    assert cli("delete", "node", "node-b", "--skip-not-exists").code == 0


def test_a_node_read_before_a_change_is_not_deleted_nor_its_state(cli, tmp_path):
    async def world(store) -> None:
        await add_pool(store, "pods", "10.20.0.0/24", blockSize=28)
        await store.create(resource("Node", "node-b", {}))
        await pod(store, "node-b", "web")
        await bgp_of(store, "node-b")

    with_store(cli.endpoint, world)
    saved = tmp_path / "node-b.yaml"
    saved.write_text(cli("get", "node", "node-b", "-o", "yaml").out)
    assert cli("apply", "-f", "-", stdin="apiVersion: percale.io/v1\nkind: Node\nmetadata:\n"
               "  name: node-b\nspec:\n  bgp:\n    asNumber: 65010\n").code == 0
    before = cli.stored()
    stale = cli("delete", "-f", str(saved))
    assert stale.code == 1 and "update conflict: Node(node-b)" in stale.err, stale.err
    assert stale.out == ""
    assert cli.stored() == before


def test_on_kubernetes_a_node_there_is_refused_untouched_and_a_gone_one_is_cleared(kube):
    kcli = CLI(kube.admin)
    kube.node("node-a", "192.0.2.1")
    kube.pod("default", "web", node="node-a")

    async def world(store) -> str:
        await add_pool(store, "pods", "10.20.0.0/24", blockSize=28)
        address = await pod(store, "node-a", "web")
        await bgp_of(store, "node-a")
        return address

    address = with_store(kube.admin, world)

    async def state(store):
        return ((await IPAM(store).get_allocation(address)).handle_id,
                [kv.key.name for kv in (await store.list("WorkloadEndpoint")).items],
                [kv.key.name for kv in (await store.list("BlockAffinity")).items],
                [kv.key.name for kv in (await store.list("BGPPeer")).items])

    before = with_store(kube.admin, state)
    refused = kcli("delete", "node", "node-a")
    assert (refused.code, refused.out) == (1, "")
    assert "delete it with kubectl delete node" in refused.err, refused.err
    assert with_store(kube.admin, state) == before

    kube.kubectl("delete", "node", "node-a")
    gone = kcli("delete", "node", "node-a")
    assert gone.code == 1
    assert gone.out == (
        "Node node-a: released 0 IP addresses and 1 block affinity (1 block kept without affinity:"
        " still holding addresses); deleted 0 WorkloadEndpoints, 1 BGPPeer and BGPConfiguration"
        " node.node-a; left the addresses of 1 Pod to percale-controllers\n")
    assert gone.err == "Failed to delete 'Node' resource: resource does not exist: Node(node-a)\n"
    handle, endpoints, affinities, peers = with_store(kube.admin, state)
    # The Pod keeps its endpoint and address, for percale-controllers once it is gone.
    assert (handle, endpoints, affinities, peers) == (before[0], before[1], [], [])
