"""Reading containerlab topology files (percale/lab/topology.py): inheritance as containerlab
does it, start order, management addresses, and every refusal naming its field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from percale.lab.topology import DEFAULT_MTU, Node, TopologyError, parse

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
    # What `ip` would refuse halfway through `up` is refused here, naming the field.
    ("topology.links.0", {"endpoints": ["n1:eth1:x", "sw:p1"]}, "topology.links[0].endpoints[0]: 'eth1:x' is not an interface name"),
    ("topology.links.0", {"endpoints": ["n1:..", "sw:p1"]}, "topology.links[0].endpoints[0]: '..' is not an interface name"),
    ("topology.links.0", {"endpoints": ["n1:.", "sw:p1"]}, "topology.links[0].endpoints[0]: '.' is not an interface name"),
    ("topology.links.0", {"endpoints": ["n1:eth1", "sw:sw"]}, "topology.links[0].endpoints[1]: sw is the name of bridge sw's own device"),
    ("topology.links.0", {"endpoints": ["n1:eth1", "sw:lo"]}, "topology.links[0].endpoints[1]: lo is the node's loopback interface"),
    ("topology.links.0", {"endpoints": [{"node": "n1", "interface": "eth1", "mac": "not-a-mac"}, "sw:p1"]}, "topology.links[0].endpoints[0].mac: 'not-a-mac' is not a unicast MAC address"),
    ("topology.links.0", {"endpoints": [{"node": "n1", "interface": "eth1", "mac": "01:00:5e:00:00:01"}, "sw:p1"]}, "topology.links[0].endpoints[0].mac: '01:00:5e:00:00:01' is not a unicast"),
    # YAML 1.1 reads an unquoted 12:00:00:00:00:01 as a base-60 number.
    ("topology.links.0", {"endpoints": [{"node": "n1", "interface": "eth1", "mac": yaml.safe_load("12:00:00:00:00:01")}, "sw:p1"]}, "topology.links[0].endpoints[0].mac: 9331200001 is not a unicast MAC address, such as '02:00:00:00:00:01' (quoted: YAML reads some as numbers)"),
    ("prefix", "x/y", "prefix: 'x/y' is not empty or a name"),
    ("prefix", None, "prefix: None is not empty or a name"),
    ("topology.nodes.n2", {"kind": "foo_unknown"}, "topology.nodes.n2.kind: 'foo_unknown' is not a kind this runner implements (linux, bridge, ovs-bridge)"),
    ("topology.nodes." + "n" * 250, {"kind": "linux"}, f"topology.nodes.{'n' * 250}: its namespace name would be 257 bytes long; a network namespace name has at most 255"),
    ("name", "t" * 250, "name: the management network's namespace name would be 260 bytes long"),
    ("name", "t" * 256, "name: is 256 bytes long; at most 255"),
    # Shapes that used to raise a TypeError instead.
    ("topology.nodes.n2", {"kind": "linux", "labels": ["a"]}, "topology.nodes.n2.labels: must be a mapping"),
    ("topology.defaults", {"env": "A=1"}, "topology.defaults.env: must be a mapping"),
    ("topology.links", 3, "topology.links: must be a list"),
    ("topology.nodes.n2", {"kind": "linux", "binds": 3}, "topology.nodes.n2.binds: must be a list"),
    ("topology.nodes.n2", {"kind": "linux", "stages": {"create": {"wait-for": 1.5}}}, "topology.nodes.n2.stages.create.wait-for: must be a list"),
    # Healthcheck numbers time.sleep and subprocess take: .inf and .nan raised OverflowError or
    # ValueError here (retries), or passed and overflowed the clock halfway through `up`.
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "retries": yaml.safe_load(".inf")}}, "topology.nodes.n2.healthcheck.retries: must be a whole number of tries, 0 or more"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "retries": yaml.safe_load(".nan")}}, "topology.nodes.n2.healthcheck.retries: must be a whole number"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "retries": True}}, "topology.nodes.n2.healthcheck.retries: must be a whole number"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "retries": 2.5}}, "topology.nodes.n2.healthcheck.retries: must be a whole number"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "start-period": yaml.safe_load(".inf")}}, "topology.nodes.n2.healthcheck.start-period: must be a number of seconds from 0 to 86400 (a day)"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "interval": yaml.safe_load(".inf")}}, "topology.nodes.n2.healthcheck.interval: must be a number of seconds"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "timeout": yaml.safe_load(".nan")}}, "topology.nodes.n2.healthcheck.timeout: must be a number of seconds"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "interval": 86401}}, "topology.nodes.n2.healthcheck.interval: must be a number of seconds"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true", "interval": True}}, "topology.nodes.n2.healthcheck.interval: must be a number of seconds"),
    # What Popen refuses (a NUL byte; an env name execve would read as NAME=VALUE) is refused
    # here, not halfway through `up`.
    ("topology.nodes.n2", {"kind": "linux", "cmd": "sleep\0 5"}, "topology.nodes.n2.cmd: holds a NUL byte, which no command line or environment can carry"),
    ("topology.nodes.n2", {"kind": "linux", "cmd": ["sleep", "5\0"]}, "topology.nodes.n2.cmd: holds a NUL byte"),
    ("topology.nodes.n2", {"kind": "linux", "exec": ["true", "ip\0link"]}, "topology.nodes.n2.exec[1]: holds a NUL byte"),
    ("topology.nodes.n2", {"kind": "linux", "env": {"C": "a\0b"}}, "topology.nodes.n2.env.C: holds a NUL byte"),
    ("topology.nodes.n2", {"kind": "linux", "env": {"A=B": "x"}}, "topology.nodes.n2.env: 'A=B' is not a variable name (it is empty or holds '=' or a NUL byte)"),
    ("topology.nodes.n2", {"kind": "linux", "env": {"": "x"}}, "topology.nodes.n2.env: '' is not a variable name"),
    ("topology.nodes.n2", {"kind": "linux", "env": {"A\0": "x"}}, "topology.nodes.n2.env: 'A\\x00' is not a variable name"),
    ("topology.defaults", {"env": {"A=B": "x"}}, "topology.nodes.db.env: 'A=B' is not a variable name"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": "true\0"}}, "topology.nodes.n2.healthcheck.test: holds a NUL byte"),
    ("topology.nodes.n2", {"kind": "linux", "healthcheck": {"test": ["CMD", "true", "\0"]}}, "topology.nodes.n2.healthcheck.test: holds a NUL byte"),
    ("topology.nodes.n2", {"kind": "linux", "binds": ["/etc/a\0b:/x"]}, "topology.nodes.n2.binds[0]: holds a NUL byte"),
    # Management addresses: the broadcast address, and one address on two nodes (an ARP
    # conflict on the management bridge), were accepted.
    ("topology.nodes.n2", {"kind": "linux", "mgmt-ipv4": "172.20.20.255"}, "topology.nodes.n2.mgmt-ipv4: 172.20.20.255 is not a host address of 172.20.20.0/24 other than its gateway"),
    ("topology.nodes.n2", {"kind": "linux", "mgmt-ipv4": "172.20.20.9"}, "topology.nodes.n2.mgmt-ipv4: 172.20.20.9 is already used by topology.nodes.db"),
    ("topology.defaults", {"mgmt-ipv4": "172.20.20.7"}, "topology.nodes.n2.mgmt-ipv4: 172.20.20.7 is already used by topology.nodes.n1"),
    ("mgmt", {"ipv4-subnet": "172.20.20.9/32"}, "mgmt.ipv4-subnet: 172.20.20.9/32 has no address beside its gateway's (/31 or shorter)"),
    ("mgmt", {"ipv4-subnet": 5}, "mgmt.ipv4-subnet: 5 is not a subnet such as 172.20.20.0/24"),
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


def test_a_node_name_fits_its_namespace_and_its_log():
    doc = mutate("prefix", "")
    doc["topology"]["nodes"]["n" * 251] = {"kind": "linux"}
    assert "n" * 251 in parse(doc, HERE).nodes  # its namespace: 251 bytes; its log 255
    doc["topology"]["nodes"]["n" * 252] = {"kind": "linux"}
    with pytest.raises(TopologyError, match=r"a node name is at most 251 bytes"):
        parse(doc, HERE)
    doc["topology"]["nodes"] = {"n" * 256: {"kind": "linux"}}
    with pytest.raises(TopologyError, match=r"its namespace name would be 256 bytes long"):
        parse(doc, HERE)


def test_prefixes_containerlab_allows_still_parse():
    assert parse(mutate("prefix", ""), HERE).namespace("n1") == "n1"
    assert parse(mutate("prefix", "__lab-name"), HERE).namespace("n1") == "t-t-n1"
    assert parse(mutate("prefix", "lab_2.x"), HERE).mgmt_namespace == "lab_2.x-t-mgmt"
    t = parse(mutate("topology.links.0", {"endpoints": [
        {"node": "n1", "interface": "eth1.10", "mac": "02:42:AC:14:14:02"}, "sw:p1"]}), HERE)
    assert (t.links[0].a.interface, t.links[0].a.mac) == ("eth1.10", "02:42:AC:14:14:02")


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    from percale.lab.topology import load

    path = tmp_path / "latin.clab.yml"
    path.write_bytes(b"\xff\xfename: rv1\n")
    with pytest.raises(TopologyError) as err:
        load(path)
    assert str(err.value) == f"{path}: not UTF-8 text (byte 0: invalid start byte)"


def test_a_key_given_twice_is_refused_not_dropped(tmp_path):
    """YAML keeps the last of two equal keys: a node written twice would silently vanish."""
    from percale.lab.topology import load

    path = tmp_path / "twice.clab.yml"
    path.write_text("name: t\n"
                    "topology:\n"
                    "  nodes:\n"
                    "    n1: {kind: linux}\n"
                    "    n2: {kind: linux}\n"
                    "    n1: {kind: linux, cmd: sleep 1}\n")
    with pytest.raises(TopologyError) as err:
        load(path)
    assert str(err.value) == (f"{path}: topology.nodes.n1: is given twice (lines 4 and 6); YAML "
                              "would keep only the last")
    path.write_text("name: t\n"
                    "topology:\n"
                    "  nodes: {n1: {kind: linux}, n2: {kind: linux}}\n"
                    "  links:\n"
                    "    - endpoints: [n1:eth1, n2:eth1]\n"
                    "      mtu: 1500\n"
                    "      mtu: 9000\n")
    with pytest.raises(TopologyError, match=r": topology.links\[0\].mtu: is given twice \(lines 6 and 7\)"):
        load(path)


def test_merge_keys_and_aliases_are_no_duplicates(tmp_path):
    """`<<: *anchor` may bring a key the mapping sets again: YAML's override, not a mistake."""
    from percale.lab.topology import load

    path = tmp_path / "anchors.clab.yml"
    path.write_text("name: t\n"
                    "x-host: &host {kind: linux, cmd: sleep 1, env: {A: '1'}}\n"
                    "topology:\n"
                    "  nodes:\n"
                    "    n1: {<<: *host, cmd: sleep 2}\n"
                    "    n2: *host\n")
    t = load(path)
    assert (t.nodes["n1"].cmd, t.nodes["n2"].cmd, t.nodes["n2"].env) == ("sleep 2", "sleep 1", {"A": "1"})


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


