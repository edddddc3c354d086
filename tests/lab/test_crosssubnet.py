"""topologies/crosssubnet.clab.yml end to end: four percale nodes on two subnets joined by a
plain Linux router, meshed node to node across it, their pool with vxlanMode CrossSubnet: every
pod reaches every pod; a block of the own subnet is routed natively (BGP, via the node) and
traffic to it never touches vxlan.percale; a block across the router goes through the tunnel
(protocol 204, via the node's tunnel address, onlink); pods get the underlay's MTU less 50, and
a bulk TCP transfer across the router is never fragmented; the natOutgoing table is in place."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from percale.dataplane.route_owners import RouteProtocol
from percale.lab import pods
from tests.helpers.lab_checks import add_pods, percale_nodes, session_problems, settled
from tests.helpers.lab_e2e import every_pod_reaches_every_pod, running

pytestmark = pytest.mark.lab

TRANSFER = r"""
import socket, sys, threading
role, address = sys.argv[1], sys.argv[2]
if role == "serve":
    server = socket.socket(); server.bind((address, 5001)); server.listen(1)
    print("ready", flush=True)
    conn, _ = server.accept(); total = 0
    while chunk := conn.recv(65536):
        total += len(chunk)
    print(total, flush=True)
else:
    client = socket.create_connection((address, 5001), timeout=10)
    for _ in range(2000):
        client.sendall(b"x" * 1400)
    client.close()
"""


def vxlan_packets(lab, node: str) -> int:
    out = lab.exec(node, ["ip", "-j", "-s", "link", "show", "vxlan.percale"], capture=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["packets"]


def fragments_made(lab, node: str) -> int:
    """The node's IP fragments made (Ip: FragCreates, its own namespace's counter)."""
    out = lab.exec(node, ["cat", "/proc/net/snmp"], capture=True).stdout.splitlines()
    names, values = out[0].split(), out[1].split()
    return int(values[names.index("FragCreates")])


def test_pods_reach_each_other_natively_in_a_subnet_and_through_vxlan_across_it():
    with running("crosssubnet") as lab:
        add_pods(lab, per_node=1)
        nodes = percale_nodes(lab)
        problems = settled(lambda: [p for node, ip in nodes.items()
                                    for p in session_problems(lab, node, set(nodes.values()) - {ip})],
                           60)
        assert problems == [], problems
        assert every_pod_reaches_every_pod(lab) == []

        by_node = {p.node: p for p in pods.pods(lab)}
        subnets = {name: ipaddress.ip_interface(lab.topology.nodes[name].env["IP"]).network
                   for name in nodes}
        same, across = by_node["node2"], by_node["node3"]  # seen from node1 (10.0.1.0/24)
        block = {p.node: str(ipaddress.ip_network(f"{p.addresses[0]}/26", strict=False)) for p in by_node.values()}
        routes = lab.exec("node1", ["ip", "-j", "route"], capture=True).stdout
        table = {r["dst"]: r for r in json.loads(routes)}
        assert table[block["node2"]]["gateway"] == nodes["node2"]
        assert table[block["node2"]]["protocol"] == str(RouteProtocol.BGP)
        assert table[block["node3"]]["dev"] == "vxlan.percale" and "onlink" in table[block["node3"]]["flags"]
        assert table[block["node3"]]["protocol"] == str(RouteProtocol.VXLAN)
        assert subnets["node1"] == subnets["node2"] != subnets["node3"]

        # Traffic to the own subnet leaves vxlan.percale alone; across the router it goes through.
        source = by_node["node1"]
        before = vxlan_packets(lab, "node1")
        assert pods.ping(source, same.addresses[0], count=5)
        assert vxlan_packets(lab, "node1") == before
        assert pods.ping(source, across.addresses[0], count=5)
        assert vxlan_packets(lab, "node1") >= before + 5

        # MTU: the underlay's 1500 less VXLAN's 50, and 2.8 MB in 1,400-byte writes across the
        # router arrive whole without a fragment made anywhere on the way.
        for pod in by_node.values():
            link = pods_link(pod)
            assert link["mtu"] == 1450, (pod.name, link)
        fragments = {node: fragments_made(lab, node) for node in nodes}
        server = lab_popen(across.namespace, "serve", across.addresses[0])
        assert server.stdout.readline().strip() == "ready"
        lab_run(source.namespace, "send", across.addresses[0])
        assert int(server.stdout.readline()) == 2000 * 1400
        server.wait(10)
        assert {node: fragments_made(lab, node) for node in nodes} == fragments

        # natOutgoing: true in this topology's pool, so each node holds the table.
        ruleset = lab.exec("node1", ["nft", "list", "table", "ip", "percale"], capture=True).stdout
        assert "masquerade fully-random" in ruleset and "10.244.0.0/16" in ruleset


def pods_link(pod) -> dict:
    out = subprocess.run(["ip", "-j", "-n", pod.namespace, "link", "show", "eth0"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)[0]


def lab_popen(namespace: str, role: str, address: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", TRANSFER, role, address],
                            stdout=subprocess.PIPE, text=True)


def lab_run(namespace: str, role: str, address: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", TRANSFER, role, address],
                   check=True, timeout=60)
