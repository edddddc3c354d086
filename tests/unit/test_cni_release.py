"""What the agent releases without a pod's namespace to work in (node/cni_handlers.py): DEL
when CNI_NETNS names no namespace any more, and GC, which must take only its own network's
allocations. Asked as the shim asks; no network namespace is needed (DEL steps into none)."""

from __future__ import annotations

import json
import os

import pytest

from percale.api import WorkloadEndpoint
from percale.api.workloadendpoint import workload_endpoint_name
from percale.dataplane import pod_network
from percale.dataplane.pod_network import host_veth_name
from percale.datastore import Key, MemoryDatastore, NotFound
from percale.ipam.allocator import IPAM
from percale.node.cni_handlers import of_network

pytestmark = pytest.mark.unit

POD = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1"


def request(command: str, *, plugin: str = "percale", netns: str = "",
            network: str = "k8s-pod-network", container_id: str = "c1", ifname: str = "eth0",
            **config: object) -> dict:
    conf = {"cniVersion": "1.1.0", "name": network, "type": plugin, "nodename": "node1",
            "ipam": {"type": "percale-ipam"}, **config}
    return {"command": command, "plugin": plugin, "containerID": container_id, "netns": netns,
            "ifname": ifname, "args": POD, "config": json.dumps(conf)}


async def handles(store: MemoryDatastore) -> list[str]:
    return sorted(kv.key.name for kv in (await store.list("IPAMHandle")).items)


def address_in(stdout: str) -> str:
    return json.loads(stdout)["ips"][0]["address"].split("/")[0]


@pytest.mark.parametrize("gone", [
    "empty file",  # what a netns bind mount leaves when it is unmounted
    "/var/run/netns/" + "x" * 300,  # a name no file can have (ENAMETOOLONG)
    "/var/run/netns/no-such-pod",
    "",
], ids=["unmounted", "too-long", "missing", "unset"])
async def test_del_of_a_namespace_that_is_gone_releases_what_the_container_holds(
        cni_agent, tmp_path, gone):
    """CNI spec: DEL must succeed when the netns is gone, and release. An empty file left by
    an unmount was refused (4, "is not a namespace") and an over-long path failed (999,
    "File name too long"): the pod stuck in Terminating, its address leaked."""
    store, handlers = cni_agent
    if gone == "empty file":
        gone = str(tmp_path / "netns")
        (tmp_path / "netns").write_text("")
    code, out = await handlers.handle(request("ADD", plugin="percale-ipam"))
    assert code == 0, out
    assert await handles(store) == ["k8s-pod-network.c1"]
    assert await handlers.handle(request("DEL", netns=gone)) == (0, "")
    assert await handles(store) == []


async def test_del_naming_the_nodes_own_namespace_is_code_4_and_releases_nothing(cni_agent):
    """The one namespace problem DEL refuses: there CNI_IFNAME is the node's own interface."""
    store, handlers = cni_agent
    assert (await handlers.handle(request("ADD", plugin="percale-ipam")))[0] == 0
    for own in ("/proc/self/ns/net", f"/proc/{os.getpid()}/ns/net"):
        code, out = await handlers.handle(request("DEL", netns=own))
        assert code == 4 and "is the node's own network namespace" in json.loads(out)["msg"], out
    assert await handles(store) == ["k8s-pod-network.c1"]


async def test_gc_releases_only_its_own_networks_attachments(cni_agent):
    """Handles are "<network>.<container ID>": GC of k8s-pod-network took the handle
    k8s-pod-network.v2.c3, a live pod of network k8s-pod-network.v2, for container "v2.c3"
    of its own, and freed it."""
    store, handlers = cni_agent
    for network, container in (("k8s-pod-network", "c1"), ("k8s-pod-network", "c2"),
                               ("k8s-pod-network.v2", "c3")):
        code, out = await handlers.handle(request("ADD", plugin="percale-ipam", network=network,
                                                  container_id=container))
        assert code == 0, out
    listed = [{"containerID": "c1", "ifname": "eth0"}]
    assert await handlers.handle(request("GC", **{"cni.dev/valid-attachments": listed})) == (0, "")
    assert await handles(store) == ["k8s-pod-network.c1", "k8s-pod-network.v2.c3"]


