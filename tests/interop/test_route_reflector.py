"""Two percale nodes as clients of a percale route reflector, the mesh off: the reflector passes
each client's blocks to the other (next hop unchanged, or the reflector's own with the BGPPeer's
`nextHopMode: Self`), and pods on the clients reach each other with no outside router."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time

import pytest

from percale.dataplane.route_owners import RouteProtocol

from percale.api import parse
from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode, netconf, sh
from tests.helpers.ipam_world import add_pool
from tests.helpers.store import with_store

pytestmark = pytest.mark.interop


def doc(kind: str, name: str, spec: dict, labels: dict | None = None) -> object:
    return parse({"apiVersion": "percale.io/v1", "kind": kind,
                  "metadata": {"name": name, "labels": labels or {}}, "spec": spec})


@pytest.mark.parametrize("next_hop_mode", [None, "Self"])
def test_percale_reflector_carries_routes_between_clients(etcd, next_hop_mode):
    fabric = f"fab{int(time.time() * 1000) % 100000}"
    nodes = [CNINode(etcd.unix_endpoint) for _ in range(3)]  # reflector, client a, client b
    try:
        sh("ip", "netns", "add", fabric)
        sh("ip", "netns", "exec", fabric, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", fabric, "ip", "link", "set", "br0", "up")
        for i, node in enumerate(nodes, start=1):
            node.start()
            sh("ip", "link", "add", "fabric", "netns", node.netns, "type", "veth",
               "peer", "name", f"port{i}", "netns", fabric)
            sh("ip", "netns", "exec", fabric, "ip", "link", "set", f"port{i}", "master", "br0", "up")
            node.exec("ip", "addr", "add", f"10.99.0.{i}/24", "dev", "fabric")
            node.exec("ip", "link", "set", "fabric", "up")
        reflector, a, b = nodes

        async def configure(store):
            await add_pool(store, "pods", "10.244.0.0/16")
            await store.create(doc("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": False}))
            await store.create(doc("Node", reflector.name, {"bgp": {
                "ipv4Address": "10.99.0.1/24", "routeReflectorClusterID": "244.0.0.1"}},
                labels={"route-reflector": "true"}))
            for node, n in ((a, 2), (b, 3)):
                await store.create(doc("Node", node.name, {"bgp": {"ipv4Address": f"10.99.0.{n}/24"}}))
            mode = {"nextHopMode": next_hop_mode} if next_hop_mode else {}
            await store.create(doc("BGPPeer", "to-reflectors", {
                "nodeSelector": "all()", "peerSelector": "route-reflector == 'true'", **mode}))

        with_store(etcd.endpoint, configure)
        pods = {}
        for node in (a, b):
            netns = node.new_pod_netns()
            added = node.plugin("percale", "ADD", netconf(node), container_id=f"c-{node.name}",
                                netns=netns, args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{node.name}")
            assert added.code == 0, added.out
            pods[node.name] = (netns, ipaddress.ip_interface(added.json["ips"][0]["address"]).ip)

        def route_to(node: CNINode, address) -> dict | None:
            routes = json.loads(node.exec("ip", "-j", "route", "show", "proto", str(RouteProtocol.BGP)).stdout or "[]")
            return next((r for r in routes if address in ipaddress.ip_network(r["dst"])), None)

        assert wait_for(lambda: route_to(a, pods[b.name][1]) and route_to(b, pods[a.name][1]), 40), (
            a.exec("ip", "route").stdout + (reflector.workdir / "agent.log").read_text()[-2000:]
            + (reflector.workdir / "bgp" / "exabgp.log").read_text()[-3000:])
        if next_hop_mode == "Self":
            # The reflector's own address: the clients send through it, and it forwards.
            assert route_to(a, pods[b.name][1])["gateway"] == "10.99.0.1"
            assert route_to(b, pods[a.name][1])["gateway"] == "10.99.0.1"
        else:
            # Reflected with the next hop unchanged: straight to the other client.
            assert route_to(a, pods[b.name][1])["gateway"] == "10.99.0.3"
            assert route_to(b, pods[a.name][1])["gateway"] == "10.99.0.2"
        ping = subprocess.run(["ip", "netns", "exec", pods[a.name][0], "ping", "-c3", "-i0.2", "-W2",
                               str(pods[b.name][1])], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout
    finally:
        for node in nodes:
            node.stop()
        sh("ip", "netns", "del", fabric, check=False)
