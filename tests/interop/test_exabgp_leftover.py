"""An agent killed on its own (SIGKILL to percale-node only, as `kill -9 <pid>` or a supervisor
that kills just the main process does) leaves its ExaBGP running — a session of its own. The
next agent must stop that leftover before starting its own, or two ExaBGPs fight over the
node's sessions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from percale.dataplane.route_owners import RouteProtocol

from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import exabgp_servers, meshed_pair

pytestmark = pytest.mark.interop


def b_status(node) -> str:
    return subprocess.run([str(Path(sys.executable).parent / "percalectl"), "node", "status",
                           "--status-socket", node.status_socket], capture_output=True,
                          text=True).stdout


def test_the_next_agent_stops_the_exabgp_a_killed_one_left(etcd):
    a, b = meshed_pair(etcd.endpoint, etcd.unix_endpoint)
    try:
        # The PID from the very look that found one server: a second look can meet a moment
        # with two processes of that command line (seen once under a loaded test run).
        servers: list[int] = []

        def one_server() -> bool:
            servers[:] = exabgp_servers(a.netns)
            return len(servers) == 1

        assert wait_for(one_server, 20), servers
        [old] = servers
        a.add_pod()  # a block for a, announced to b
        assert wait_for(lambda: len(b.routes(RouteProtocol.BGP)) == 1, 30), b.routes(RouteProtocol.BGP)
        block = set(b.routes(RouteProtocol.BGP))
        os.kill(a.agent.pid, signal.SIGKILL)
        a.agent.wait()
        # Whether it outlives the agent for long is ExaBGP's business; if it does, the next
        # agent must not run beside it.
        survived = old in exabgp_servers(a.netns)
        a.start_agent()
        assert wait_for(lambda: exabgp_servers(a.netns) not in ([], [old]), 20), exabgp_servers(a.netns)
        assert wait_for(lambda: len(exabgp_servers(a.netns)) == 1, 10), exabgp_servers(a.netns)
        assert old not in exabgp_servers(a.netns)
        # The new ExaBGP's session is up and a's block announced (and never lost by b).
        assert wait_for(lambda: "Established" in b_status(b), 30), b_status(b)
        assert set(b.routes(RouteProtocol.BGP)) == block
        assert survived, "ExaBGP went with its agent: this test no longer tests the leftover case"
    finally:
        a.stop()
        b.stop()