def test_healthcheck_numbers_at_their_bounds_are_taken():
    t = parse(mutate("topology.nodes.n2", {"kind": "linux", "healthcheck": {
        "test": "true", "start-period": 86400, "interval": 0, "timeout": 0.5, "retries": 0}}), HERE)
    check = t.nodes["n2"].healthcheck
    assert (check.start_period, check.interval, check.timeout, check.retries) == (86400, 0, 0.5, 0)


def test_env_values_read_as_containerlab_reads_them():
    """containerlab reads env into Go strings: null is "", a boolean true or false (Python's
    str() gave "None" and "True")."""
    doc = mutate("topology.nodes.n2", {"kind": "linux", "env": {"C": None, "D": True, "E": False,
                                                                 "F": 1, "G": "x"},
                                       "labels": {"l": None, "m": True}})
    n2 = parse(doc, HERE).nodes["n2"]
    assert n2.env == {"A": "default", "B": "kind", "C": "", "D": "true", "E": "false", "F": "1",
                      "G": "x"}
    assert n2.labels == {"l": "", "m": "true"}


def test_a_large_management_subnet_is_not_listed(tmp_path):
    """mgmt_addresses made a list of every host: a /8 took gigabytes, in every lab command. Run
    with a 512 MiB address-space limit, where that list cannot be made."""
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from percale.lab.topology import parse\n"
        "resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))\n"
        "doc = {'name': 't', 'mgmt': {'ipv4-subnet': '10.0.0.0/8'}, 'topology': {'nodes': {\n"
        "    'a': {'kind': 'linux'}, 'b': {'kind': 'linux', 'mgmt-ipv4': '10.255.255.254'},\n"
        "    'c': {'kind': 'linux'}}}}\n"
        "t = parse(doc, Path('/labs/t.clab.yml'))\n"
        "print(sorted(str(a) for a in t.mgmt_addresses().values()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['10.0.0.2/8', '10.0.0.3/8', '10.255.255.254/8']"


