"""Calico's pod and namespace annotations, as an ADD reads them (node/cni_annotations.py)."""

from __future__ import annotations

import ipaddress

import pytest

from percale.datastore.contract import PodAnnotations
from percale.node.cni_annotations import AnnotationError, Requested, requested

pytestmark = pytest.mark.unit

V4, V6, ADDRS = ("cni.projectcalico.org/ipv4pools", "cni.projectcalico.org/ipv6pools",
                 "cni.projectcalico.org/ipAddrs")


def test_the_pods_pools_come_before_its_namespaces_per_family():
    asked = requested(PodAnnotations(
        pod={V4: '["special"]'}, namespace={V4: '["ns-pool"]', V6: '["fd00:77::/48"]'}))
    assert asked == Requested(ipv4_pools=["special"], ipv6_pools=["fd00:77::/48"])


def test_no_annotation_asks_nothing():
    assert requested(PodAnnotations({"other": "x"}, {})) == Requested()


def test_fixed_addresses_override_the_pools():
    asked = requested(PodAnnotations({ADDRS: '["10.77.9.9", "fd00::9"]', V4: '["p"]'}, {}))
    assert asked == Requested(addresses=[ipaddress.ip_address("10.77.9.9"),
                                         ipaddress.ip_address("fd00::9")])


@pytest.mark.parametrize("annotations, words", [
    ({ADDRS: "not-json"}, ["pod annotation cni.projectcalico.org/ipAddrs", "is not JSON"]),
    ({ADDRS: '["10.0.0.300"]'}, ["ipAddrs", "'10.0.0.300' is not an IP address"]),
    ({ADDRS: '["10.0.0.1", "10.0.0.2"]'}, ["ipAddrs", "more than one IPv4 address"]),
    ({V4: '"pool"'}, ["ipv4pools", "not a JSON list of strings"]),
    ({V4: "[]"}, ["ipv4pools", "the list is empty"]),
    ({"cni.projectcalico.org/floatingIPs": '["1.2.3.4"]'}, ["floatingIPs", "does not support"]),
    ({"cni.projectcalico.org/ipAddrsNoIpam": '["1.2.3.4"]'}, ["ipAddrsNoIpam", "feature_control"]),
])
def test_an_annotation_that_cannot_be_honoured_is_named(annotations, words):
    with pytest.raises(AnnotationError) as caught:
        requested(PodAnnotations(annotations, {}))
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_a_bad_namespace_annotation_says_it_is_the_namespaces():
    with pytest.raises(AnnotationError,
                       match="namespace annotation cni.projectcalico.org/ipv6pools"):
        requested(PodAnnotations({}, {V6: "{"}))
