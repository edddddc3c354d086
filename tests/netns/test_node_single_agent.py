"""One percale-node per node, with a real agent serving CNI in its namespace: a second one started
for the same node (the same command, another health port so the port is not what stops it) is
refused at once, and the first goes on serving. It used to start, take over cni.sock and
status.sock, and kill the first one's ExaBGP through the shared exabgp.pid, for as long as both
ran; and whichever stopped first removed the sockets the other served."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.helpers.cni_node import CNINode, netconf
from tests.netns.conftest import POOL, reset_store

pytestmark = pytest.mark.netns


def test_a_second_agent_is_refused_and_the_first_keeps_serving_and_leaves_others_sockets(
        etcd_server):
    reset_store(etcd_server.endpoint, {"pods": {"cidr": POOL}})
    node = CNINode(etcd_server.unix_endpoint).start()
    try:
        second = subprocess.run(
            ["ip", "netns", "exec", node.name, *node.agent_command, "--node-name", node.name,
             "--cni-socket", node.socket, *node.datastore_args, "--bgp-dir",
             str(node.workdir / "bgp"), "--status-socket", node.status_socket, "--ip", "none",
             "--health-listen", "127.0.0.1:9098"],
            capture_output=True, text=True, timeout=30)
        lock = node.workdir / "bgp" / "percale-node.lock"
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"percale-node: another percale-node (pid {node.agent.pid}) is running for node "
            f"{node.name} (lock {lock})"), second.stderr
        added = node.plugin("percale", "ADD", netconf(node), container_id="c-first",
                            netns=node.new_pod_netns(),
                            args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=first")
        assert added.code == 0, added.out

        # Another process serves at the CNI socket's path now: the agent, stopping, leaves its
        # file alone, and removes its own status socket.
        Path(node.socket).unlink()
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(node.socket)
            other.listen()
            node.stop_agent()
            assert node.agent.returncode == 0
            assert Path(node.socket).exists()
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(node.socket)  # still the other one's
            assert not Path(node.status_socket).exists()
    finally:
        node.stop()
