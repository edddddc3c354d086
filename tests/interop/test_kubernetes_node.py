"""percale-node on the Kubernetes datastore: two nodes whose agents keep everything in a real
kube-apiserver (reached from their namespaces through a relay) mesh over BGP, wire pods whose
Kubernetes Pods carry the endpoint, and publish their status, as on etcd."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from percale.dataplane.route_owners import RouteProtocol
from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode, meshed_pair, netconf
from tests.interop.test_node_status import datastore_status, established_with, local_status, shown

pytestmark = pytest.mark.interop


def _add(node: CNINode, pod: str):
    netns = node.new_pod_netns()
    node.kube.pod("default", pod, node=node.name, labels={"app": pod})
    added = node.plugin("percale", "ADD", netconf(node), container_id=f"c-{pod}", netns=netns,
                        args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}")
    assert added.code == 0, added.out + (node.workdir / "agent.log").read_text()[-3000:]
    return netns, ipaddress.ip_interface(added.json["ips"][0]["address"]).ip


def test_two_nodes_on_the_kubernetes_datastore(etcd, kube):
    a, b = meshed_pair(etcd.endpoint, etcd.unix_endpoint, kube=kube)
    try:
        pods = {node.name: _add(node, f"web-{node.name}") for node in (a, b)}

        # The endpoint is written on the Pod, through pods/status.
        pod = kube.get_json("pod", "-n", "default", f"web-{a.name}")
        annotations = pod["metadata"]["annotations"]
        assert annotations["percale.io/podIP"] == f"{pods[a.name][1]}/32"
        assert annotations["percale.io/containerID"] == f"c-web-{a.name}"

        def learned(node: CNINode, other: CNINode) -> bool:
            routes = json.loads(node.exec("ip", "-j", "route", "show", "proto",
                                          str(RouteProtocol.BGP)).stdout or "[]")
            return any(pods[other.name][1] in ipaddress.ip_network(r["dst"]) for r in routes)

        assert wait_for(lambda: learned(a, b) and learned(b, a), 30), (
            a.exec("ip", "route").stdout + (a.workdir / "agent.log").read_text()[-3000:])
        for (netns, _), (_, ip) in ((pods[a.name], pods[b.name]), (pods[b.name], pods[a.name])):
            ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c2", "-i0.2", "-W2", str(ip)],
                                  capture_output=True, text=True)
            assert ping.returncode == 0, ping.stdout

        # Status: from the agent's socket, and the NodeStatus it publishes in the apiserver.
        pattern = established_with("10.99.0.2")
        assert shown(lambda: local_status(a), pattern), local_status(a).stdout
        assert shown(lambda: datastore_status(kube.admin, "--node", a.name), pattern), (
            datastore_status(kube.admin, "--node", a.name).stdout)
        # The node's addresses went to its Kubernetes Node as percale.io annotations.
        node = kube.get_json("node", a.name)
        assert node["metadata"]["annotations"]["percale.io/IPv4Address"] == "10.99.0.1/24"

        # DEL: the endpoint leaves the Pod, the container ID stays (as Calico's does).
        deleted = a.plugin("percale", "DEL", netconf(a), container_id=f"c-web-{a.name}",
                           netns=pods[a.name][0], args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{a.name}")
        assert deleted.code == 0, deleted.out
        annotations = kube.get_json("pod", "-n", "default", f"web-{a.name}")["metadata"]["annotations"]
        assert "percale.io/podIP" not in annotations
        assert annotations["percale.io/containerID"] == f"c-web-{a.name}"
    finally:
        a.stop()
        b.stop()


def test_an_agent_takes_its_address_from_its_kubernetes_node(etcd, kube):
    """IP=autodetect with kubernetes-internal-ip (what the operator renders for `kubernetes:
    NodeInternalIP`): the node's BGP address is its Kubernetes Node's InternalIP, 192.0.2.10,
    with the prefix of the interface that carries it."""
    node = CNINode(etcd.unix_endpoint, kube=kube,
                   agent_args=["--ip", "autodetect", "--ip-autodetection-method", "kubernetes-internal-ip"])
    try:
        node.start()
        annotations = kube.get_json("node", node.name)["metadata"]["annotations"]
        assert annotations["percale.io/IPv4Address"] == "192.0.2.10/24"
    finally:
        node.stop()
