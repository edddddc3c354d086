"""dataplane/vxlan.py in two namespaces joined by a veth pair, as two nodes on one link: the
device as Calico's felix makes it (VNI 4096, port 4789, no learning, the tunnel address /32), a
permanent neighbour and FDB entry per remote end, traffic through the tunnel both ways, a device
with the wrong VNI made again, and remote ends removed when they go. In one namespace: routes
through the device kept across a change of its tunnel address, and a device of another name
holding the VNI (Calico's, deleted; anyone else's, named and left alone)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.netns

SCRIPT = r"""
import ipaddress, json, sys
from percale.dataplane.fib import FIB, NextHop
from percale.dataplane.netlink import Netlink
from percale.dataplane.route_owners import RouteProtocol
from percale.dataplane.vxlan import Device, Tunnel, Vtep
step = json.loads(sys.argv[1])
ip = ipaddress.ip_address
with Netlink() as nl:
    parent = nl.link(name="under").index
tunnel = Tunnel()
index = tunnel.ensure(Device(ip(step["tunnel"]), step["mac"], step["mtu"], ip(step["local"]), parent))
if "vteps" in step:  # a step without vteps or routes leaves them as they are
    tunnel.set_vteps({Vtep(ip(v[0]), v[1], ip(v[2])) for v in step["vteps"]})
if "routes" in step:
    with FIB(protocol=RouteProtocol.VXLAN, takeover=True) as fib:
        fib.replace_all({net: {NextHop(ip(via), index, onlink=True)} for net, via in step["routes"].items()})
