"""What the end-to-end lab tests (tests/lab/) check on a running topology, beyond lab_e2e's
primitives: which percale nodes a topology has and at which address, pods on each of them, the
BGP sessions each node should show, and the kernel routes to other nodes' pods.

Expected values come from the topology file itself (each node's IP env), so a test states only
what is particular to its topology: who peers with whom, and which next hop a route takes.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

from percale.lab import pods
from percale.lab.runner import Lab
from tests.helpers.lab_e2e import kernel_routes, node_status, wait_for


def percale_nodes(lab: Lab) -> dict[str, str]:
    """Each percale node of the topology -> its BGP address (its IP env, prefix dropped)."""
    return {name: node.env["IP"].split("/")[0] for name, node in lab.topology.nodes.items()
            if lab.is_percale(node) and "IP" in node.env}


def add_pods(lab: Lab, per_node: int) -> list[pods.Pod]:
    """`per_node` pods on every percale node, named <node>-p<i>, added a few at a time as a
    runtime starts them."""
    wanted = [(node, f"{node}-p{i}") for node in percale_nodes(lab) for i in range(per_node)]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda pair: pods.add(lab, *pair), wanted))


def settled(problems_now, timeout: float) -> list[str]:
    """Poll `problems_now()` until it finds none; [] then, else the problems still there at the
    timeout (for the assertion message)."""
    last: list[str] = []

    def check() -> bool:
        last[:] = problems_now()
        return not last

    wait_for(check, timeout, interval=0.5)
    return last


def session_problems(lab: Lab, node: str, peers: set[str]) -> list[str]:
    """What `percalectl node status` on `node` shows wrong, if its sessions should be exactly
    `peers` (addresses), all Established; [] when all is well."""
    shown = node_status(lab, node)
    problems = [f"{node}: no session to {p}" for p in sorted(peers - set(shown))]
    problems += [f"{node}: unexpected session to {p}" for p in sorted(set(shown) - peers)]
    problems += [f"{node}: {p} is {info or state}" for p, (state, info) in sorted(shown.items())
                 if p in peers and info != "Established"]
    return problems


def route_problems(lab: Lab, next_hop=lambda owner_ip: owner_ip) -> list[str]:
    """Routes missing from the nodes' kernels: every percale node needs a BGP route (protocol
    202) covering each pod of every other node, via `next_hop(owner's address)` (None: any
    gateway). [] when every route is there."""
    nodes = percale_nodes(lab)
    everywhere = [p for p in pods.pods(lab) if p.addresses and p.node in nodes]
    problems = []
    for node in nodes:
        routes = {ipaddress.ip_network(prefix): gateway
                  for prefix, gateway in kernel_routes(lab, node).items()}
        for pod in everywhere:
            if pod.node == node:
                continue
            address = ipaddress.ip_address(pod.addresses[0])
            covering = [(net, gw) for net, gw in routes.items() if address in net]
            if not covering:
                problems.append(f"{node}: no route to {pod.name} ({address})")
                continue
            gateway = max(covering, key=lambda route: route[0].prefixlen)[1]
            expected = next_hop(nodes[pod.node])
            if expected is not None and gateway != expected:
                problems.append(f"{node}: {pod.name} ({address}) via {gateway}, not {expected}")
    return problems
