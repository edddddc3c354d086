"""Two percale nodes in a node-to-node mesh: each announces the blocks IPAM gives it, learns
the other's into its kernel, and pods on different nodes reach each other."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from percale.dataplane.route_owners import RouteProtocol

from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode, meshed_pair, netconf

pytestmark = pytest.mark.interop


def test_pods_on_two_nodes_reach_each_other(etcd):
    a, b = meshed_pair(etcd.endpoint, etcd.unix_endpoint)
    try:
        pods = {}
        for node in (a, b):
            netns = node.new_pod_netns()
            added = node.plugin("percale", "ADD", netconf(node), container_id=f"c-{node.name}",
                                netns=netns, args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{node.name}")
            assert added.code == 0, added.out
            pods[node.name] = (netns, ipaddress.ip_interface(added.json["ips"][0]["address"]).ip)

        def learned(node: CNINode, other: CNINode) -> bool:
            routes = json.loads(node.exec("ip", "-j", "route", "show", "proto", str(RouteProtocol.BGP)).stdout or "[]")
            other_ip = pods[other.name][1]
            return any(ipaddress.ip_address(other_ip) in ipaddress.ip_network(r["dst"]) for r in routes)

        assert wait_for(lambda: learned(a, b) and learned(b, a), 30), (
            a.exec("ip", "route").stdout + b.exec("ip", "route").stdout
            + (a.workdir / "agent.log").read_text()[-2000:])
        route = json.loads(a.exec("ip", "-j", "route", "show", "proto", str(RouteProtocol.BGP)).stdout)[0]
        assert route["gateway"] == "10.99.0.2"
        # Each node blackholes its own block: unused addresses in it stop here.
        own_block = str(ipaddress.ip_interface(f"{pods[a.name][1]}/26").network)
        def blackholes() -> list:
            routes = json.loads(a.exec("ip", "-j", "route", "show", "proto", str(RouteProtocol.BLACKHOLE)).stdout or "[]")
            return [(r["dst"], r["type"]) for r in routes]

        # Installed right after the block is announced (announcing goes first).
        assert wait_for(lambda: blackholes() == [(own_block, "blackhole")], 10), blackholes()

        netns_a, ip_a = pods[a.name]
        netns_b, ip_b = pods[b.name]
        ping = subprocess.run(["ip", "netns", "exec", netns_a, "ping", "-c3", "-i0.2", "-W2", str(ip_b)],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout
        back = subprocess.run(["ip", "netns", "exec", netns_b, "ping", "-c3", "-i0.2", "-W2", str(ip_a)],
                              capture_output=True, text=True)
        assert back.returncode == 0, back.stdout
    finally:
        a.stop()
        b.stop()
