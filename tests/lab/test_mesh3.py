"""mesh3 end to end (topologies/mesh3.clab.yml): three percale nodes in a node-to-node mesh, etcd
and percale-controllers on the management network, pods wired by the CNI plugins as a runtime
wires them. One lab for the module; the tests run in file order and leave it as they found it
(two pods per node)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from percale.dataplane.route_owners import RouteProtocol

from percale.lab import pods
from tests.helpers.cni_node import exabgp_servers
from tests.helpers.lab_e2e import (
    TOPOLOGIES,
    all_established,
    every_pod_reaches_every_pod,
    kernel_routes,
    node_status,
    running,
    wait_for,
)

pytestmark = pytest.mark.lab

NODES = ("node1", "node2", "node3")
ADDRESSES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
TOPOLOGY = TOPOLOGIES / "mesh3.clab.yml"
PERCALECTL = str(Path(sys.executable).parent / "percalectl")


@pytest.fixture(scope="module")
def lab():
    with running(TOPOLOGY) as lab:
        for node in NODES:
            for i in (1, 2):
                pods.add(lab, node, f"{node}-p{i}")
        yield lab


def blocks_of(lab, node: str) -> set[str]:
    """The blocks `node` blackholes: exactly the blocks it owns."""
    return set(kernel_routes(lab, node, proto=RouteProtocol.BLACKHOLE))


def test_every_pod_reaches_every_pod(lab):
    assert every_pod_reaches_every_pod(lab) == []
    # The same through the CLI a user runs.
    done = subprocess.run([PERCALECTL, "lab", "ping", "-t", str(TOPOLOGY)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "30/30 pairs reached" in done.stdout


def test_node_status_shows_every_mesh_peer_established(lab):
    for node in NODES:
        assert wait_for(lambda node=node: all_established(lab, node, 2), 30), node_status(lab, node)
        others = {ADDRESSES[n] for n in NODES if n != node}
        assert set(node_status(lab, node)) == others
        out = lab.exec(node, ["percalectl", "node", "status"], capture=True).stdout
        assert out.startswith("percale process is running.\n")
        assert out.count("| node-to-node mesh | up    |") == 2, out


def test_each_node_has_a_route_to_every_other_nodes_block(lab):
    for node in NODES:
        expected = {block: ADDRESSES[other] for other in NODES if other != node
                    for block in blocks_of(lab, other)}
        assert len(expected) == 2
        assert wait_for(lambda node=node, expected=expected: kernel_routes(lab, node) == expected, 20), (
            node, kernel_routes(lab, node), expected)


def test_killed_agent_keeps_routes_both_ways_then_comes_back(lab):
    """SIGKILL node2's agent, as a crash of its container does (`lab stop --kill` kills the
    node's whole process tree, ExaBGP included; tests/interop/test_exabgp_leftover.py covers an
    agent killed alone). The peers see a graceful restart: node2's block stays in node1's and
    node3's kernels all along (stale, then refreshed), node2's kernel keeps its routes, and a
    ping from a pod on node1 to a pod on node2 loses nothing."""
    node2_block = blocks_of(lab, "node2")
    source = next(p for p in pods.pods(lab) if p.node == "node1")
    target = next(p for p in pods.pods(lab) if p.node == "node2")
    stop_sampling = threading.Event()
    samples: list[bool] = []

    def sample():
        while not stop_sampling.is_set():
            samples.append(all(node2_block <= set(kernel_routes(lab, node))
                               for node in ("node1", "node3")))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    ping = subprocess.Popen(["ip", "netns", "exec", source.namespace, "ping", "-n", "-q",
                             "-i", "0.2", "-W", "1", target.addresses[0]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler.start()
    try:
        time.sleep(1)
        lab.stop("node2", signal.SIGKILL)
        assert not lab.node_running("node2")
        time.sleep(2)  # the agent stays away a while
        assert len(kernel_routes(lab, "node2")) == 2  # node2's own kernel, agent gone
        lab.start("node2")
        for node in NODES:
            assert wait_for(lambda node=node: all_established(lab, node, 2), 60), (node, node_status(lab, node))
        time.sleep(2)  # and a while after, for anything swept late
    finally:
        stop_sampling.set()
        sampler.join()
        ping.send_signal(signal.SIGINT)
        out = ping.communicate(timeout=10)[0]
    assert len(samples) > 20 and all(samples), samples
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert sent > 20 and received == sent, out
    assert blocks_of(lab, "node2") == node2_block
    node2_ns = lab.topology.namespace("node2")
    assert len(exabgp_servers(node2_ns)) == 1, exabgp_servers(node2_ns)
    assert every_pod_reaches_every_pod(lab) == []


def test_pod_churn_releases_and_reclaims_blocks_and_routes_follow(lab):
    """node3 fills its block and claims a second; once those pods are deleted, percale-controllers
    gives the emptied block back (never the node's last) and the other nodes lose its route;
    filling again claims a block again and the routes follow. Nothing leaks."""
    first = blocks_of(lab, "node3")
    churn = [f"node3-c{i}" for i in range(64)]

    def add_all():
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda name: pods.add(lab, "node3", name), churn))

    def delete_all():
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda name: pods.delete(lab, name), churn))

    for _ in range(2):
        add_all()
        assert wait_for(lambda: len(blocks_of(lab, "node3")) == 2, 20), blocks_of(lab, "node3")
        second = blocks_of(lab, "node3") - first
        for node in ("node1", "node2"):
            assert wait_for(lambda node=node, second=second: second <= set(kernel_routes(lab, node)), 20), node
        delete_all()
        # The controllers' rounds (every 2 s) see the block empty twice, then give it back.
        assert wait_for(lambda: blocks_of(lab, "node3") == first, 60), blocks_of(lab, "node3")
        for node in ("node1", "node2"):
            assert wait_for(lambda node=node, second=second: not second & set(kernel_routes(lab, node)), 20), node

    assert every_pod_reaches_every_pod(lab) == []
    check = lab.exec("node1", ["percalectl", "ipam", "check"], capture=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Found 0 IPs that are allocated in IPAM but not actually in use." in check.stdout
    assert re.search(r"Found 0 handles with no matching IPs", check.stdout), check.stdout
    assert "Found 0 handles whose counts overstate" in check.stdout


POOL = """apiVersion: percale.io/v1
kind: IPPool
metadata: {{name: pods}}
spec: {{cidr: 10.244.0.0/16, blockSize: 26, ipipMode: Never, vxlanMode: {mode}, natOutgoing: {nat}}}
"""


def apply_pool(lab, mode: str = "Never", nat: str = "true") -> None:
    done = lab.exec("node1", ["percalectl", "apply", "-f", "-"], capture=True,
                    input=POOL.format(mode=mode, nat=nat))
    assert done.returncode == 0, done.stderr


def test_switching_the_pool_between_modes_keeps_every_pod_reachable_and_no_old_route(lab):
    """Never -> CrossSubnet -> Always -> Never on the running lab. One subnet: CrossSubnet
    leaves every block to BGP (202); Always takes each over into vxlan.percale (204) and BGP lets
    go; Never gives them back. After each change the matrix is complete and the other mode's
    routes for the other nodes' blocks are gone."""
    blocks = {node: blocks_of(lab, node) for node in NODES}
    try:
        for mode, protocol, other in (("CrossSubnet", RouteProtocol.BGP, RouteProtocol.VXLAN),
                                      ("Always", RouteProtocol.VXLAN, RouteProtocol.BGP),
                                      ("Never", RouteProtocol.BGP, RouteProtocol.VXLAN)):
            apply_pool(lab, mode)

            def settled() -> bool:
                for node in NODES:
                    theirs = set().union(*(blocks[n] for n in NODES if n != node))
                    mine = set(kernel_routes(lab, node, proto=protocol))
                    left = set(kernel_routes(lab, node, proto=other))
                    if not theirs <= mine or theirs & left:
                        return False
                return True

            assert wait_for(settled, 20), (mode, {n: (kernel_routes(lab, n, proto=RouteProtocol.BGP),
                                                      kernel_routes(lab, n, proto=RouteProtocol.VXLAN))
                                                  for n in NODES})
            assert every_pod_reaches_every_pod(lab) == [], mode
        for node in NODES:  # Never: the device, its tunnel ends and its routes are gone
            assert "vxlan.percale" not in lab.exec(node, ["ip", "-o", "link"], capture=True).stdout
    finally:
        apply_pool(lab, "Never")


LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7777)); s.settimeout(10)
print("ready", flush=True)
data, (source, _) = s.recvfrom(100)
print(source, flush=True)
"""
SEND = r"""
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hello", (sys.argv[1], 7777))
"""


def source_seen_outside(lab, pod) -> str:
    """The source address a host outside the pools (the management network's gateway, an
    "internet" host on the underlay) sees for a datagram from `pod`."""
    mgmt = lab.topology.mgmt_namespace
    gateway = str(next(lab.topology.mgmt_subnet.hosts()))
    listener = subprocess.Popen(["ip", "netns", "exec", mgmt, sys.executable, "-c", LISTEN],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", pod.namespace, sys.executable, "-c", SEND, gateway],
                       check=True)
        return listener.stdout.readline().strip()
    finally:
        listener.kill()
        listener.wait()


def test_nat_outgoing_masquerades_only_traffic_leaving_the_pools(lab):
    source = next(p for p in pods.pods(lab) if p.node == "node2")
    node_address = str(lab.topology.mgmt_addresses()["node2"].ip)
    try:
        apply_pool(lab, nat="true")
        assert wait_for(lambda: source_seen_outside(lab, source) == node_address, 10)
        apply_pool(lab, nat="false")
        assert wait_for(lambda: source_seen_outside(lab, source) == source.addresses[0], 10)
        tables = lab.exec("node2", ["nft", "list", "tables"], capture=True).stdout.splitlines()
        # No pool to masquerade: the NAT table is gone (policy's `inet percale` stays).
        assert "table ip percale" not in tables and "table inet percale" in tables
    finally:
        apply_pool(lab, nat="true")
    # Pod to pod keeps the pods' addresses (the matrix pings would not reach otherwise either).
    assert every_pod_reaches_every_pod(lab) == []
