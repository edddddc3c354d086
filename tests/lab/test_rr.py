"""topologies/rr.clab.yml end to end: six percale nodes, the mesh off, two of them percale route
reflectors (one cluster ID) that every node peers with. Pods on every node reach each other
through routes the reflectors pass on with the originating node as next hop, and a client
killed outright keeps its routes in the cluster (graceful restart) until it is back."""

from __future__ import annotations

import re
import signal

import pytest

from percale.lab import pods
from tests.helpers.lab_checks import (
    add_pods,
    percale_nodes,
    route_problems,
    session_problems,
    settled,
)
from tests.helpers.lab_e2e import (
    every_pod_reaches_every_pod,
    kernel_routes,
    node_status,
    running,
    wait_for,
)

pytestmark = pytest.mark.lab

REFLECTORS = ("rr1", "rr2")  # topologies/rr/cluster.yaml gives them the cluster ID and label
VICTIM = "node4"  # the client whose agent the graceful-restart test kills


@pytest.fixture(scope="module")
def lab():
    with running("rr") as lab:
        add_pods(lab, per_node=2)
        yield lab


def expected_peers(lab) -> dict[str, set[str]]:
    """Clients peer with both reflectors; a reflector with every other node."""
    nodes = percale_nodes(lab)
    reflectors = {nodes[r] for r in REFLECTORS}
    return {name: (set(nodes.values()) - {ip}) if name in REFLECTORS else reflectors
            for name, ip in nodes.items()}


def session_problems_everywhere(lab) -> list[str]:
    return [p for node, peers in expected_peers(lab).items()
            for p in session_problems(lab, node, peers)]


def logs(lab, *nodes: str) -> str:
    """The tails of the nodes' agent and ExaBGP logs, for an assertion message."""
    out = []
    for n in nodes:
        exabgp = lab.node_dir(n) / "run" / "bgp" / "exabgp.log"
        tail = exabgp.read_text(errors="replace").splitlines()[-15:] if exabgp.exists() else []
        out.append(f"\n--- {n}:{lab.log_tail(n)}\n--- {n} ExaBGP:\n" + "\n".join(tail))
    return "".join(out)


def test_every_pod_reaches_every_pod(lab):
    assert len(pods.pods(lab)) == 2 * len(percale_nodes(lab))
    failing = every_pod_reaches_every_pod(lab, timeout=60)
    assert failing == [], f"{len(failing)} pairs fail, e.g. {failing[:5]}" + logs(lab, *REFLECTORS)


def test_clients_peer_with_both_reflectors_and_reflectors_with_every_node(lab):
    problems = settled(lambda: session_problems_everywhere(lab), 60)
    assert problems == [], problems
    # Every session comes from the BGPPeer's nodeSelector: Calico's "node specific" type.
    for node, peers in expected_peers(lab).items():
        shown = lab.exec(node, ["percalectl", "node", "status"], capture=True).stdout
        assert len(re.findall(r"\|\s*node specific\s*\|", shown)) == len(peers), shown


def test_every_node_routes_straight_to_every_other_nodes_blocks(lab):
    # Reflected with the next hop unchanged: to the owning node, never via a reflector.
    problems = settled(lambda: route_problems(lab), 60)
    assert problems == [], problems


def test_a_killed_client_keeps_its_routes_until_it_is_back(lab):
    """SIGKILL the client's agent (and the ExaBGP it started): its sessions drop with no
    NOTIFICATION, the reflectors keep its routes as stale (RFC 4724) and withdraw none of them,
    so pods elsewhere still reach its pods, whose kernel routes outlive the agent. Started
    again, it is back in every session."""
    victim_ip = percale_nodes(lab)[VICTIM]
    everyone = pods.pods(lab)
    theirs = [p for p in everyone if p.node == VICTIM]
    ours = next(p for p in everyone if p.node not in (VICTIM, *REFLECTORS))
    assert settled(lambda: session_problems_everywhere(lab), 60) == []

    lab.stop(VICTIM, signal.SIGKILL)
    try:
        assert wait_for(lambda: all(
            node_status(lab, r).get(victim_ip, ("", ""))[1] != "Established"
            for r in REFLECTORS), 30), "the reflectors still show the killed node's session"
        assert route_problems(lab) == []  # stale, not withdrawn: every node still routes to it
        for a, b in [(ours, pod) for pod in theirs] + [(pod, ours) for pod in theirs]:
            assert pods.ping(a, b.addresses[0], count=3), (
                f"{a.name} -> {b.name}: {route_problems(lab)}, {ours.node}: "
                f"{kernel_routes(lab, ours.node)}, {VICTIM}: {kernel_routes(lab, VICTIM)}"
                + logs(lab, *REFLECTORS))
    finally:
        lab.start(VICTIM)

    problems = settled(lambda: session_problems_everywhere(lab), 60)
    assert problems == [], problems + [logs(lab, VICTIM)]
    assert settled(lambda: route_problems(lab), 30) == []
    assert every_pod_reaches_every_pod(lab, timeout=30) == []
