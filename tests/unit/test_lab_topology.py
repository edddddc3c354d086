"""Reading containerlab topology files (percale/lab/topology.py): inheritance as containerlab
does it, start order, management addresses, and every refusal naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from percale.lab.topology import DEFAULT_MTU, TopologyError, parse

pytestmark = pytest.mark.unit

HERE = Path("/labs/t.clab.yml")


def topo(**extra) -> dict:
    doc = {"name": "t", "topology": {
        "defaults": {"env": {"A": "default", "B": "default"}},
        "kinds": {"linux": {"image": "percale/node", "cmd": "percale-node", "env": {"B": "kind"},
                            "stages": {"create": {"wait-for": [{"node": "db", "stage": "healthy"}]}}}},
        "nodes": {
            "db": {"kind": "linux", "image": "percale/etcd", "cmd": "etcd", "stages": {},
                   "mgmt-ipv4": "172.20.20.9",
                   "healthcheck": {"test": ["CMD-SHELL", "etcdctl endpoint health"],
                                   "interval": 0.5}},
            "n1": {"kind": "linux", "env": {"IP": "10.0.0.1/24"},
                   "binds": ["conf/x.yaml:/etc/x.yaml:ro", "__clabNodeDir__/run:/run/x"]},
            "n2": {"kind": "linux"},
            "sw": {"kind": "bridge"},
        },
        "links": [{"endpoints": ["n1:eth1", "sw:p1"]},
                  {"endpoints": ["n2:eth1", "sw:p2"], "mtu": 1500}],
    }}
    doc.update(extra)
    return doc


def test_a_topology_reads_as_containerlab_means_it():
    t = parse(topo(), HERE)
    n1 = t.nodes["n1"]
    assert (n1.image, n1.cmd) == ("percale/node", "percale-node")
    assert n1.env == {"A": "default", "B": "kind", "IP": "10.0.0.1/24"}
    assert n1.binds == (("/labs/conf/x.yaml", "/etc/x.yaml"), ("__clabNodeDir__/run", "/run/x"))
    assert t.nodes["db"].healthcheck.test == "etcdctl endpoint health"
    assert t.nodes["db"].wait_for == () and n1.wait_for == ("db",)
    assert [n.name for n in t.start_order()] == ["db", "n1", "n2"]
    assert t.namespace("n1") == "clab-t-n1" and t.mgmt_namespace == "clab-t-mgmt"
    assert [link.mtu for link in t.links] == [DEFAULT_MTU, 1500]
    # db asked for .9; the others take the next free addresses after the gateway (.1).
    assert {n: str(a) for n, a in t.mgmt_addresses().items()} == {
        "db": "172.20.20.9/24", "n1": "172.20.20.2/24", "n2": "172.20.20.3/24"}


def test_a_file_written_for_containerlab_loads_with_what_it_does_not_use():
    doc = topo(mgmt={"network": "x", "ipv4-subnet": "172.30.1.0/24", "ipv6-subnet": "fd00::/64"})
    doc["topology"]["nodes"]["n2"].update({"startup-config": "x.cfg", "ports": ["80:80"]})
    doc["topology"]["nodes"]["db"]["mgmt-ipv4"] = "172.30.1.9"
    assert str(parse(doc, HERE).mgmt_subnet) == "172.30.1.0/24"


def mutate(path: str, value) -> dict:
    doc = topo()
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize("path, value, message", [
    ("name", "bad name", "name: must be a name"),
    ("mgmt", {"ipv4-subnet": "172.20.20.0/33"}, "mgmt.ipv4-subnet:"),
    ("topology.nodes.n2", {"image": "x"}, "topology.nodes.n2.kind: is missing"),
    ("topology.nodes.n2", {"kind": "linux", "exec": "ip link"}, "topology.nodes.n2.exec: must be a list"),
    ("topology.nodes.n2", {"kind": "linux", "binds": ["nothing"]}, "topology.nodes.n2.binds[0]: 'nothing' is not HOST:/PATH"),
    ("topology.nodes.n2", {"kind": "linux", "mgmt-ipv4": "172.20.20.1"}, "topology.nodes.n2.mgmt-ipv4: 172.20.20.1 is not a host address"),
    ("topology.nodes.n2", {"kind": "linux", "mgmt-ipv4": "10.0.0.1"}, "topology.nodes.n2.mgmt-ipv4: 10.0.0.1 is not a host address"),
    ("topology.nodes.n2", {"kind": "linux", "stages": {"create": {"wait-for": [{"node": "zz"}]}}}, "waits for unknown node 'zz'"),
    ("topology.nodes.db", {"kind": "linux", "stages": {"create": {"wait-for": [{"node": "n1"}]}}}, "is a cycle"),
    ("topology.nodes.sw", {"kind": "bridge", "cmd": "sleep 1"}, "topology.nodes.sw: a bridge node runs no commands"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": ""}}, "topology.nodes.n2.healthcheck.test: must be a command"),
    ("topology.links.0", {"endpoints": ["n1:eth1"]}, "topology.links[0].endpoints: a link has two endpoints"),
    ("topology.links.0", {"endpoints": ["n1:eth1", "nope:eth1"]}, "topology.links[0].endpoints[1]: no node named 'nope'"),
    ("topology.links.0", {"endpoints": ["n1", "sw:p1"]}, "topology.links[0].endpoints[0]: an endpoint is NODE:INTERFACE"),
    ("topology.links.0", {"endpoints": ["n1:eth1", "sw:p2"]}, "topology.links[1]: sw:p2 is already used by topology.links[0]"),
    ("topology.links.0", {"endpoints": ["n1:eth0", "sw:p1"]}, "eth0 is the node's management interface"),
    ("topology.links.0", {"endpoints": ["n1:averyveryverylongname", "sw:p1"]}, "at most 15 characters"),
    ("topology.links.0", {"endpoints": ["n1:eth1", "n1:eth2"]}, "both ends are on one node"),
    ("topology.links.0", {"type": "vxlan", "endpoints": ["n1:eth1", "sw:p1"]}, "'vxlan' links are not supported"),
    ("topology.links.0", {"endpoints": ["n1:eth1", "sw:p1"], "mtu": 20}, "topology.links[0].mtu: must be a number"),
    ("topology.links.0", {"endpoints": [{"node": "n1", "interface": "eth1", "ipv4": "10.0.0.300/24"}, "sw:p1"]}, "topology.links[0].endpoints[0].ipv4:"),
])
def test_refusals_name_the_field(path, value, message):
    with pytest.raises(TopologyError) as err:
        parse(mutate(path, value), HERE)
    assert str(err.value).startswith(f"{HERE}: ")
    assert message in str(err.value)


def test_the_shipped_topologies_load(tmp_path):
    from percale.lab.topology import load

    topologies = sorted(Path(__file__).resolve().parents[2].joinpath("topologies").glob("*.clab.yml"))
    assert topologies
    for path in topologies:
        assert load(path).name == yaml.safe_load(path.read_text())["name"]
    (tmp_path / "bad.clab.yml").write_text("name: [unclosed")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load(tmp_path / "bad.clab.yml")
    with pytest.raises(TopologyError, match="No such file"):
        load(tmp_path / "missing.clab.yml")


def test_a_big_lab_is_warned_about_the_machine_wide_arp_table(tmp_path, monkeypatch):
    from percale.lab import runner
    from percale.lab.generate import mesh

    limit = tmp_path / "gc_thresh3"
    limit.write_text("1024\n")
    monkeypatch.setattr(runner, "NEIGHBOUR_LIMIT", limit)
    small, big = parse(mesh(3), HERE), parse(mesh(40), HERE)
    # 40 nodes on one switch know each other: 40 * 39, plus the management network.
    assert runner.neighbour_entries(big) == 40 * 39 + 3 * 41
    assert runner.neighbour_table_warning(small) is None
    warning = runner.neighbour_table_warning(big)
    assert "net.ipv4.neigh.default.gc_thresh3" in warning and "1683 ARP entries" in warning
