"""percale-node finding its own address on a real kernel, a fresh namespace per test: the links
are walked from the last made to the first (Calico's GetInterfaces walks link indexes downward),
interface names match anywhere, skip-interface keeps first-found's exclusions, and an agent
started with no --ip registers the address it found, and keeps the one its Node has."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from percale.api import parse
from percale.datastore import Key
from tests.helpers.cni_node import VENV_BIN, CNINode, sh
from tests.helpers.store import with_store

pytestmark = pytest.mark.netns

DETECT = ("import sys\n"
          "from percale.dataplane.host import host_addresses\n"
          "from percale.node.registration import autodetect\n"
          "print(autodetect(4, sys.argv[1], host_addresses()))\n")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pad-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def add_link(netns: str, name: str, address: str) -> None:
    """A link named `name` holding `address`, made now (so with the highest index yet): one end
    of a veth pair, as this kernel has no dummy device; the other end stays down, unaddressed."""
    peer = f"p{uuid.uuid4().hex[:8]}"
    sh("ip", "-n", netns, "link", "add", name, "type", "veth", "peer", "name", peer)
    sh("ip", "-n", netns, "addr", "add", address, "dev", name)
    sh("ip", "-n", netns, "link", "set", name, "up")


def detect(netns: str, method: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, str(VENV_BIN / "python"), "-c", DETECT,
                           method], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_link_made_last_is_looked_at_first(netns):
    add_link(netns, "eth0", "10.0.0.5/24")
    add_link(netns, "eth1", "192.168.7.5/24")
    add_link(netns, "docker0", "172.17.0.1/16")
    assert detect(netns, "first-found") == "192.168.7.5/24"
    assert detect(netns, "interface=eth") == "192.168.7.5/24"
    assert detect(netns, "cidr=10.0.0.0/8,192.168.0.0/16") == "192.168.7.5/24"
    # Found anywhere in the name: h0 is eth0's (and not docker0's).
    assert detect(netns, "interface=h0") == "10.0.0.5/24"
    # The user's pattern and first-found's: not docker0, made after eth0.
    assert detect(netns, "skip-interface=eth1") == "10.0.0.5/24"


def test_an_agent_with_no_ip_registers_what_it_finds_and_keeps_what_its_node_has(etcd):
    node = CNINode(etcd.unix_endpoint, name=f"pad-{uuid.uuid4().hex[:6]}", ip=None)

    async def address(store) -> str:
        return str((await store.get(Key("Node", node.name))).value.spec.bgp.ipv4_address)

    try:
        node.start()  # no --ip and no Node; eth0 has 192.0.2.10/24
        assert with_store(etcd.endpoint, address) == "192.0.2.10/24"
        log = (node.workdir / "agent.log").read_text()
        assert ("Using autodetected IPv4 address 192.0.2.10/24 on interface eth0"
                " (--ip-autodetection-method first-found)") in log

        async def move(store) -> None:
            current = await store.get(Key("Node", node.name))
            await store.update(parse({
                "apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": node.name},
                "spec": {"bgp": {"ipv4Address": "198.51.100.7/24"}}}), revision=current.revision)

        with_store(etcd.endpoint, move)
        node.restart_agent()
        assert with_store(etcd.endpoint, address) == "198.51.100.7/24"
        log = (node.workdir / "agent.log").read_text()
        assert f"--ip is empty: Node {node.name} keeps its IPv4 address 198.51.100.7/24" in log
    finally:
        node.stop()
