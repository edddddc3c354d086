"""percale's hand-packed netlink (dataplane/netlink.py) read against pyroute2, an independent
implementation of the same protocol: what percale writes, pyroute2 reads back as meant, and what
the kernel holds (written by `ip`), percale reads as pyroute2 does. In a namespace of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.netns

# Runs inside the namespace: percale writes, then both libraries read; one JSON document out.
SCRIPT = r"""
import ipaddress, json, os, socket
from pyroute2 import IPRoute
from percale.dataplane.netlink import Netlink, RT_SCOPE_LINK, RTN_BLACKHOLE

pod_ns = os.environ["POD_NS"]
out = {}
with Netlink() as nl, IPRoute() as ipr:
    fd = os.open(f"/var/run/netns/{pod_ns}", os.O_RDONLY)
    nl.add_veth("pclhost0", "ee:ee:ee:ee:ee:ee", 1400, peer="eth0", peer_mac="02:00:00:00:00:07",
                peer_netns_fd=fd)
    os.close(fd)
    host = nl.link(name="pclhost0")
    nl.set_link_up(host.index)
    nl.add_address(host.index, ipaddress.ip_interface("198.51.100.1/24"))
    nl.add_address(host.index, ipaddress.ip_interface("2001:db8:5::1/64"), nodad=True)
    nl.add_route(ipaddress.ip_network("10.244.3.7/32"), oif=host.index, scope=RT_SCOPE_LINK, protocol=201)
    nl.add_route(ipaddress.ip_network("10.244.9.0/26"), protocol=203, route_type=RTN_BLACKHOLE)
    nl.add_route(ipaddress.ip_network("10.244.8.0/26"), gateway=ipaddress.ip_address("198.51.100.9"),
                 protocol=202)
    nl.add_route(ipaddress.ip_network("10.244.7.0/26"), gateway=ipaddress.ip_address("192.0.2.99"),
                 oif=host.index, onlink=True, protocol=202)
    assert nl.delete_route(ipaddress.ip_network("10.244.7.0/26"), protocol=201) is False  # not its protocol
    out["missing_link"] = nl.link(name="nosuchlink") is None

    (link,) = ipr.link("get", index=host.index)
    out["pyroute2_link"] = [link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU"),
                            link.get_attr("IFLA_ADDRESS"), bool(link["flags"] & 1)]
    out["percale_link"] = [host.name, host.mtu, host.mac, bool(nl.link(index=host.index).flags & 1)]
    out["pyroute2_addresses"] = sorted(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                                       for a in ipr.get_addr(index=host.index) if a["scope"] == 0)
    out["percale_addresses"] = sorted(str(a.interface) for a in nl.addresses(index=host.index)
                                      if a.scope == 0)
    def theirs(family, proto):
        return sorted((f"{r.get_attr('RTA_DST') or ('0.0.0.0' if family == 2 else '::')}/{r['dst_len']}",
                       r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF") or 0, r["type"], r["flags"] & 4)
                      for r in ipr.get_routes(family=family, table=254) if r["proto"] == proto)
    def ours(family, proto, oif=0):
        return sorted((str(r.destination), str(r.gateway) if r.gateway else None, r.oif, r.type,
                       r.flags & 4) for r in nl.routes(family, protocol=proto, oif=oif))
    out["routes"] = {str(proto): [theirs(2, proto), ours(2, proto)] for proto in (201, 202, 203, 199)}
    out["routes6"] = [theirs(10, 198), ours(10, 198)]
    out["by_oif"] = ours(2, 202, oif=host.index)
    out["route_to"] = str(nl.route_to(ipaddress.ip_address("198.51.100.77")).preferred_source)
    out["default"] = [str(r.gateway) for r in nl.routes(socket.AF_INET, default_only=True)]
print(json.dumps(out))
"""


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def test_what_percale_writes_and_reads_agrees_with_pyroute2():
    node, pod = f"nl{uuid.uuid4().hex[:6]}", f"nlp{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", node)
    sh("ip", "netns", "add", pod)
    try:
        ip = ("ip", "netns", "exec", node, "ip")
        sh(*ip, "link", "set", "lo", "up")
        sh(*ip, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer")
        sh(*ip, "link", "set", "uplink", "up")
        sh(*ip, "link", "set", "uplink-peer", "up")
        sh(*ip, "addr", "add", "192.0.2.10/24", "dev", "uplink")
        sh(*ip, "route", "add", "default", "via", "192.0.2.1", "dev", "uplink")
        # Routes the kernel holds from someone else: ECMP, another protocol, IPv6.
        sh(*ip, "route", "add", "10.9.0.0/24", "proto", "199", "nexthop", "via", "192.0.2.2",
           "nexthop", "via", "192.0.2.3")
        sh(*ip, "-6", "addr", "add", "2001:db8:1::1/64", "dev", "uplink", "nodad")
        sh(*ip, "-6", "route", "add", "2001:db8:9::/64", "via", "2001:db8:1::2", "proto", "198")
        done = subprocess.run(["ip", "netns", "exec", node, sys.executable, "-c", SCRIPT],
                              capture_output=True, text=True, env={"POD_NS": pod, "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["missing_link"]
        assert out["percale_link"] == out["pyroute2_link"] == ["pclhost0", 1400, "ee:ee:ee:ee:ee:ee", True]
        assert out["percale_addresses"] == out["pyroute2_addresses"] == ["198.51.100.1/24", "2001:db8:5::1/64"]
        for proto, (theirs, ours) in out["routes"].items():
            assert [tuple(r) for r in ours] == [tuple(r) for r in theirs], proto
        pod_route, = out["routes"]["201"][1]
        assert pod_route[0] == "10.244.3.7/32"
        assert out["routes"]["203"][1][0][3] == 6  # RTN_BLACKHOLE
        onlink = [r for r in out["routes"]["202"][1] if r[0] == "10.244.7.0/26"]
        assert onlink and onlink[0][4] == 4  # RTNH_F_ONLINK
        assert [r[0] for r in out["routes"]["199"][1]] == ["10.9.0.0/24"]  # the ECMP route
        assert [tuple(r) for r in out["routes6"][1]] == [tuple(r) for r in out["routes6"][0]]
        # Both of protocol 202 go out of pclhost0: one pinned onlink, one resolved through it.
        assert [r[0] for r in out["by_oif"]] == ["10.244.7.0/26", "10.244.8.0/26"]
        assert out["route_to"] == "198.51.100.1"
        assert out["default"] == ["192.0.2.1"]
        # The peer was born inside the pod's namespace, with its name, MAC and MTU.
        peer = json.loads(sh("ip", "-j", "-n", pod, "link", "show", "eth0"))[0]
        assert (peer["mtu"], peer["address"]) == (1400, "02:00:00:00:00:07")
    finally:
        sh("ip", "netns", "del", node)
        sh("ip", "netns", "del", pod)
