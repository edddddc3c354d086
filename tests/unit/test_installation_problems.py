"""Installations the operator must refuse (installation/model.py `problems()`) rather than render
into objects the apiserver, install-cni or percale-node then refuse: each problem names the field
the user wrote and why. Also how `registry` reaches the images and a detection setting reaches
percale-node's IP and IP6 (installation/render.py)."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from percale.api.meta import validation_problems
from percale.ctl import crd_schema
from percale.installation import model, render, status
from percale.node import registration
from percale.node.registration import HostAddress, RegistrationError

pytestmark = pytest.mark.unit


def _effective(spec: dict) -> model.InstallationSpec:
    return model.with_defaults(model.InstallationSpec.model_validate(spec))


def _pools(*pools: dict, **network) -> dict:
    return {"calicoNetwork": {"ipPools": list(pools), **network}}


V4 = "spec.calicoNetwork.nodeAddressAutodetectionV4"
V6 = "spec.calicoNetwork.nodeAddressAutodetectionV6"


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
    # percale-node drops empty parts and then has no method at all: every node crash-looped.
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"interface": ","}}}, f"{V4}.interface", "no interface"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"interface": " "}}}, f"{V4}.interface", "no interface"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"skipInterface": ", ,"}}},
     f"{V4}.skipInterface", "no interface"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"canReach": "10.0.0.1,10.0.0.2"}}},
     f"{V4}.canReach", "exactly one"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"canReach": " "}}}, f"{V4}.canReach", "exactly one"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"canReach": "gw.example.com"}}},
     f"{V4}.canReach", "not an IP address"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"canReach": "fd00::1"}}}, f"{V4}.canReach", "IPv6"),
    (_pools({"cidr": "fd00::/48"}, nodeAddressAutodetectionV6={"interface": ","}), f"{V6}.interface",
     "no interface"),
    (_pools({"cidr": "fd00::/48"}, nodeAddressAutodetectionV6={"canReach": "10.0.0.1"}), f"{V6}.canReach",
     "IPv4"),
    ({"calicoNetwork": {"nodeAddressAutodetectionV4": {"firstFound": True, "interface": "eth0"}}},
     V4, "no more than one"),
    # The name is the pool's, not its metadata's: the user wrote ipPools[0].name.
    (_pools({"cidr": "10.0.0.0/16", "name": "Bad_Name"}), "spec.calicoNetwork.ipPools[0].name",
     "Bad_Name"),
    (_pools({"cidr": "10.0.0.0/16", "encapsulation": "None"}, bgp="Disabled"),
     "spec.calicoNetwork.ipPools[0].encapsulation", "BGP"),
    # Pods get IPv6 from the pool, and CNI ADD refuses an IPv6 pod an MTU below 1280.
    (_pools({"cidr": "10.0.0.0/16"}, {"cidr": "fd00::/48"}, mtu=1000), "spec.calicoNetwork.mtu",
     "1280"),
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
    {"calicoNetwork": {"nodeAddressAutodetectionV4": {"canReach": "10.0.0.1"}}},
    # An empty string is not a method (tigera's rule, and render's): one method here, not two.
    {"calicoNetwork": {"nodeAddressAutodetectionV4": {"firstFound": True, "interface": ""}}},
    {"calicoNetwork": {"nodeAddressAutodetectionV4": {"firstFound": False, "interface": "ens5"}}},
    {"nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": 2**31 - 1}}},
    _pools({"cidr": "10.0.0.0/16", "encapsulation": "VXLAN"}, bgp="Disabled"),
    _pools({"cidr": "10.0.0.0/16", "encapsulation": "None"}, bgp="Enabled"),
    _pools({"cidr": "10.0.0.0/16"}, mtu=1000),
])
def test_what_is_fine_stays_fine(spec):
    assert model.problems(_effective(spec)) == []


# A host with an address of each family on eth0, whose kernel routes every address out of it.
HOST = [HostAddress("eth0", ipaddress.ip_interface("10.0.0.5/24")),
        HostAddress("eth0", ipaddress.ip_interface("fd00::5/64"))]


def _route_source(destination: str) -> str | None:
    try:  # as dataplane/host.py source_address_towards: no route to what is not an address
        return {4: "10.0.0.5", 6: "fd00::5"}[ipaddress.ip_address(destination).version]
    except ValueError:
        return None


@pytest.mark.parametrize("version, setting, refused", [
    (4, {"interface": ","}, True),
    (4, {"interface": " "}, True),
    (4, {"skipInterface": ", ,"}, True),
    (4, {"interface": "eth("}, True),
    (4, {"canReach": "10.0.0.1,10.0.0.2"}, True),
    (4, {"canReach": " "}, True),
    (4, {"canReach": "gw.example.com"}, True),
    (4, {"canReach": "fd00::1"}, True),
    (6, {"canReach": "10.0.0.1"}, True),
    (4, {"cidrs": ["fd00::/64"]}, True),
    (4, {"interface": "eth0,"}, False),
    (4, {"skipInterface": "lo, docker.*"}, False),
    (4, {"canReach": " 10.0.0.1"}, False),
    (6, {"canReach": "fd00::1"}, False),
    (4, {"cidrs": ["10.0.0.0/8"]}, False),
    (6, {"firstFound": True}, False),
])
def test_problems_refuse_what_percale_node_refuses(version, setting, refused):
    """The rendered method on a host where any sound method finds eth0's address: percale-node's
    autodetect refuses it exactly when problems() names the field."""
    spec = _effective(_pools({"cidr": "10.0.0.0/16"}, {"cidr": "fd00::/48"},
                             **{f"nodeAddressAutodetectionV{version}": setting}))
    method = render.autodetection_method(getattr(spec.calico_network, f"node_address_autodetection_v{version}"))
    found = model.problems(spec)
    try:
        registration.autodetect(version, method, HOST, can_reach=_route_source)
    except RegistrationError:
        assert refused and [p.field for p in found] == [
            f"spec.calicoNetwork.nodeAddressAutodetectionV{version}.{next(iter(setting))}"
            + ("[0]" if "cidrs" in setting else "")], found
    else:
        assert not refused and found == []


def _env(spec: model.InstallationSpec) -> dict[str, str]:
    daemonset = render.node_daemonset(spec, "0.1.0")
    return {e["name"]: e.get("value") for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("setting", [{}, {"firstFound": False}, {"interface": ""}, {"canReach": ""},
                                     {"cidrs": []}])
def test_a_detection_setting_with_no_method_leaves_the_node_address_alone(setting):
    """tigera: "If no detection option is specified, then IP auto detection will be disabled for
    this address family and IPs must be specified directly on the Node resource": IP=none, which
    calico-node, and percale-node, read as "keep the Node's address"."""
    spec = _effective(_pools({"cidr": "10.0.0.0/16"}, nodeAddressAutodetectionV4=setting))
    assert model.problems(spec) == []
    env = _env(spec)
    assert env["IP"] == "none" and "IP_AUTODETECTION_METHOD" not in env, env
    assert registration.resolve(4, env["IP"], None) == "none"


def test_no_detection_setting_and_no_pool_of_the_family_means_no_address():
    env = _env(_effective(_pools({"cidr": "10.0.0.0/16"})))
    assert (env["IP"], env["IP_AUTODETECTION_METHOD"], env["IP6"]) == ("autodetect", "first-found", "none")


def test_max_unavailable_fits_the_daemonsets_int32():
    """apps/v1 holds maxUnavailable in an int32: a larger number passed and the apiserver then
    refused the DaemonSet. The CRD refuses it now, and so does the operator's own parse."""
    with pytest.raises(ValidationError) as refused:
        model.InstallationSpec.model_validate({"nodeUpdateStrategy": {"rollingUpdate": {"maxUnavailable": 2**31}}})
    assert [p.field for p in validation_problems(refused.value)] == [
        "nodeUpdateStrategy.rollingUpdate.maxUnavailable"]
    schema = crd_schema.installation_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    strategy = schema["properties"]["spec"]["properties"]["nodeUpdateStrategy"]
    assert strategy["properties"]["rollingUpdate"]["properties"]["maxUnavailable"]["maximum"] == 2**31 - 1


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


