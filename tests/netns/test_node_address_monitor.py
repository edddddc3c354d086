"""A node's address moving while percale-node runs, on a real kernel with real agents and etcd
(node/address_monitor.py, vxlan/agent.py): an agent started with --ip autodetect finds the new
address within a few AUTODETECT_POLL_INTERVALs, writes it to its Node, and a pod on another
node reaches a pod on it over VXLAN again (before, the Node kept the old address until the agent
restarted, and the other nodes tunnelled to it); a VXLAN device removed because no interface
holds the Node's address is said once, naming the address, and its return too."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest

from percale.api import parse
from percale.datastore import Key
from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode, sh
from tests.helpers.ipam_world import add_pool
from tests.helpers.store import put_node, with_store

pytestmark = pytest.mark.netns

POOL = "10.244.0.0/16"


def name() -> str:
    return f"fxa{uuid.uuid4().hex[:6]}"


@dataclass
class FabricNode(CNINode):
    """A CNINode joined to `peer` (a started CNINode) by a veth pair `fabric`, 10.99.0.1/24 here
    and 10.99.0.2/24 there, made before its agent first starts: the agent detects its address
    on it at start."""

    peer: CNINode | None = None

    def start_agent(self) -> None:
        if self.exec("ip", "link", "show", "fabric", check=False).returncode != 0:
            assert self.peer is not None
            sh("ip", "link", "add", "fabric", "netns", self.netns, "type", "veth", "peer", "name",
               "fabric", "netns", self.peer.netns)
            for node, address in ((self, "10.99.0.1/24"), (self.peer, "10.99.0.2/24")):
                node.exec("ip", "addr", "add", address, "dev", "fabric")
                node.exec("ip", "link", "set", "fabric", "up")
        super().start_agent()


def node_address(endpoint: str, node: str) -> str | None:
    async def read(store):
        bgp = (await store.get(Key("Node", node))).value.spec.bgp
        return str(bgp.ipv4_address) if bgp and bgp.ipv4_address else None
    return with_store(endpoint, read)


def pings(pod: str, address) -> bool:
    return subprocess.run(["ip", "netns", "exec", pod, "ping", "-c1", "-W1", str(address)],
                          capture_output=True).returncode == 0


def test_a_moved_autodetected_address_reaches_the_node_and_pods_across_vxlan(etcd, monkeypatch):
    # Through the environment, as calico-node takes it (and an agent without the setting still
    # starts, and only never follows the move).
    monkeypatch.setenv("AUTODETECT_POLL_INTERVAL", "1s")
    with_store(etcd.endpoint, lambda store: add_pool(store, "pods", POOL, vxlanMode="Always"))
    backend = ["--networking-backend", "vxlan"]
    b = CNINode(etcd.unix_endpoint, name=name(), agent_args=backend)
    a = FabricNode(etcd.unix_endpoint, name=name(), ip="autodetect", peer=b,
                   agent_args=[*backend, "--ip-autodetection-method", "interface=^fabric$"])
    try:
        b.start()
        a.start()
        with_store(etcd.endpoint, lambda store: put_node(store, parse({
            "apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": b.name},
            "spec": {"bgp": {"ipv4Address": "10.99.0.2/24"}}})))
        assert node_address(etcd.endpoint, a.name) == "10.99.0.1/24"
        pod_a, address_a = a.add_pod()
        pod_b, _ = b.add_pod()
        assert wait_for(lambda: pings(pod_b, address_a), 20), "no VXLAN path before the move"

        # The address moves, as a DHCP lease or a re-IP moves it: the new one first.
        a.exec("sysctl", "-qw", "net.ipv4.conf.fabric.promote_secondaries=1")
        a.exec("ip", "addr", "add", "10.99.0.3/24", "dev", "fabric")
        a.exec("ip", "addr", "del", "10.99.0.1/24", "dev", "fabric")

        assert wait_for(lambda: node_address(etcd.endpoint, a.name) == "10.99.0.3/24", 8), (
            f"Node {a.name} still says {node_address(etcd.endpoint, a.name)}")
        fdb = lambda: b.exec("bridge", "fdb", "show", "dev", "vxlan.percale").stdout  # noqa: E731
        assert wait_for(lambda: "dst 10.99.0.3" in fdb(), 10), fdb()
        assert wait_for(lambda: pings(pod_b, address_a), 10), "no VXLAN path after the move"
        log = (a.workdir / "agent.log").read_text()
        assert (f"Node {a.name}: IPv4 address changed from 10.99.0.1/24 to 10.99.0.3/24 (detected"
                " again with --ip-autodetection-method interface=^fabric$)") in log
    finally:
        a.stop()
        b.stop()


def set_address(endpoint: str, node: str, address: str, **bgp) -> None:
    """Node `node`'s IPv4 address (and other spec.bgp fields) as given, the rest of its spec (the
    tunnel address and MAC the agent wrote) kept."""
    async def write(store):
        current = await store.get(Key("Node", node))
        document = current.value.to_document()
        document["spec"]["bgp"] = {"ipv4Address": address, **bgp}
        await store.update(parse(document), revision=current.revision)
    with_store(endpoint, write)


def test_a_vxlan_device_removed_for_want_of_the_nodes_address_is_said_once(etcd):
    with_store(etcd.endpoint, lambda store: add_pool(store, "pods", POOL, vxlanMode="Always"))
    node = CNINode(etcd.unix_endpoint, name=name(), agent_args=["--networking-backend", "vxlan"])

    def device() -> bool:
        shown = node.exec("ip", "-j", "link", "show", "type", "vxlan").stdout
        return any(link["ifname"] == "vxlan.percale" for link in json.loads(shown or "[]"))

    def said(text: str) -> list[str]:
        return [line for line in (node.workdir / "agent.log").read_text().splitlines()
                if text in line]

    try:
        node.start()  # --ip none: the Node is the test's to write
        with_store(etcd.endpoint, lambda store: put_node(store, parse({
            "apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": node.name},
            "spec": {"bgp": {"ipv4Address": "192.0.2.10/24"}}})))
        assert wait_for(device, 10), "no vxlan.percale on eth0's 192.0.2.10"

        set_address(etcd.endpoint, node.name, "192.0.2.99/24")  # on no interface of the node
        assert wait_for(lambda: not device(), 10)
        assert wait_for(lambda: said("no interface holds 192.0.2.99"), 5)
        set_address(etcd.endpoint, node.name, "192.0.2.99/24", asNumber=65010)  # another pass
        time.sleep(1)
        assert said("no interface holds") == [said("no interface holds")[0]]
        warning = said("no interface holds")[0]
        assert " WARNING percale.vxlan: " in warning
        assert warning.endswith(
            "no interface holds 192.0.2.99, this node's IPv4 address on its Node: vxlan.percale "
            "removed, and the IPv4 VXLAN routes wait until an interface has it or the Node names "
            "another address")

        set_address(etcd.endpoint, node.name, "192.0.2.10/24")
        assert wait_for(device, 10), "vxlan.percale not made again"
        assert wait_for(lambda: said("vxlan.percale made again"), 5)
        assert " INFO percale.vxlan: vxlan.percale made again on the interface holding " \
               "192.0.2.10, this node's IPv4 address" in said("vxlan.percale made again")[0]
    finally:
        node.stop()