def test_a_free_management_address_is_never_one_a_node_asks_for():
    doc = mutate("topology.nodes.n2", {"kind": "linux", "mgmt-ipv4": "172.20.20.2"})
    doc["topology"]["nodes"]["n3"] = {"kind": "linux", "mgmt-ipv4": "172.20.20.3"}
    doc["topology"]["nodes"]["sw"]["mgmt-ipv4"] = "172.20.20.4"  # a bridge's: no interface uses it
    doc["topology"]["nodes"]["n4"] = {"kind": "linux", "mgmt-ipv4": "172.20.20.4"}
    addresses = {n: str(a) for n, a in parse(doc, HERE).mgmt_addresses().items()}
    # n1 comes before n2, n3 and n4 in the file, and still skips the addresses they ask for.
    assert addresses == {"db": "172.20.20.9/24", "n1": "172.20.20.5/24", "n2": "172.20.20.2/24",
                         "n3": "172.20.20.3/24", "n4": "172.20.20.4/24"}


def test_a_31_management_subnet_has_a_gateway_and_one_node():
    """RFC 3021: both addresses of a /31 are hosts'; the first is the gateway."""
    doc = {"name": "t", "mgmt": {"ipv4-subnet": "10.9.0.0/31"},
           "topology": {"nodes": {"a": {"kind": "linux"}}}}
    t = parse(doc, HERE)
    assert (str(t.mgmt_gateway), str(t.mgmt_addresses()["a"])) == ("10.9.0.0", "10.9.0.1/31")


