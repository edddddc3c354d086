"""Every topology under topologies/ loads, and says consistent things in its several places: a
percale node's IP env is an address its exec steps (or its links) put on one of its links,
no two nodes share a name or an address, every bound file exists, and a BIRD router's
neighbours are percale nodes at their addresses and AS numbers."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from percale.lab.runner import Lab
from percale.lab.topology import Topology, load

pytestmark = pytest.mark.unit

TOPOLOGIES = sorted((Path(__file__).resolve().parents[2] / "topologies").glob("*.clab.yml"))
# `ip addr add 10.0.0.11/24 dev eth1` (also `ip address add`, `ip -4 addr add`)
IP_ADDR_ADD = re.compile(r"\bip\s+(?:-4\s+)?a(?:ddr(?:ess)?)?\s+add\s+(\S+)\s+dev\s+(\S+)")
BIRD_NEIGHBOR = re.compile(r"^\s*neighbor\s+(\S+)\s+as\s+(\d+)\s*;", re.MULTILINE)


@pytest.fixture(params=TOPOLOGIES, ids=[p.name for p in TOPOLOGIES])
def topology(request) -> Topology:
    return load(request.param)


def node_ips(topology: Topology) -> dict[str, str]:
    """The address each node that runs percale uses: a percale node's IP env, or a lab
    kubelet's --node-ip (its pods, percale-node among them, run on that address)."""
    lab = Lab(topology)
    found = {}
    for node in topology.nodes.values():
        if lab.is_percale(node):
            found[node.name] = node.env.get("IP")
        elif lab.is_kubelet(node):
            argv = node.cmd.split()
            found[node.name] = argv[argv.index("--node-ip") + 1] + "/32"
    return found


def configured_addresses(topology: Topology, node: str) -> dict[str, list]:
    """Interface -> the IPv4 addresses the topology gives it: its exec steps' `ip addr add` and
    its links' extended-form ipv4."""
    found: dict[str, list] = {}
    for command in topology.nodes[node].exec:
        for address, interface in IP_ADDR_ADD.findall(command):
            found.setdefault(interface, []).append(ipaddress.ip_interface(address))
    for link in topology.links:
        for end in (link.a, link.b):
            if end.node == node and end.ipv4:
                found.setdefault(end.interface, []).append(ipaddress.ip_interface(end.ipv4))
    return found


def link_interfaces(topology: Topology, node: str) -> set[str]:
    return {end.interface for link in topology.links for end in (link.a, link.b) if end.node == node}


def test_there_are_topologies():
    assert {"mesh3.clab.yml", "rr.clab.yml", "tor.clab.yml", "crosssubnet.clab.yml"} <= {
        p.name for p in TOPOLOGIES}


def test_each_percale_nodes_ip_is_on_one_of_its_links(topology):
    nodes = node_ips(topology)
    assert nodes
    for name, address in nodes.items():
        assert address, f"{name}: no IP env (percale-node would guess its address)"
        ip = ipaddress.ip_interface(address)
        configured = configured_addresses(topology, name)
        on = [interface for interface, addresses in configured.items()
              if any(ip.ip == a.ip for a in addresses)]
        assert on, f"{name}: IP {ip} is not an address its exec or links configure ({configured})"
        assert set(on) <= link_interfaces(topology, name), (
            f"{name}: {ip} goes on {on}, which no link of the node has")


def test_node_names_and_addresses_are_unique(topology):
    class Strict(yaml.SafeLoader):
        """Refuses a mapping with a key twice (yaml.safe_load keeps the last one silently)."""

    def mapping(loader, node):
        keys = [loader.construct_object(k) for k, _ in node.value]
        twice = {k for k in keys if keys.count(k) > 1}
        assert not twice, f"{topology.path}: {sorted(map(str, twice))} given twice"
        return yaml.SafeLoader.construct_mapping(loader, node)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    yaml.load(topology.path.read_text(), Strict)

    ips = [ipaddress.ip_interface(ip).ip for ip in node_ips(topology).values() if ip]
    assert len(ips) == len(set(ips)), ips
    namespaces = [topology.namespace(n) for n in topology.nodes]
    assert len(namespaces) == len(set(namespaces))


def test_every_bound_file_exists(topology):
    lab = Lab(topology)
    for node in topology.nodes.values():
        for host, _ in lab.binds(node):
            if Path(host).is_relative_to(lab.dir):
                continue  # a node directory (__clabNodeDir__, __clabDir__): made at `lab up`
            assert Path(host).exists(), f"{node.name}: bind {host} does not exist"


def test_bird_neighbours_are_percale_nodes(topology):
    lab = Lab(topology)
    nodes = {ipaddress.ip_interface(ip).ip: topology.nodes[name]
             for name, ip in node_ips(topology).items() if ip}
    for router in topology.nodes.values():
        for host, target in lab.binds(router):
            if not target.endswith("bird.conf"):
                continue
            neighbours = BIRD_NEIGHBOR.findall(Path(host).read_text())
            assert neighbours, f"{host}: no `neighbor ADDRESS as AS;`"
            for address, asn in neighbours:
                node = nodes.get(ipaddress.ip_address(address))
                assert node, f"{host}: neighbor {address} is no percale node's IP"
                if "AS" in node.env:
                    assert int(node.env["AS"]) == int(asn), (
                        f"{host}: neighbor {address} as {asn}, but {node.name} has AS {node.env['AS']}")