async def test_a_percale_ipam_del_frees_only_the_addresses_of_its_interface(cni_agent):
    """CNI spec: an attachment is (CNI_CONTAINERID, CNI_IFNAME), a runtime runs DEL after a
    failed ADD, and the DEL of one attachment must not undo another. The handle
    "<network>.<container ID>" is shared by every interface of the container on the network:
    the runtime's DEL for net2 (its ADD failed) released it whole, net1's live address with it,
    for the next pod to get twice."""
    store, handlers = cni_agent
    code, out = await handlers.handle(request("ADD", plugin="percale-ipam", ifname="net1"))
    assert code == 0, out
    net1 = address_in(out)
    assert await handlers.handle(request("DEL", plugin="percale-ipam", ifname="net2")) == (0, "")
    assert await IPAM(store).ips_by_handle("k8s-pod-network.c1") == [net1]
    assert await handlers.handle(request("DEL", plugin="percale-ipam", ifname="net1")) == (0, "")
    assert await handles(store) == []


@pytest.mark.parametrize("plugin", ["percale", "percale-ipam"])
async def test_a_del_frees_the_workload_handle_when_the_container_has_none(cni_agent, plugin):
    """Calico's DEL releases by the container's handle and, when there is none, by the
    workload's ("<namespace>.<pod>", what older allocations were held by): a pod allocated so
    kept its address for ever. The workload's handle is read only then."""
    store, handlers = cni_agent
    ipam = IPAM(store)
    older = await ipam.auto_assign("node1", handle_id="default.web-1", num4=1)
    assert older.ipv4
    assert await handlers.handle(request("DEL", plugin=plugin)) == (0, "")
    assert await handles(store) == []
    # With the container's own handle found, what a workload handle holds is not touched.
    await ipam.auto_assign("node1", handle_id="default.web-1", num4=1)
    assert (await handlers.handle(request("ADD", plugin="percale-ipam")))[0] == 0
    assert await handlers.handle(request("DEL", plugin=plugin)) == (0, "")
    assert await handles(store) == ["default.web-1"]


async def test_percale_ipam_attaches_a_container_to_one_network_on_two_interfaces(cni_agent):
    """CNI spec: one container may be attached to one network more than once, under different
    CNI_IFNAMEs (host-local serves it). percale-ipam refused net2 while net1 held an address.
    Each interface has its own address now, its CHECK vouches for its own only, its DEL frees
    its own only, and a second ADD of the same interface is still refused."""
    store, handlers = cni_agent
    given = {}
    for ifname in ("net1", "net2"):
        code, out = await handlers.handle(request("ADD", plugin="percale-ipam", ifname=ifname))
        assert code == 0, out
        given[ifname] = json.loads(out)
    net1, net2 = (given[i]["ips"][0]["address"].split("/")[0] for i in ("net1", "net2"))
    assert net1 != net2
    assert sorted(await IPAM(store).ips_by_handle("k8s-pod-network.c1")) == sorted([net1, net2])
    for ifname in ("net1", "net2"):
        checked = request("CHECK", plugin="percale-ipam", ifname=ifname, prevResult=given[ifname])
        assert await handlers.handle(checked) == (0, ""), ifname
    code, out = await handlers.handle(request("ADD", plugin="percale-ipam", ifname="net2"))
    assert code == 102 and net2 in json.loads(out)["msg"], out
    assert await handlers.handle(request("DEL", plugin="percale-ipam", ifname="net2")) == (0, "")
    assert await IPAM(store).ips_by_handle("k8s-pod-network.c1") == [net1]
    checked = request("CHECK", plugin="percale-ipam", ifname="net1", prevResult=given["net1"])
    assert await handlers.handle(checked) == (0, "")
    assert await handlers.handle(request("DEL", plugin="percale-ipam", ifname="net1")) == (0, "")
    assert await handles(store) == []