def node_with(**changes) -> Node:
    return dataclasses.replace(parse(topo(), HERE).nodes["n2"], **{"cmd": "sleep 5", **changes})


def test_a_process_popen_refuses_is_a_lab_error_not_a_traceback(tmp_path, monkeypatch):
    """The backstop behind the checks above: what Popen refuses is one line naming the node."""
    from percale.lab import runner

    monkeypatch.setattr(runner, "LAB_ROOT", tmp_path)
    lab = runner.Lab(parse(topo(), HERE))
    lab.node_dir("n2").mkdir(parents=True)
    with pytest.raises(runner.LabError) as err:
        lab.start_process(node_with(cmd="sleep\0 5"))
    assert str(err.value) == "node n2: cmd 'sleep\\x00 5' could not start (embedded null byte)"
    assert not lab.state_file.exists()  # nothing recorded

    monkeypatch.setattr(runner.Lab, "owns", lambda self, namespace: True)
    monkeypatch.setitem(lab.topology.nodes, "n2", node_with(env={"A=B": "x"}))
    with pytest.raises(runner.LabError, match=r"^node n2: 'true' could not start \(illegal "
                                              r"environment variable name\)$"):
        lab.exec("n2", ["true"])
    monkeypatch.setitem(lab.topology.nodes, "n1", node_with(name="n1"))  # no directory made
    with pytest.raises(runner.LabError) as err:
        lab.exec("n1", ["true"])
    assert str(err.value) == (f"node n1: 'true' could not start (No such file or directory: "
                              f"{tmp_path / 't' / 'n1'})")


