"""The host veth's name (dataplane/pod_network.host_veth_name): one per pod interface, and
Calico's for eth0."""

from __future__ import annotations

import hashlib

import pytest

from percale.dataplane.pod_network import host_veth_name

pytestmark = pytest.mark.unit


def test_eth0_keeps_calicos_name():
    digest = hashlib.sha1(b"shop.web").hexdigest()[:12]
    assert host_veth_name("shop", "web") == host_veth_name("shop", "web", "eth0") == f"pcl{digest}"


@pytest.mark.parametrize(("one", "other"), [
    # Pod names may hold dots: with "<namespace>.<pod>.<ifname>", pod web's net1 and pod
    # web.net1's eth0 had one host veth, and the ADD of either deleted the other's.
    (("shop", "web", "net1"), ("shop", "web.net1", "eth0")),
    (("shop", "web", "net1.100"), ("shop", "web.net1", "100")),
    (("shop", "web", "net1"), ("shop", "web", "net2")),
])
def test_no_two_pod_interfaces_share_a_host_veth(one, other):
    assert host_veth_name(*one) != host_veth_name(*other)
    assert len(host_veth_name(*one)) == 15  # the kernel's limit
