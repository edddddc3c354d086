"""The limits behind two of percale-node's start-up checks, at their edges (the refusals and
warnings as a user sees them: tests/cli/test_node_options.py and test_node_flags_host.py)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from percale.dataplane.netlink import Link
from percale.node.host_mtu import fit_host_mtu
from percale.node.main import socket_path_problem

pytestmark = pytest.mark.unit


def test_a_socket_path_may_have_107_bytes_not_108():
    # sun_path holds 108 bytes with the NUL that ends the path; bytes, not characters, count.
    assert socket_path_problem("/" + "s" * 106) is None
    assert socket_path_problem("/" + "s" * 107) == (
        "is 108 bytes long; a UNIX socket path must be shorter than 108 bytes")
    assert socket_path_problem("/" + "é" * 53) is None  # 107 bytes in 54 characters
    assert socket_path_problem("/" + "é" * 54) == (
        "is 109 bytes long; a UNIX socket path must be shorter than 108 bytes")


def link(name: str, mtu: int) -> Link:
    return Link(index=2, name=name, flags=1, mtu=mtu, mac=None, peer_index=0)


def test_a_detected_mtu_is_capped_by_the_interface_holding_the_node_address(caplog):
    # The pattern matched a jumbo-frame eth0, but the node's address is on bond0.
    source = "interfaces matching --mtu-iface-pattern '^eth'"
    with caplog.at_level(logging.WARNING, logger="percale.node"):
        assert fit_host_mtu(9000, source, [link("bond0", 1500), link("eth1", 9000)]) == (
            1500, link("bond0", 1500))
    assert caplog.messages == [
        "interfaces matching --mtu-iface-pattern '^eth': host MTU 9000 is above the MTU 1500 of"
        " bond0, which holds this node's address: using 1500, as no larger packet leaves on bond0"]


def test_an_mtu_below_the_interface_is_left_alone(caplog):
    # Smaller than the link is what --mtu is for: an underlay path narrower than the interface.
    with caplog.at_level(logging.WARNING, logger="percale.node"):
        assert fit_host_mtu(1400, "--mtu (PERCALE_MTU)", [link("eth0", 1500)]) == (1400, None)
        assert fit_host_mtu(1500, "--mtu (PERCALE_MTU)", []) == (1500, None)  # no address here
    assert caplog.messages == []


def test_a_node_address_with_a_host_prefix_caps_nothing():
    # A routed-to-host design puts the node's address, as a /32, on a stub (dummy, loopback):
    # its traffic leaves by the uplinks, so the stub's MTU says nothing of what leaves.
    from percale.node.host_mtu import node_links

    assert node_links([ipaddress.ip_interface("127.0.0.1/32"), ipaddress.ip_interface("::1/128")]) == []