@pytest.mark.parametrize("pools, families", [
    (None, ("true", "false")),  # the default pool, IPv4
    ([{"cidr": "10.0.0.0/16"}, {"cidr": "fd00::/48"}], ("true", "true")),
    ([{"cidr": "fd00::/48"}], ("false", "true")),
    ([], ("true", "false")),  # no pool: the CNI plugin's own default
])
def test_pods_get_the_families_the_installation_has_pools_of(pools, families):
    """tigera writes assign_ipv4 and assign_ipv6 into the conflist from the pools: without it a
    dual-stack cluster's pods got no IPv6 address, and an IPv6-only cluster's no address."""
    spec = _effective({} if pools is None else _pools(*pools))
    data = render.cni_config(spec)["data"]
    assert (data["assignIPv4"], data["assignIPv6"]) == families
    init = render.node_daemonset(spec, "v1")["spec"]["template"]["spec"]["initContainers"][0]
    args = init["args"]
    assert args[args.index("--assign-ipv4") + 1] == "$(CNI_ASSIGN_IPV4)"
    assert args[args.index("--assign-ipv6") + 1] == "$(CNI_ASSIGN_IPV6)"
    keys = {env["name"]: env["valueFrom"]["configMapKeyRef"]["key"] for env in init["env"]
            if "configMapKeyRef" in env.get("valueFrom", {})}
    assert (keys["CNI_ASSIGN_IPV4"], keys["CNI_ASSIGN_IPV6"]) == ("assignIPv4", "assignIPv6")


def test_a_pool_takes_the_name_of_the_clusters_pool_of_its_cidr():
    """tigera names a pool after the existing pool of its CIDR: the operator then finds it
    installed instead of creating a second pool of the same CIDR."""
    stored = {"my-pool": "10.244.0.0/16", "other": "fd00:1::/48"}
    spec = model.with_defaults(model.InstallationSpec.model_validate(
        _pools({"cidr": "10.244.0.0/16"}, {"cidr": "fd00::/48"})), stored)
    assert [p.name for p in spec.calico_network.ip_pools] == ["my-pool", "default-ipv6-ippool"]
    assert model.problems(spec, stored) == []


def test_a_pool_overlapping_another_pool_of_the_cluster_is_refused():
    stored = {"my-pool": "10.244.0.0/16"}
    spec = model.with_defaults(model.InstallationSpec.model_validate(
        _pools({"cidr": "10.0.0.0/16"}, {"cidr": "10.244.128.0/17"})), stored)
    found = model.problems(spec, stored)
    assert [(p.field, "overlaps IPPool 'my-pool'" in p.reason) for p in found] == [
        ("spec.calicoNetwork.ipPools[1].cidr", True)]


def test_a_failure_to_read_the_cluster_is_degraded_with_its_reason():
    conditions = status.conditions(generation=3, problems=[],
                                   failure=("ResourceReadError", "reading pools failed: 403"),
                                   daemonset=None, deployment=None, previous=[],
                                   now="2026-12-07T00:00:00Z")
    by_type = {c.type: c for c in conditions}
    assert (by_type["Degraded"].status, by_type["Degraded"].reason) == ("True", "ResourceReadError")
    assert by_type["Ready"].status == "False" and "403" in by_type["Ready"].message