@pytest.mark.parametrize("path, value, message", [
    # Every namespace has `lo`; `all` and `default` name the per-device sysctl directories
    # (/proc/sys/net/ipv4/conf/all): `ip link add` refused them halfway through `up`.
    ("topology.links.0", {"endpoints": ["n1:all", "sw:p1"]}, "topology.links[0].endpoints[0]: 'all' is a name Linux keeps for itself"),
    ("topology.links.0", {"endpoints": ["n1:eth1", "sw:default"]}, "topology.links[0].endpoints[1]: 'default' is a name Linux keeps for itself"),
    ("topology.nodes.lo", {"kind": "bridge"}, "topology.nodes.lo: a bridge's device is named as its node, and 'lo' is a name Linux keeps for itself"),
    ("topology.nodes.all", {"kind": "ovs-bridge"}, "topology.nodes.all: a bridge's device is named as its node, and 'all' is"),
    ("topology.nodes.default", {"kind": "bridge"}, "topology.nodes.default: a bridge's device"),
    # The lab's own files sit beside the node directories: a node named so collided with them.
    ("topology.nodes.state.json", {"kind": "linux"}, "topology.nodes.state.json: 'state.json' is the name of the lab's state file (the lab directory holds it beside a directory per node)"),
    ("topology.nodes.state.lock", {"kind": "linux"}, "topology.nodes.state.lock: 'state.lock' is the name of the lab's state file"),
    ("topology.nodes.state.tmp", {"kind": "linux"}, "topology.nodes.state.tmp: 'state.tmp' is the name of the lab's state file"),
])
def test_names_linux_or_the_lab_keep_are_refused(path, value, message):
    doc = topo()
    *parents, last = path.split(".", 2)
    if parents[-1] == "nodes":
        doc["topology"]["nodes"][last] = value
    else:
        doc["topology"]["links"][0] = value
    with pytest.raises(TopologyError) as err:
        parse(doc, HERE)
    assert message in str(err.value)


def test_numeric_names_are_read_as_strings_as_containerlab_reads_them():
    """YAML reads `1:` as a number; containerlab reads map keys (and the name) as strings."""
    doc = yaml.safe_load("name: 42\n"
                         "topology:\n"
                         "  nodes:\n"
                         "    1: {kind: linux}\n"
                         "    2: {kind: linux, stages: {create: {wait-for: [{node: 1}]}}}\n"
                         "  links:\n"
                         "    - endpoints: ['1:eth1', '2:eth1']\n")
    t = parse(doc, HERE)
    assert t.name == "42" and list(t.nodes) == ["1", "2"] and t.nodes["2"].wait_for == ("1",)
    assert t.namespace("1") == "clab-42-1" and t.links[0].a.node == "1"
    doc["topology"]["nodes"]["1"] = {"kind": "linux"}
    with pytest.raises(TopologyError, match=r": topology.nodes.1: is given twice \(as 1 and '1'\)"):
        parse(doc, HERE)
    doc = yaml.safe_load("name: t\ntopology: {nodes: {yes: {kind: linux}}}\n")
    with pytest.raises(TopologyError, match=r"topology.nodes.True: YAML reads it as True, not as a "
                                            r"name: quote it"):
        parse(doc, HERE)


