"""percale.lab.generate: a mesh of n nodes is a topology the lab runner reads, shaped as mesh3."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from percale.lab import generate
from percale.lab.topology import load, parse
from percale.api import parse as parse_resource

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n", [1, 3, 10, 40, 200, generate.MAX_NODES])
def test_written_mesh_loads_with_every_node_and_unique_addresses(tmp_path, n):
    path = generate.write_mesh(n, tmp_path)
    assert path == tmp_path / f"mesh{n}.clab.yml"
    topology = load(path)

    percale = [node for node in topology.nodes.values() if node.image == generate.NODE_IMAGE]
    assert len(percale) == n
    assert topology.nodes["etcd"].image == generate.ETCD_IMAGE
    assert topology.nodes[generate.SWITCH].is_bridge
    assert len(topology.nodes) == n + 2

    fabric = [ipaddress.IPv4Interface(node.env["IP"]) for node in percale]
    assert len(set(fabric)) == n
    assert all(a.network == generate.FABRIC for a in fabric)
    assert all(f"ip addr add {node.env['IP']} dev eth1" in node.exec for node in percale)
    mgmt = topology.mgmt_addresses()  # raises if the /24 has no address left
    assert len(set(mgmt.values())) == n + 1
    assert all(node.wait_for == ("etcd",) for node in percale)
    assert all(node.env["ETCD_ENDPOINTS"] == f"http://{mgmt['etcd'].ip}:2379" for node in percale)

    # Every node's eth1 on the switch, one port each, names the kernel accepts.
    ports = {(link.a.node, link.b.node): link.b.interface for link in topology.links}
    assert set(ports) == {(node.name, generate.SWITCH) for node in percale}
    assert all(len(port) <= 15 for port in ports.values())


def test_cluster_file_is_beside_the_topology_and_holds_a_valid_pool(tmp_path):
    path = generate.write_mesh(5, tmp_path)
    bound = dict(load(path).nodes["node1"].binds)
    cluster = next(host for host, target in bound.items() if target.endswith("cluster.yaml"))
    documents = list(yaml.safe_load_all(Path(cluster).read_text()))
    pool = parse_resource(documents[0])
    assert pool.kind == "IPPool"
    assert ipaddress.ip_network(pool.spec.cidr).num_addresses // 2 ** (32 - pool.spec.block_size) \
        >= generate.MAX_NODES


def test_mgmt_subnets_differ_between_sizes_and_from_mesh3():
    subnets = {generate.mesh(n)["mgmt"]["ipv4-subnet"] for n in range(1, generate.MAX_NODES + 1)}
    assert len(subnets) == generate.MAX_NODES
    assert "172.20.30.0/24" not in subnets


def test_mesh_is_pure_and_named(tmp_path):
    assert generate.mesh(4) == generate.mesh(4)
    topology = parse(generate.mesh(4, name="bench4"), tmp_path / "bench4.clab.yml")
    assert topology.name == "bench4"
    assert topology.namespace("node4") == "clab-bench4-node4"


@pytest.mark.parametrize("n", [0, -1, generate.MAX_NODES + 1, True, 2.5])
def test_out_of_range_sizes_are_refused(n):
    with pytest.raises(ValueError, match="1 to"):
        generate.mesh(n)


def test_an_empty_output_folder_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch):
    """-o "$DIR" with DIR unset: Path("") is the working directory, which it wrote into."""
    from typer.testing import CliRunner

    from percale.ctl.lab_cmd import lab_app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(lab_app, ["generate-mesh", "--nodes", "2", "-o", ""])
    assert result.exit_code == 1 and result.stderr == "Error: --output-dir: the folder name is empty\n"
    assert list(tmp_path.iterdir()) == []
    written = CliRunner().invoke(lab_app, ["generate-mesh", "--nodes", "2", "-o", "out"])
    assert written.exit_code == 0 and written.stdout == "out/mesh2.clab.yml\n"
    assert (tmp_path / "out" / "mesh2.clab.yml").exists()
