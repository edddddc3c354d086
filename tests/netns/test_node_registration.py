"""percale-node registering its own Node with --ip, in a node namespace: it waits for a datastore
that is not up yet instead of giving up, then writes the Node; a bad --ip is one line naming
the flag, and nothing is written."""

from __future__ import annotations

import subprocess
import threading

import pytest

from percale.datastore import Key
from tests.helpers.cni_node import VENV_BIN, CNINode
from tests.helpers.etcd_server import EtcdServer
from tests.helpers.store import with_store

pytestmark = pytest.mark.netns


def test_agent_waits_for_etcd_then_registers_its_address():
    server = EtcdServer()  # not started yet
    node = CNINode(server.unix_endpoint, agent_args=["--ip", "192.0.2.10/24", "--as", "65010"])
    starter = threading.Timer(3.0, server.start)
    try:
        starter.start()
        node.start()  # returns once the agent serves CNI: after it registered
        assert starter.finished.is_set()

        async def read(store):
            return (await store.get(Key("Node", node.name))).value.spec.bgp

        bgp = with_store(server.endpoint, read)
        assert (str(bgp.ipv4_address), bgp.as_number) == ("192.0.2.10/24", 65010)
        assert "datastore not reachable yet" in (node.workdir / "agent.log").read_text()
    finally:
        starter.cancel()
        node.stop()
        server.stop()


def test_a_bad_address_is_refused_naming_the_flag(etcd):
    node = CNINode(etcd.unix_endpoint)
    try:
        subprocess.run(["ip", "netns", "add", node.name], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", node.name, str(VENV_BIN / "percale-node"), "--node-name",
             node.name, "--etcd-endpoints", etcd.unix_endpoint, "--ip", "192.0.2.10"],
            capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert done.stderr.strip() == ("percale-node: --ip: '192.0.2.10' needs its prefix length "
                                       "(for example 192.0.2.10/24): the subnet decides which "
                                       "peers are in another subnet")

        async def nodes(store):
            return (await store.list("Node")).items

        assert with_store(etcd.endpoint, nodes) == []
    finally:
        subprocess.run(["ip", "netns", "del", node.name], check=False)
