"""topologies/tor.clab.yml end to end: three percale nodes, each its own AS, peering eBGP with a
BIRD 2 top-of-rack router only (the mesh off, one global BGPPeer). BIRD passes each node's
blocks to the others, keeping the owning node as next hop on the shared subnet, and pods on
every node reach each other."""

from __future__ import annotations

import re

import pytest

from percale.lab import pods
from tests.helpers.lab_checks import (
    add_pods,
    percale_nodes,
    route_problems,
    session_problems,
    settled,
)
from tests.helpers.lab_e2e import every_pod_reaches_every_pod, running

pytestmark = pytest.mark.lab

TOR, TOR_IP = "tor", "10.0.20.254"  # topologies/tor/bird.conf, tor/cluster.yaml


@pytest.fixture(scope="module")
def lab():
    with running("tor") as lab:
        add_pods(lab, per_node=2)
        yield lab


def bird_sessions(lab) -> dict[str, str]:
    """BIRD's BGP protocols (named after the nodes in bird.conf) -> their state or Info column
    (Established, Active, Connect, ...), from `birdc show protocols`. There is no mount
    namespace: the control socket the node binds at /run/bird is in the node's directory."""
    socket = lab.node_dir(TOR) / "run" / "bird.ctl"
    out = lab.exec(TOR, ["birdc", "-s", str(socket), "show", "protocols"], capture=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[1] == "BGP":
            found[fields[0]] = fields[5] if len(fields) > 5 else fields[3]
    return found


def test_every_pod_reaches_every_pod(lab):
    assert len(pods.pods(lab)) == 2 * len(percale_nodes(lab))
    failing = every_pod_reaches_every_pod(lab, timeout=60)
    assert failing == [], f"{len(failing)} pairs fail, e.g. {failing[:5]}"


def test_every_node_has_one_global_session_to_the_tor(lab):
    nodes = percale_nodes(lab)
    problems = settled(lambda: [p for node in nodes for p in session_problems(lab, node, {TOR_IP})],
                       60)
    assert problems == [], problems
    for node in nodes:
        shown = lab.exec(node, ["percalectl", "node", "status"], capture=True).stdout
        assert re.search(r"\|\s*global\s*\|", shown), shown


def test_bird_has_every_session_established(lab):
    def problems_now() -> list[str]:
        shown = bird_sessions(lab)
        return [f"BIRD's {node}: {shown.get(node, 'no such protocol')}"
                for node in percale_nodes(lab) if shown.get(node) != "Established"]

    problems = settled(problems_now, 60)
    assert problems == [], problems


def test_every_node_routes_straight_to_every_other_nodes_blocks(lab):
    # eBGP on a shared subnet: BIRD keeps the owning node as next hop (RFC 4271 §5.1.3, third
    # party next hop), so pod traffic does not pass through the ToR.
    problems = settled(lambda: route_problems(lab), 60)
    assert problems == [], problems