async def test_a_del_of_another_interface_frees_no_older_allocation_whose_endpoint_stands(
        cni_agent):
    """An address allocated before percale recorded the interface it was given to: the main
    plugin's DEL for a refused net2 freed it while eth0's endpoint stood. It is this DEL's only
    when this interface's endpoint stands, or when no other interface of the container has one
    (an ADD that died before writing its endpoint is cleaned up by its DEL all the same)."""
    store, handlers = cni_agent
    ipam = IPAM(store)
    older = {"namespace": "default", "pod": "web-1"}  # no "interface"
    got = await ipam.auto_assign("node1", handle_id="k8s-pod-network.c1", num4=1, attrs=older)
    eth0 = str(got.ipv4[0].ip)
    name = workload_endpoint_name("node1", "k8s", "web-1", "eth0")
    await store.create(WorkloadEndpoint.model_validate({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"orchestrator": "k8s", "node": "node1", "containerID": "c1", "pod": "web-1",
                 "endpoint": "eth0", "ipNetworks": [f"{eth0}/32"]}}))
    assert await handlers.handle(request("DEL", ifname="net2")) == (0, "")
    assert await ipam.ips_by_handle("k8s-pod-network.c1") == [eth0]
    await store.get(Key("WorkloadEndpoint", name, "default"))  # still there
    assert await handlers.handle(request("DEL")) == (0, "")
    assert await handles(store) == []
    with pytest.raises(NotFound):
        await store.get(Key("WorkloadEndpoint", name, "default"))
    # No endpoint at all (the ADD died before writing it): the DEL frees it.
    await ipam.auto_assign("node1", handle_id="k8s-pod-network.c2", num4=1, attrs=older)
    assert await handlers.handle(request("DEL", container_id="c2", ifname="net2")) == (0, "")
    assert await handles(store) == []


@pytest.mark.parametrize(("handle", "network", "ours"), [
    ("k8s-pod-network.c1", "k8s-pod-network", True),
    ("k8s-pod-network.v2.c1", "k8s-pod-network", False),
    ("k8s-pod-network.v2.c1", "k8s-pod-network.v2", True),
    # A container ID with a dot (libcni allows it) could be another network's: kept.
    ("k8s-pod-network.a.b", "k8s-pod-network", False),
    ("other.c1", "k8s-pod-network", False),
])
def test_an_allocation_is_of_the_network_its_handle_leaves_no_doubt_about(handle, network, ours):
    assert of_network(handle, network) is ours


async def test_gc_removes_the_host_veth_no_endpoint_names_but_not_a_newer_containers(
        cni_agent, monkeypatch):
    """GC found a collected container's host veth only through its WorkloadEndpoint: an ADD
    killed before it stored the endpoint, or an endpoint deleted by hand, left a veth holding
    the address's route, and the next pod given the address could not be wired. The veth's
    name comes from the allocation's pod, namespace and interface then. A host veth is named
    for the pod, though: a newer container of the same pod, still in use, has the same one."""
    store, handlers = cni_agent
    removed: list[str] = []
    monkeypatch.setattr(pod_network, "remove_host_veth", lambda name: removed.append(name))
    for container, pod in (("c1", "web-1"), ("c2", "db"), ("c3", "db")):
        cni_args = f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"
        code, out = await handlers.handle({**request("ADD", plugin="percale-ipam",
                                                     container_id=container),
                                           "args": cni_args})
        assert code == 0, out
        if container == "c3":  # db's newer container, wired and in use
            await store.create(WorkloadEndpoint.model_validate({
                "metadata": {"name": workload_endpoint_name("node1", "k8s", "db", "eth0"),
                             "namespace": "default"},
                "spec": {"orchestrator": "k8s", "node": "node1", "containerID": "c3",
                         "pod": "db", "endpoint": "eth0", "ipNetworks": [f"{address_in(out)}/32"],
                         "interfaceName": host_veth_name("default", "db")}}))
    listed = [{"containerID": "c3", "ifname": "eth0"}]
    assert await handlers.handle(request("GC", **{"cni.dev/valid-attachments": listed})) == (0, "")
    assert await handles(store) == ["k8s-pod-network.c3"]
    assert removed == [host_veth_name("default", "web-1")]
