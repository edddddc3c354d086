"""Installations the operator must refuse (installation/model.py `problems()`) rather than render
into objects the apiserver, install-cni or percale-node then refuse: each problem names the field
the user wrote and why. Also how `registry` reaches the images (installation/render.py)."""

from __future__ import annotations

import pytest

from percale.installation import model, render

pytestmark = pytest.mark.unit


def _effective(spec: dict) -> model.InstallationSpec:
    return model.with_defaults(model.InstallationSpec.model_validate(spec))


def _pools(*pools: dict, **network) -> dict:
    return {"calicoNetwork": {"ipPools": list(pools), **network}}


V4 = "spec.calicoNetwork.nodeAddressAutodetectionV4"


@pytest.mark.parametrize("spec, field, words", [
    # An explicit 0 is a block size, not "unset": it was silently made 26.
    (_pools({"cidr": "10.0.0.0/16", "blockSize": 0}), "spec.calicoNetwork.ipPools[0].blockSize",
     "outside 20-32"),
    (_pools({"cidr": "fd00::/48", "blockSize": 0}), "spec.calicoNetwork.ipPools[0].blockSize",
     "outside 116-128"),
    # install-cni (percalectl cni install --mtu) refuses a pod MTU below 576 on every node.
    ({"calicoNetwork": {"mtu": 575}}, "spec.calicoNetwork.mtu", "576"),
    ({"calicoNetwork": {"mtu": 1}}, "spec.calicoNetwork.mtu", "576"),
    ({"nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": 0}}},
     "spec.nodeUpdateStrategy.rollingUpdate.maxUnavailable", "at least 1"),
    ({"nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": -2}}},
     "spec.nodeUpdateStrategy.rollingUpdate.maxUnavailable", "at least 1"),
    ({"controlPlaneNodeSelector": {"bad key!": "x"}}, "spec.controlPlaneNodeSelector", "bad key!"),
    ({"controlPlaneNodeSelector": {"zone": "a b"}}, "spec.controlPlaneNodeSelector", "zone"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"cidrs": ["10.0.0.0/8", "bogus"]}}},
     f"{V4}.cidrs[1]", "invalid CIDR"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"cidrs": ["fd00::/64"]}}},
     f"{V4}.cidrs[0]", "IPv6"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"interface": "eth("}}},
     f"{V4}.interface", "regular expression"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"skipInterface": "^br-.*,eth["}}},
     f"{V4}.skipInterface", "regular expression"),
    # The name is the pool's, not its metadata's: the user wrote ipPools[0].name.
    (_pools({"cidr": "10.0.0.0/16", "name": "Bad_Name"}), "spec.calicoNetwork.ipPools[0].name",
     "Bad_Name"),
    (_pools({"cidr": "10.0.0.0/16", "encapsulation": "None"}, bgp="Disabled"),
     "spec.calicoNetwork.ipPools[0].encapsulation", "BGP"),
])
def test_problems_name_the_field_and_the_reason(spec, field, words):
    found = model.problems(_effective(spec))
    assert any(p.field == field and words in p.reason for p in found), found


@pytest.mark.parametrize("spec", [
    {"calicoNetwork": {"mtu": 0}},
    {"calicoNetwork": {"mtu": 576}},
    {"calicoNetwork": {"mtu": 65535}},
    {"nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": 1}}},
    {"controlPlaneNodeSelector": {"node-role.kubernetes.io/control-plane": ""}},
    {"calicoNetwork": {"nodeAddressAutodetectionV4": {"cidrs": ["10.0.0.0/8", "192.168.1.5/24"]}}},
    {"calicoNetwork": {"nodeAddressAutodetectionV4": {"interface": "eth.*,ens[0-9]+"}}},
    _pools({"cidr": "10.0.0.0/16", "encapsulation": "VXLAN"}, bgp="Disabled"),
    _pools({"cidr": "10.0.0.0/16", "encapsulation": "None"}, bgp="Enabled"),
])
def test_what_is_fine_stays_fine(spec):
    assert model.problems(_effective(spec)) == []


def test_an_upper_case_ipv6_cidr_derives_a_valid_pool_name():
    spec = _effective(_pools({"cidr": "FD00::/48"}, {"cidr": "fd01::/48"}))
    assert model.problems(spec) == []
    assert [p.name for p in spec.calico_network.ip_pools] == ["pool-fd00---48", "pool-fd01---48"]


def test_an_empty_rolling_update_still_renders_one_node_at_a_time():
    spec = _effective({"nodeUpdateStrategy": {"rollingUpdate": {}}})
    strategy = render.node_daemonset(spec, "0.1.0")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


@pytest.mark.parametrize("registry, wanted", [
    (None, "percale/node:0.1.0"),
    ("", "percale/node:0.1.0"),
    ("UseDefault", "percale/node:0.1.0"),
    ("quay.io", "quay.io/percale/node:0.1.0"),
    ("registry.example.com/", "registry.example.com/percale/node:0.1.0"),
    ("registry.example.com/mirror", "registry.example.com/mirror/percale/node:0.1.0"),
])
def test_the_registry_is_a_prefix_ending_in_a_slash(registry, wanted):
    spec = _effective({"registry": registry} if registry is not None else {})
    assert render.image(spec, render.NODE_IMAGE, "0.1.0") == wanted
