"""The pods' host routes kept by percale-node (node/pod_routes.py) in a real kernel: a route of
protocol 201 removed by hand was never put back, not even by restarting the agent, and the pod
stayed cut off while its WorkloadEndpoint listed the address. The agent here checks every
half second (--pod-routes-reconcile-seconds; 30 by default)."""

from __future__ import annotations

import ipaddress

import pytest

from percale.api.workloadendpoint import workload_endpoint_name
from percale.dataplane.route_owners import RouteProtocol
from percale.datastore import Key
from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode, netconf
from tests.helpers.store import with_store
from tests.netns.conftest import POOL, reset_store

pytestmark = pytest.mark.netns

POD = RouteProtocol.POD


@pytest.fixture(scope="module")
def node(etcd_server):
    reset_store(etcd_server.endpoint, {"pods": {"cidr": POOL}})
    cni = CNINode(etcd_server.unix_endpoint,
                  agent_args=["--pod-routes-reconcile-seconds", "0.5"]).start()
    yield cni
    cni.stop()


def add_pod(node: CNINode, pod: str) -> tuple[str, str, str]:
    """(netns, address, host veth) of a pod wired by a CNI ADD."""
    netns = node.new_pod_netns()
    added = node.plugin("percale", "ADD", netconf(node), container_id=f"c-{pod}", netns=netns,
                        args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}")
    assert added.code == 0, added.out
    address = str(ipaddress.ip_interface(added.json["ips"][0]["address"]).ip)
    return netns, address, added.json["interfaces"][0]["name"]


def routed(node: CNINode, address: str, veth: str) -> bool:
    return f"{address} dev {veth} proto {POD} scope link" in node.exec("ip", "route").stdout


def reachable(node: CNINode, address: str) -> bool:
    return node.exec("ping", "-c1", "-W1", address, check=False).returncode == 0


def test_routes_flushed_by_hand_are_put_back_within_a_round(node):
    pods = [add_pod(node, f"flushed-{i}") for i in range(2)]
    node.exec("ip", "route", "flush", "proto", str(POD))
    assert not any(routed(node, address, veth) for _, address, veth in pods)
    assert wait_for(lambda: all(routed(node, address, veth) for _, address, veth in pods), 10)
    assert all(reachable(node, address) for _, address, _ in pods)


def test_a_restarted_agent_puts_back_what_went_and_removes_what_no_endpoint_wants(
    node, etcd_server,
):
    """While the agent is down: one pod's route is deleted, another pod's endpoint goes (the
    pod was deleted then) while its veth stays, and a route of protocol 201 to an address no
    pod has is added through a live pod's veth."""
    kept_netns, kept, kept_veth = add_pod(node, "kept")
    _, orphan, orphan_veth = add_pod(node, "orphan")
    node.stop_agent()
    node.exec("ip", "route", "del", kept, "dev", kept_veth, "proto", str(POD))
    with_store(etcd_server.endpoint, lambda s: s.delete(
        Key("WorkloadEndpoint", workload_endpoint_name(node.name, "k8s", "orphan", "eth0"),
            "default")))
    stray = "10.244.255.254"
    node.exec("ip", "route", "add", stray, "dev", kept_veth, "proto", str(POD), "scope", "link")
    node.start_agent()
    assert wait_for(lambda: routed(node, kept, kept_veth), 10)
    assert wait_for(lambda: f"{orphan}/32" not in node.routes(POD)
                    and f"{stray}/32" not in node.routes(POD), 10)
    assert reachable(node, kept)
    assert orphan_veth in node.exec("ip", "link").stdout  # the route went, nothing else