def test_without_a_prefix_the_management_namespace_is_named_by_the_lab():
    """With `prefix: ""` it was `mgmt` in every lab: two such labs could not run together."""
    t = parse(mutate("prefix", ""), HERE)
    assert (t.namespace("n1"), t.mgmt_namespace) == ("n1", "t-mgmt")
    doc = mutate("prefix", "")
    doc["topology"]["nodes"]["t-mgmt"] = {"kind": "linux"}
    with pytest.raises(TopologyError, match=r"topology.nodes.t-mgmt: its namespace 't-mgmt' is the "
                                            r"management network's"):
        parse(doc, HERE)


def test_a_percale_node_whose_socket_path_is_too_long_is_refused_when_read(tmp_path):
    """The agent binds its sockets in <lab dir>/<node>/run: past 107 bytes it failed after `up`
    had started. Checked when the file is read, naming the field."""
    from percale.lab import runner

    long_name = "t" * 70
    path = tmp_path / "long.clab.yml"
    path.write_text(yaml.safe_dump({"name": long_name, "topology": {"nodes": {
        "node1": {"kind": "linux", "image": "percale/node", "cmd": "percale-node"}}}}))
    with pytest.raises(TopologyError) as err:
        runner.open_lab(path)
    socket = runner.LAB_ROOT / long_name / "node1" / "run" / "bgp" / "exabgp.sock"
    assert str(err.value) == (
        f"{path}: name: node node1's socket {str(socket)!r} would be {len(str(socket))} bytes "
        "long; a UNIX socket path has at most 107 (a shorter lab or node name, or PERCALE_LAB_DIR)")
    # A plain node has no sockets there, and a vxlan-only agent no ExaBGP.
    path.write_text(yaml.safe_dump({"name": long_name, "topology": {"nodes": {
        "node1": {"kind": "linux", "cmd": "sleep 5"}}}}))
    assert runner.open_lab(path).topology.name == long_name
    # The longest name that leaves ExaBGP's socket 107 bytes long is taken, one byte more not.
    name = "t" * (107 - len(f"{runner.LAB_ROOT}//node1/run/bgp/exabgp.sock"))
    for given, taken in ((name, True), (name + "t", False)):
        path.write_text(yaml.safe_dump({"name": given, "topology": {"nodes": {
            "node1": {"kind": "linux", "image": "percale/node", "cmd": "percale-node"}}}}))
        if taken:
            assert runner.open_lab(path).topology.name == given
        else:
            with pytest.raises(TopologyError, match="would be 108 bytes long"):
                runner.open_lab(path)
    path.write_text(yaml.safe_dump({"name": name + "t", "topology": {"nodes": {
        "node1": {"kind": "linux", "image": "percale/node", "cmd": "percale-node",
                  "env": {"PERCALE_NETWORKING_BACKEND": "vxlan"}}}}}))
    assert runner.open_lab(path).topology.name == name + "t"


def test_bind_paths_are_rewritten_once(tmp_path, monkeypatch):
    """A host path that contains the bind's own path (/srv/x for /srv) was rewritten again:
    /srv/sub became /srv/x/x/sub; and one bind's host path was taken for another's path."""
    from percale.lab import runner

    monkeypatch.setattr(runner, "LAB_ROOT", tmp_path)
    doc = mutate("topology.nodes.n2", {"kind": "linux", "binds": ["/srv/x:/srv", "/c:/a"]})
    lab = runner.Lab(parse(doc, HERE))
    n2 = lab.topology.nodes["n2"]
    assert lab.rewrite(n2, "ls /srv/sub /a/b") == "ls /srv/x/sub /c/b"
    doc = mutate("topology.nodes.n2", {"kind": "linux", "binds": ["/a/b:/b", "/c:/a"]})
    lab = runner.Lab(parse(doc, HERE))
    assert lab.rewrite(lab.topology.nodes["n2"], "/b/x /a/y") == "/a/b/x /c/y"
