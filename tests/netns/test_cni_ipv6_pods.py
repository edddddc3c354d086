"""IPv6 pods wired through the real CNI plugin by a real percale-node, as Calico wires them:

  * a new pod's IPv6 is usable the moment ADD returns: the host veth's link-local address (the
    pod's IPv6 gateway) and the pod's own skip duplicate address detection, so neither the pod's
    first packet to the node nor the node's first to the pod waits for it (it waited 2 s);
  * a dual-stack ADD succeeds where IPv6 is off by default, on the node
    (net.ipv6.conf.default.disable_ipv6=1, so its new veths have none) or in the pod's sandbox:
    the ADD turns it on for the pod's interfaces, and only for a pod with an IPv6 address.
"""

from __future__ import annotations

import ipaddress
import re
import uuid

import pytest

from tests.helpers.cni_node import CNINode, netconf, sh
from tests.netns.conftest import POOL, reset_store

pytestmark = pytest.mark.netns

POOL6 = "fd00:f6::/64"
NODE6 = "fd00:f6:99::10"  # on the node's uplink: an address of the node for pods to reach
GATEWAY6 = "fe80::ecee:eeff:feee:eeee"
DUAL = {"type": "percale-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}


@pytest.fixture(scope="module")
def node(etcd_server):
    reset_store(etcd_server.endpoint, {"pods": {"cidr": POOL}, "pods6": {"cidr": POOL6}})
    cni = CNINode(etcd_server.unix_endpoint, name=f"fx6{uuid.uuid4().hex[:6]}").start()
    try:
        cni.exec("ip", "addr", "add", f"{NODE6}/64", "dev", "eth0", "nodad")
        yield cni
    finally:
        cni.stop()


def in_ns(netns: str, *args: str):
    return sh("ip", "netns", "exec", netns, *args, check=False)


def add(node: CNINode, netns: str, ipam: dict = DUAL) -> dict:
    added = node.plugin("percale", "ADD", netconf(node, ipam=ipam), container_id=f"c-{netns}",
                        netns=netns, args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{netns}")
    assert added.code == 0, added.out + added.err
    return added.json


def address6(result: dict) -> ipaddress.IPv6Address:
    [found] = [ipaddress.ip_interface(ip["address"]).ip for ip in result["ips"]
               if ipaddress.ip_interface(ip["address"]).version == 6]
    return found


def first_ping6(netns: str, target: str) -> float | None:
    """The round trip of one echo request in ms (the first: no retry, no polling); None
    without an answer in 3 s."""
    done = in_ns(netns, "ping", "-6", "-n", "-c", "1", "-W", "3", target)
    found = re.search(r"time=([\d.]+) ms", done.stdout)
    return float(found.group(1)) if done.returncode == 0 and found else None


def sysctl(netns: str, name: str) -> str:
    return in_ns(netns, "sysctl", "-n", name).stdout.strip()


def test_a_new_pods_first_ipv6_packets_to_and_from_the_node_are_answered_at_once(node):
    """The pod's IPv6 default route goes via the host veth's link-local address. While that
    address was tentative (duplicate address detection, about 2 s after the link came up) the
    node ignored the pod's neighbour solicitations for it, and could not solicit the pod's
    address either: the first ping took 2.03-2.09 s, a connect with a 0.5 s timeout failed."""
    uplink_dad = sysctl(node.netns, "net.ipv6.conf.eth0.accept_dad")
    outward = node.new_pod_netns()
    add(node, outward)
    rtt = first_ping6(outward, NODE6)
    assert rtt is not None and rtt < 500, f"pod -> node: {rtt} ms"
    assert "tentative" not in in_ns(outward, "ip", "-6", "addr", "show", "eth0").stdout
    # Written in the pod's namespace: the node's own eth0 (its uplink) keeps its setting.
    assert sysctl(outward, "net.ipv6.conf.eth0.accept_dad") == "0"
    assert sysctl(node.netns, "net.ipv6.conf.eth0.accept_dad") == uplink_dad != "0"

    inward = node.new_pod_netns()
    rtt = first_ping6(node.netns, str(address6(add(node, inward))))
    assert rtt is not None and rtt < 500, f"node -> pod: {rtt} ms"

    to_gateway = node.new_pod_netns()
    add(node, to_gateway)
    rtt = first_ping6(to_gateway, f"{GATEWAY6}%eth0")
    assert rtt is not None and rtt < 500, f"pod -> its gateway: {rtt} ms"


@pytest.mark.parametrize("where", ["node", "pod"])
def test_a_dual_stack_add_succeeds_where_ipv6_is_off_by_default(node, where):
    """Node: net.ipv6.conf.default.disable_ipv6=1, so the host veth is made without IPv6 and the
    host route to the pod was refused ("IPv6 is disabled on nexthop device", CNI code 103). Pod:
    a sandbox made with IPv6 off refused the pod's address ("IPv6 is disabled on this
    device"). Calico writes disable_ipv6=0 on the host veth and on all, default and lo in the
    pod, as percale now does."""
    netns = node.new_pod_netns()
    off = node.netns if where == "node" else netns
    keys = ["default"] if where == "node" else ["all", "default"]
    before = {key: sysctl(off, f"net.ipv6.conf.{key}.disable_ipv6") for key in keys}
    for key in keys:
        in_ns(off, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    try:
        result = add(node, netns)
    finally:
        if where == "node":  # the module's node serves the other tests
            for key, value in before.items():
                in_ns(off, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6={value}")
    ip6 = address6(result)
    assert f"inet6 {ip6}/128" in in_ns(netns, "ip", "-6", "addr", "show", "eth0").stdout
    pod_default = in_ns(netns, "ip", "-6", "route", "show", "default").stdout
    assert f"via {GATEWAY6} dev eth0" in pod_default, pod_default
    host_veth = result["interfaces"][0]["name"]
    host_routes = node.exec("ip", "-6", "route", "show", "proto", "201").stdout
    assert f"{ip6} dev {host_veth}" in host_routes, host_routes
    rtt = first_ping6(netns, NODE6)
    assert rtt is not None and rtt < 500, f"pod -> node: {rtt} ms"
    if where == "pod":
        # Turned on only for an ADD with an IPv6 address: an IPv4-only pod's sandbox keeps it off.
        plain = node.new_pod_netns()
        for key in keys:
            in_ns(plain, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        add(node, plain, ipam={"type": "percale-ipam"})
        assert sysctl(plain, "net.ipv6.conf.all.disable_ipv6") == "1"
        assert sysctl(plain, "net.ipv6.conf.eth0.disable_ipv6") == "1"
