"""Calico's pod and namespace annotations on the Kubernetes datastore: a pod's ADD takes its
pools from cni.projectcalico.org/ipv4pools (the pod's, else its namespace's) and exact addresses
from ipAddrs; an annotation it cannot honour fails the ADD with a message naming it, and takes
nothing (calico.md §4.2, step 2)."""

from __future__ import annotations

import ipaddress

import pytest

from percale.ipam.allocator import IPAM
from tests.helpers.cni_node import CNINode, netconf
from tests.helpers.ipam_world import add_pool
from tests.helpers.store import with_store

pytestmark = pytest.mark.interop

POOLS, ADDRS = "cni.projectcalico.org/ipv4pools", "cni.projectcalico.org/ipAddrs"


@pytest.fixture
def node(kube):
    async def pools(store):
        await add_pool(store, "pods", "10.244.0.0/16")
        await add_pool(store, "special", "10.77.0.0/16")
    with_store(kube.admin, pools)
    started = CNINode("", kube=kube).start()
    yield started
    started.stop()


def _add(node: CNINode, namespace: str, pod: str, annotations: dict[str, str]):
    node.kube.pod(namespace, pod, node=node.name)
    for key, value in annotations.items():
        node.kube.kubectl("annotate", "pod", "-n", namespace, pod, f"{key}={value}")
    return node.plugin("percale", "ADD", netconf(node), container_id=f"c-{pod}",
                       netns=node.new_pod_netns(),
                       args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}")


def _address(added) -> ipaddress.IPv4Address:
    assert added.code == 0, added.out
    return ipaddress.ip_interface(added.json["ips"][0]["address"]).ip


def _handles(kube) -> list[str]:
    async def read(store):
        return [kv.key.name for kv in (await store.list("IPAMHandle")).items]
    return with_store(kube.admin, read)


def test_pools_and_addresses_come_from_the_annotations(node, kube):
    special = ipaddress.ip_network("10.77.0.0/16")
    assert _address(_add(node, "default", "plain", {})) not in special
    assert _address(_add(node, "default", "pooled", {POOLS: '["special"]'})) in special
    kube.kubectl("create", "namespace", "annotated")
    kube.kubectl("annotate", "namespace", "annotated", f'{POOLS}=["10.77.0.0/16"]')
    assert _address(_add(node, "annotated", "by-namespace", {})) in special
    # The pod's own annotation comes first.
    assert _address(_add(node, "annotated", "own", {POOLS: '["pods"]'})) not in special
    fixed = _add(node, "default", "fixed", {ADDRS: '["10.77.9.9"]'})
    assert fixed.json["ips"][0]["address"] == "10.77.9.9/32", fixed.out

    async def holder(store):
        return (await IPAM(store).get_allocation("10.77.9.9")).handle_id
    assert with_store(kube.admin, holder) == "k8s-pod-network.c-fixed"


@pytest.mark.parametrize("annotations, words", [
    ({ADDRS: "not-json"}, ["Pod default/bad", "cni.projectcalico.org/ipAddrs", "is not JSON"]),
    ({POOLS: '"special"'}, ["ipv4pools", "not a JSON list of strings"]),
    ({"cni.projectcalico.org/floatingIPs": '["192.0.2.7"]'}, ["floatingIPs", "does not support"]),
    ({ADDRS: '["10.99.9.9"]'}, ["cannot assign 10.99.9.9", "not in any IP pool"]),
])
def test_an_annotation_that_cannot_be_honoured_fails_the_add_and_takes_nothing(
    node, kube, annotations, words,
):
    added = _add(node, "default", "bad", annotations)
    assert added.code == 1, added.out
    msg = added.json["msg"]
    assert all(w in msg for w in words), msg
    assert added.json["code"] == (100 if "cannot assign" in msg else 104)
    assert _handles(kube) == []
