"""topologies/crosssubnet.clab.yml end to end: four percale nodes on two subnets joined by a
plain Linux router, meshed node to node across it. Pods on different subnets need VXLAN (a
later issue), so this checks what works without it: the lab comes up, every mesh session
across the router is Established, and the pods of each subnet reach each other."""

from __future__ import annotations

import ipaddress

import pytest

from percale.lab import pods
from tests.helpers.lab_checks import add_pods, percale_nodes, session_problems, settled
from tests.helpers.lab_e2e import running

pytestmark = pytest.mark.lab


def test_mesh_across_the_router_and_pods_reach_their_own_subnet():
    with running("crosssubnet") as lab:
        add_pods(lab, per_node=1)
        nodes = percale_nodes(lab)
        problems = settled(lambda: [p for node, ip in nodes.items()
                                    for p in session_problems(lab, node, set(nodes.values()) - {ip})],
                           60)
        assert problems == [], problems

        subnets = {name: ipaddress.ip_interface(lab.topology.nodes[name].env["IP"]).network
                   for name in nodes}
        assert len(set(subnets.values())) == 2
        every = pods.pods(lab)
        same_subnet = [(a, b) for a in every for b in every
                       if a.name != b.name and subnets[a.node] == subnets[b.node]]

        def failing() -> list[str]:
            return [f"{a.name} -> {b.name}" for a, b in same_subnet
                    if not pods.ping(a, b.addresses[0])]

        assert settled(failing, 30) == []