print(index)
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def configure(ns: str, **step) -> int:
    done = sh("ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, json.dumps(step), check=False)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_two_nodes_reach_each_other_through_vxlan_percale():
    a, b = f"vxa{uuid.uuid4().hex[:5]}", f"vxb{uuid.uuid4().hex[:5]}"
    for ns in (a, b):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    try:
        sh("ip", "link", "add", "under", "netns", a, "type", "veth", "peer", "name", "under", "netns", b)
        for ns, address in ((a, "192.0.2.1/24"), (b, "192.0.2.2/24")):
            sh("ip", "-n", ns, "addr", "add", address, "dev", "under")
            sh("ip", "-n", ns, "link", "set", "under", "up")
        mac_a, mac_b = "66:00:00:00:00:0a", "66:00:00:00:00:0b"
        # A block behind each tunnel end: its route goes via the other's tunnel address.
        sh("ip", "-n", a, "addr", "add", "10.244.1.5/32", "dev", "lo")
        sh("ip", "-n", b, "addr", "add", "10.244.2.5/32", "dev", "lo")
        configure(a, tunnel="10.244.1.0", mac=mac_a, mtu=1450, local="192.0.2.1",
                  vteps=[["10.244.2.0", mac_b, "192.0.2.2"]], routes={"10.244.2.0/26": "10.244.2.0"})
        configure(b, tunnel="10.244.2.0", mac=mac_b, mtu=1450, local="192.0.2.2",
                  vteps=[["10.244.1.0", mac_a, "192.0.2.1"]], routes={"10.244.1.0/26": "10.244.1.0"})

        details = json.loads(sh("ip", "-j", "-d", "-n", a, "link", "show", "vxlan.percale").stdout)[0]
        data = details["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["learning"], data["local"]) == (4096, 4789, False, "192.0.2.1")
        assert (details["mtu"], details["address"]) == (1450, mac_a)
        assert "10.244.1.0/32" in sh("ip", "-n", a, "-4", "addr", "show", "vxlan.percale").stdout
        neigh = sh("ip", "-n", a, "neigh", "show", "dev", "vxlan.percale").stdout
        assert "10.244.2.0 lladdr 66:00:00:00:00:0b PERMANENT" in neigh
        fdb = sh("bridge", "-n", a, "fdb", "show", "dev", "vxlan.percale").stdout
        assert f"{mac_b} dst 192.0.2.2 self permanent" in fdb
        route = sh("ip", "-n", a, "route", "show", "10.244.2.0/26").stdout
        assert "via 10.244.2.0 dev vxlan.percale proto 204 onlink" in route

        ping = sh("ip", "netns", "exec", a, "ping", "-c", "2", "-W", "2", "-I", "10.244.1.5", "10.244.2.5",
                  check=False)
        assert ping.returncode == 0, ping.stdout
        counters = json.loads(sh("ip", "-j", "-s", "-n", a, "link", "show", "vxlan.percale").stdout)[0]
        assert counters["stats64"]["tx"]["packets"] >= 2

        # A device made by someone else with another VNI is made again; a VTEP that went away
        # loses its neighbour and FDB entries.
        sh("ip", "-n", b, "link", "del", "vxlan.percale")
        sh("ip", "-n", b, "link", "add", "vxlan.percale", "type", "vxlan", "id", "7", "dstport", "4789",
           "dev", "under")
        configure(b, tunnel="10.244.2.0", mac=mac_b, mtu=1400, local="192.0.2.2", vteps=[], routes={})
        data = json.loads(sh("ip", "-j", "-d", "-n", b, "link", "show", "vxlan.percale").stdout)[0]
        assert data["linkinfo"]["info_data"]["id"] == 4096 and data["mtu"] == 1400
        configure(a, tunnel="10.244.1.0", mac=mac_a, mtu=1450, local="192.0.2.1", vteps=[], routes={})
        assert sh("ip", "-n", a, "neigh", "show", "dev", "vxlan.percale").stdout.strip() == ""
        assert mac_b not in sh("bridge", "-n", a, "fdb", "show", "dev", "vxlan.percale").stdout
        assert sh("ip", "-n", a, "route", "show", "proto", "204").stdout.strip() == ""
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


def test_the_ipv6_device_carries_ipv6_pods_between_two_nodes():
    """vxlan6.percale over an IPv6 underlay: the tunnel /128, IPv6 neighbour and FDB entries,
    a /122 through it, and ping6 between addresses behind each end."""
    a, b = f"v6a{uuid.uuid4().hex[:5]}", f"v6b{uuid.uuid4().hex[:5]}"
    script = SCRIPT.replace("Tunnel()", "Tunnel(DEVICE_V6)").replace(
        "from percale.dataplane.vxlan import Device, Tunnel, Vtep",
        "from percale.dataplane.vxlan import DEVICE_V6, Device, Tunnel, Vtep")
    for ns in (a, b):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    try:
        sh("ip", "link", "add", "under", "netns", a, "type", "veth", "peer", "name", "under", "netns", b)
        for ns, address in ((a, "fd00:99::1/64"), (b, "fd00:99::2/64")):
            sh("ip", "-n", ns, "addr", "add", address, "dev", "under", "nodad")
            sh("ip", "-n", ns, "link", "set", "under", "up")
        sh("ip", "-n", a, "addr", "add", "fd00:10:0:1::5/128", "dev", "lo")
        sh("ip", "-n", b, "addr", "add", "fd00:10:0:2::5/128", "dev", "lo")
        for ns, own, other, mac, far_mac, far_block in (
                (a, "fd00:10:0:1::", "fd00:10:0:2::", "66:00:00:00:06:0a", "66:00:00:00:06:0b", "fd00:10:0:2::/122"),
                (b, "fd00:10:0:2::", "fd00:10:0:1::", "66:00:00:00:06:0b", "66:00:00:00:06:0a", "fd00:10:0:1::/122")):
            local, remote = ("fd00:99::1", "fd00:99::2") if ns == a else ("fd00:99::2", "fd00:99::1")
            step = {"tunnel": own, "mac": mac, "mtu": 1430, "local": local,
                    "vteps": [[other, far_mac, remote]], "routes": {far_block: other}}
            done = sh("ip", "netns", "exec", ns, sys.executable, "-c", script, json.dumps(step), check=False)
            assert done.returncode == 0, done.stderr
        details = json.loads(sh("ip", "-j", "-d", "-n", a, "link", "show", "vxlan6.percale").stdout)[0]
        assert details["linkinfo"]["info_data"]["local6"] == "fd00:99::1" and details["mtu"] == 1430
        assert "66:00:00:00:06:0b PERMANENT" in sh("ip", "-n", a, "-6", "neigh", "show", "dev", "vxlan6.percale").stdout
        assert "dst fd00:99::2 self permanent" in sh("bridge", "-n", a, "fdb", "show", "dev", "vxlan6.percale").stdout
        ping = sh("ip", "netns", "exec", a, "ping", "-6", "-c", "2", "-W", "2", "-I", "fd00:10:0:1::5",
                  "fd00:10:0:2::5", check=False)
        assert ping.returncode == 0, ping.stdout
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def node_ns():
    """One namespace as a node: `under` (192.0.2.1/24, fd00:99::1/64) up, its peer inside too."""
    ns = f"vx1{uuid.uuid4().hex[:5]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "under", "type", "veth", "peer", "name", "peer")
        sh("ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "under")
        sh("ip", "-n", ns, "addr", "add", "fd00:99::1/64", "dev", "under", "nodad")
        for device in ("lo", "under", "peer"):
            sh("ip", "-n", ns, "link", "set", device, "up")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)


def test_routes_through_the_device_stay_when_its_tunnel_address_changes(node_ns):
    """The kernel flushes every route through a device that loses its last IPv4 address, and the
    agent, believing its routes in place, would not write them again before its next resync
    (30 s): the new address must be on before the old one goes."""
    mac_b = "66:00:00:00:00:0b"
    configure(node_ns, tunnel="10.244.1.0", mac="66:00:00:00:00:0a", mtu=1450, local="192.0.2.1",
              vteps=[["10.244.2.0", mac_b, "192.0.2.2"]], routes={"10.244.2.0/26": "10.244.2.0"})
    configure(node_ns, tunnel="10.244.1.64", mac="66:00:00:00:00:0a", mtu=1450, local="192.0.2.1")
    addresses = sh("ip", "-n", node_ns, "-4", "addr", "show", "vxlan.percale").stdout
    assert "10.244.1.64/32" in addresses and "10.244.1.0/32" not in addresses
    route = sh("ip", "-n", node_ns, "route", "show", "10.244.2.0/26").stdout
    assert "via 10.244.2.0 dev vxlan.percale proto 204 onlink" in route


@pytest.mark.parametrize("version", [4, 6])
def test_calicos_leftover_device_holding_the_vni_gives_way(node_ns, version):
    """Calico leaves vxlan.calico (vxlan-v6.calico) behind when percale replaces it, holding VNI
    4096 on port 4789: the kernel would refuse ours (EEXIST) for as long as it stays."""
    calico, ours, local, tunnel = (("vxlan.calico", "vxlan.percale", "192.0.2.1", "10.244.1.0")
                                   if version == 4 else
                                   ("vxlan-v6.calico", "vxlan6.percale", "fd00:99::1", "fd00:10:0:1::"))
    sh("ip", "-n", node_ns, "link", "add", calico, "type", "vxlan", "id", "4096", "dstport", "4789",
       "dev", "under", "local", local, "nolearning")
    step = {"tunnel": tunnel, "mac": "66:00:00:00:00:0a", "mtu": 1400, "local": local}
    script = SCRIPT if version == 4 else SCRIPT.replace("Tunnel()", "Tunnel('vxlan6.percale')")
    done = sh("ip", "netns", "exec", node_ns, sys.executable, "-c", script, json.dumps(step), check=False)
    assert done.returncode == 0, done.stderr
    details = json.loads(sh("ip", "-j", "-d", "-n", node_ns, "link", "show", ours).stdout)[0]
    assert (details["linkinfo"]["info_data"]["id"], details["mtu"]) == (4096, 1400)
    assert sh("ip", "-n", node_ns, "link", "show", calico, check=False).returncode != 0
    assert f"deleting {calico}, left by Calico" in done.stderr


def test_another_device_holding_the_vni_is_named_and_left_alone(node_ns):
    sh("ip", "-n", node_ns, "link", "add", "overlay0", "type", "vxlan", "id", "4096", "dstport", "4789",
       "dev", "under", "local", "192.0.2.1")
    step = {"tunnel": "10.244.1.0", "mac": "66:00:00:00:00:0a", "mtu": 1450, "local": "192.0.2.1"}
    done = sh("ip", "netns", "exec", node_ns, sys.executable, "-c", SCRIPT, json.dumps(step), check=False)
    assert done.returncode != 0
    assert ("VNIInUse: [Errno 17] overlay0 holds VXLAN VNI 4096 on port 4789, so vxlan.percale cannot"
            " be made") in done.stderr and "ip link del overlay0" in done.stderr
    assert sh("ip", "-n", node_ns, "link", "show", "overlay0", check=False).returncode == 0

