"""The communities a node adds to what it exports: BGPConfiguration prefixAdvertisements read as
Calico's confd reads them (bgpd/communities.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from percale.api import BGPConfiguration, parse
from percale.bgpd.communities import communities_for, community_rules, community_text

pytestmark = pytest.mark.unit


def config(name: str = "default", **spec: Any) -> BGPConfiguration:
    return parse({"apiVersion": "percale.io/v1", "kind": "BGPConfiguration",
                  "metadata": {"name": name}, "spec": spec})


GLOBAL = config(
    communities=[{"name": "ours", "value": "65000:100"}, {"name": "big", "value": "65000:1:2"}],
    prefixAdvertisements=[{"cidr": "10.244.0.0/16", "communities": ["ours", "5663:12", "big"]},
                          {"cidr": "10.244.8.0/24", "communities": ["ours", "7:7"]},
                          {"cidr": "fd00:244::/48", "communities": ["big"]}],
)


def net(text: str):
    return ipaddress.ip_network(text)


def test_names_and_values_apply_to_every_route_inside_each_cidr_once():
    rules = community_rules("node-a", [GLOBAL])
    assert communities_for(net("10.244.1.0/26"), rules) == (((65000, 100), (5663, 12)), ((65000, 1, 2),))
    # Inside two advertisements: both apply, 65000:100 once.
    assert communities_for(net("10.244.8.64/26"), rules) == (
        ((65000, 100), (5663, 12), (7, 7)), ((65000, 1, 2),))
    assert communities_for(net("10.244.0.0/16"), rules)[0]  # the CIDR itself is inside
    assert communities_for(net("10.0.0.0/8"), rules) == ((), ())  # wider: not inside
    assert communities_for(net("fd00:244::/122"), rules) == ((), ((65000, 1, 2),))
    assert community_text(*communities_for(net("10.244.1.0/26"), rules)) == (
        "community [ 65000:100 5663:12 ] large-community [ 65000:1:2 ]")
    assert community_text((), ()) == ""


def test_a_nodes_own_configuration_replaces_the_global_advertisements_even_when_empty():
    mine = config("node.node-a", prefixAdvertisements=[{"cidr": "10.244.0.0/16",
                                                       "communities": ["1:2"]}])
    assert communities_for(net("10.244.1.0/26"), community_rules("node-a", [GLOBAL, mine])) == (
        ((1, 2),), ())
    # Another node keeps the global ones.
    assert community_rules("node-b", [GLOBAL, mine]) == community_rules("node-b", [GLOBAL])
    empty = config("node.node-a", prefixAdvertisements=[])
    assert community_rules("node-a", [GLOBAL, empty]) == ()
    # A node configuration without prefixAdvertisements leaves the global ones in force.
    other = config("node.node-a", listenPort=1790)
    assert community_rules("node-a", [GLOBAL, other]) == community_rules("node-a", [GLOBAL])
    assert community_rules("node-a", []) == ()
