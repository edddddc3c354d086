"""`percalectl node status` against real agents: two percale nodes in a node-to-node mesh (set
up as in test_mesh.py), asked over each agent's status socket from inside its namespace, and
through the NodeStatus records they publish; and an agent that has stopped."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import VENV_BIN, CNINode, meshed_pair
from tests.helpers.store import store_env

pytestmark = pytest.mark.interop

PERCALECTL = str(VENV_BIN / "percalectl")

# calico.md §5.2 for a node with one mesh peer and no IPv6 peers; SINCE is the session's time.
ONE_MESH_PEER = """\
percale process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| PEER         | node-to-node mesh | up    | HH:MM:SS | Established |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
No IPv6 peers found.

"""


def established_with(peer: str) -> str:
    """A pattern for ONE_MESH_PEER with `peer` (padded to the column) and any SINCE."""
    text = ONE_MESH_PEER.replace("PEER        ", f"{peer:<12}")
    return re.escape(text).replace("HH:MM:SS", r"(\d\d:\d\d:\d\d)")


def local_status(node: CNINode) -> subprocess.CompletedProcess:
    """`percalectl node status` as root on the node: inside its namespace, at its socket."""
    done = node.exec(PERCALECTL, "node", "status", "--status-socket", node.status_socket,
                     check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def datastore_status(etcd_endpoint: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([PERCALECTL, "node", "status", *args], capture_output=True, text=True,
                          env={**os.environ, **store_env(etcd_endpoint)}, timeout=60,
                          check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def shown(run: Callable[[], subprocess.CompletedProcess], pattern: str,
          timeout: float = 30) -> re.Match | None:
    """Run `run` until it exits 0 with output matching `pattern` (the sessions come up within
    seconds), at most `timeout` seconds; the match, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = run()
        if done.returncode == 0 and (match := re.fullmatch(pattern, done.stdout)):
            return match
        time.sleep(0.2)
    return None


def test_node_status_shows_the_mesh_locally_and_from_the_datastore(etcd):
    a, b = meshed_pair(etcd.endpoint, etcd.unix_endpoint)
    try:
        peer_of = {a.name: "10.99.0.2", b.name: "10.99.0.1"}

        def logs() -> str:
            return "".join((n.workdir / "agent.log").read_text()[-2000:] for n in (a, b))

        # From the agent, over its socket; then from the NodeStatus it publishes, anywhere.
        for node in (a, b):
            pattern = established_with(peer_of[node.name])
            local = shown(lambda n=node: local_status(n), pattern)
            assert local, local_status(node).stdout + logs()
            stored = shown(lambda n=node: datastore_status(etcd.endpoint, "--node", n.name), pattern)
            assert stored, datastore_status(etcd.endpoint, "--node", node.name).stdout + logs()
            assert stored[1] == local[1]  # the same SINCE

        done = datastore_status(etcd.endpoint, "--all")
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.fullmatch("".join(f"Node {re.escape(name)}:\n{established_with(peer_of[name])}"
                                    for name in sorted(peer_of)), done.stdout), done.stdout

        done = datastore_status(etcd.endpoint, "--node", "no-such-node")
        missing = ("No status for node no-such-node: there is no NodeStatus no-such-node "
                   "(percale-node writes it once it runs).\n\n")
        assert (done.returncode, done.stdout) == (1, missing)
    finally:
        a.stop()
        b.stop()


def test_an_agent_without_bgp_then_stopped(etcd):
    # IP=none: no BGP address (left unset, the agent would detect one, as calico-node does),
    # so ExaBGP is not started.
    node = CNINode(etcd.unix_endpoint, agent_args=["--ip", "none"])
    try:
        node.start()
        assert wait_for(lambda: local_status(node).returncode == 0, 10)
        assert local_status(node).stdout == (
            "percale process is running.\n"
            "\n"
            "The BGP backend process (ExaBGP) is not running.\n"
            "\n")

        node.stop_agent()
        done = local_status(node)
        assert (done.returncode, done.stdout) == (1, "percale process is not running.\n")
    finally:
        node.stop()
