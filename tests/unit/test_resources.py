"""The resource model through its public door, `percale.api.parse`: defaults, wire spellings
(round trips) and one test per validation rule, each checking the field and the reason reported."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from percale.api import InvalidResource, kind_named, parse
from percale.api.bgp import DEFAULT_AS_NUMBER, DEFAULT_LISTEN_PORT
from percale.api.ipam import (
    DEFAULT_MAX_BLOCKS_PER_HOST,
    IPAMBlock,
    affinity_name,
    block_cidr,
    block_name,
    host_affinity,
)
from percale.api.workloadendpoint import workload_endpoint_name

pytestmark = pytest.mark.unit

API = "percale.io/v1"


def doc(kind: str, name: str, spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"apiVersion": API, "kind": kind, "metadata": {"name": name}}
    if spec is not None:
        document["spec"] = spec
    document.update(extra)
    return document


def rejected(document: dict[str, Any], field: str, reason: str) -> None:
    """parse() refuses the document with a problem at `field` whose reason contains `reason`."""
    with pytest.raises(InvalidResource) as caught:
        parse(document)
    problems = caught.value.problems
    assert any(p.field == field and reason in p.reason for p in problems), problems


def contained(small: Any, big: Any) -> bool:
    """Every key and value of `small` appears, spelled the same, in `big`."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contained(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(contained, small, big))
    return small == big


def round_trips(document: dict[str, Any]):
    """Parse, print and parse again; the printed form keeps every field's wire spelling."""
    resource = parse(copy.deepcopy(document))
    printed = resource.to_document()
    assert parse(printed) == resource
    assert contained(document, printed), printed
    return resource


# ---------------------------------------------------------------------------------------------
# The envelope


def test_wrong_api_version_is_rejected():
    rejected({**doc("IPPool", "p", {"cidr": "10.0.0.0/16"}), "apiVersion": "projectcalico.org/v3"},
             "apiVersion", "percale.io/v1")


def test_unknown_kind_is_rejected():
    rejected(doc("IPPoolz", "p", {"cidr": "10.0.0.0/16"}), "kind", "unknown kind")


def test_namespace_on_a_cluster_scoped_kind_is_rejected():
    document = doc("IPPool", "p", {"cidr": "10.0.0.0/16"})
    document["metadata"]["namespace"] = "default"
    rejected(document, "metadata", "not namespaced")


def test_kinds_are_found_by_plural_and_short_names():
    assert kind_named("ipamblocks").__name__ == "IPAMBlock"
    assert kind_named("bgpconfig").__name__ == "BGPConfiguration"
    assert kind_named("bps").__name__ == "BGPPeer"
    assert kind_named("weps").info.namespaced
    assert kind_named("blockaffinities").info.managed
    assert not kind_named("ipamconfig").info.managed


# ---------------------------------------------------------------------------------------------
# IPPool


def test_ippool_defaults_are_filled():
    v4 = parse(doc("IPPool", "pool-a", {"cidr": "10.0.0.0/16"})).spec
    assert (v4.block_size, v4.ipip_mode, v4.vxlan_mode, v4.nat_outgoing) == (26, "Never", "Never", False)
    assert v4.node_selector == "all()"
    assert v4.allowed_uses == ["Workload", "Tunnel"]
    assert v4.assignment_mode == "Automatic"
    assert parse(doc("IPPool", "pool-b", {"cidr": "fd00::/48"})).spec.block_size == 122


@pytest.mark.parametrize("cidr, given", [
    ("10.0.0.0/16", {"nodeSelector": ""}),
    ("10.0.0.0/16", {"blockSize": 0}),
    ("fd00::/48", {"blockSize": 0}),
    ("10.0.0.0/16", {"allowedUses": []}),
    ("10.0.0.0/16", {"ipipMode": "", "vxlanMode": ""}),
    ("10.0.0.0/16", {"nodeSelector": None, "allowedUses": None, "vxlanMode": None}),
])
def test_ippool_zero_values_take_calicos_defaults(cidr, given):
    """Calico (clientv3/ippool.go validateAndSetDefaults) reads a field's zero value as not
    set: "" was stored as a node selector, and 0, [] and "" were refused."""
    spec = parse(doc("IPPool", "p", {"cidr": cidr, **given})).spec
    left_out = parse(doc("IPPool", "p", {"cidr": cidr})).spec
    assert spec == left_out
    assert (spec.node_selector, spec.allowed_uses, spec.ipip_mode, spec.vxlan_mode) == (
        "all()", ["Workload", "Tunnel"], "Never", "Never")


def test_ippool_zero_values_fill_in_before_the_rules_judge_them():
    # The default selector is the one a LoadBalancer pool needs, and the default block size
    # is held to the pool as when it is left out.
    lb = parse(doc("IPPool", "p", {"cidr": "10.0.0.0/16", "nodeSelector": "",
                                   "allowedUses": ["LoadBalancer"]})).spec
    assert (lb.node_selector, lb.allowed_uses) == ("all()", ["LoadBalancer"])
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/28", "blockSize": 0}), "spec.blockSize",
             "(the default) is larger than the pool")
    # Not zero values in Go's decoding, which refuses them: still refused.
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/16", "blockSize": False}), "spec.blockSize",
             "not false")
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/16", "blockSize": 0.0}), "spec.blockSize",
             "whole number")


def test_ippool_round_trips():
    round_trips(doc("IPPool", "pool-a", {
        "cidr": "10.1.0.0/16", "blockSize": 28, "vxlanMode": "CrossSubnet", "natOutgoing": True,
        "disableBGPExport": True, "nodeSelector": "rack == 'a'", "allowedUses": ["Workload"],
    }))


def test_ippool_cidr_with_host_bits_is_rejected():
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.1/16"}), "spec.cidr", "host bits set")


@pytest.mark.parametrize("cidr", ["169.254.0.0/16", "169.0.0.0/8", "fe80::/64"])
def test_ippool_overlapping_link_local_is_rejected(cidr):
    rejected(doc("IPPool", "p", {"cidr": cidr}), "spec.cidr", "link-local")


@pytest.mark.parametrize("cidr,size", [("10.0.0.0/16", 19), ("10.0.0.0/16", 33), ("fd00::/48", 115)])
def test_ippool_block_size_outside_the_family_range_is_rejected(cidr, size):
    rejected(doc("IPPool", "p", {"cidr": cidr, "blockSize": size}), "spec.blockSize", "outside")


def test_ippool_block_size_larger_than_the_pool_is_rejected():
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/28", "blockSize": 26}), "spec.blockSize", "larger than the pool")


@pytest.mark.parametrize("cidr", ["10.21.0.5/32", "10.0.0.0/27", "fd00::/124"])
def test_ippool_smaller_than_the_default_block_is_rejected(cidr):
    """Stored with the default filled in, such a pool was unreadable, and with it every pool:
    no allocation anywhere, and not even `percalectl delete` could remove it."""
    rejected(doc("IPPool", "p", {"cidr": cidr}), "spec.blockSize", "(the default) is larger than the pool")


@pytest.mark.parametrize("cidr, size", [("10.0.0.0/26", 26), ("fd00::/122", 122)])
def test_ippool_as_small_as_the_default_block_takes_it(cidr, size):
    assert parse(doc("IPPool", "p", {"cidr": cidr})).spec.block_size == size


def test_ippool_ipip_and_vxlan_together_are_rejected():
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/16", "ipipMode": "Always", "vxlanMode": "Always"}),
             "spec.vxlanMode", "cannot both be enabled")


def test_ippool_ipip_on_ipv6_is_rejected():
    rejected(doc("IPPool", "p", {"cidr": "fd00::/48", "ipipMode": "CrossSubnet"}), "spec.ipipMode", "IPv6")


def test_ippool_bad_node_selector_is_rejected():
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/16", "nodeSelector": "rack == "}),
             "spec.nodeSelector", "invalid selector")


def test_ippool_unknown_field_is_rejected():
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/16", "blockSze": 26}), "spec.blockSze", "unknown field")


# ---------------------------------------------------------------------------------------------
# IPAMConfig


def test_ipamconfig_defaults():
    config = parse(doc("IPAMConfig", "default"))
    spec = config.spec
    assert (spec.strict_affinity, spec.auto_allocate_blocks, spec.max_blocks_per_host) == (False, True, 0)
    assert spec.ip_cooldown_seconds == 0
    assert spec.effective_max_blocks_per_host == DEFAULT_MAX_BLOCKS_PER_HOST == 20


def test_ipamconfig_round_trips():
    config = round_trips(doc("IPAMConfig", "default", {
        "strictAffinity": True, "autoAllocateBlocks": False, "maxBlocksPerHost": 4, "ipCooldownSeconds": 60,
    }))
    assert config.spec.effective_max_blocks_per_host == 4


def test_ipamconfig_other_names_are_rejected():
    rejected(doc("IPAMConfig", "mine"), "metadata", "singleton")


def test_ipamconfig_neither_strict_nor_auto_is_rejected():
    rejected(doc("IPAMConfig", "default", {"autoAllocateBlocks": False}),
             "spec.autoAllocateBlocks", "strictAffinity and autoAllocateBlocks")


def test_ipamconfig_max_blocks_without_strict_affinity_is_rejected():
    rejected(doc("IPAMConfig", "default", {"maxBlocksPerHost": 5}), "spec.maxBlocksPerHost", "maxBlocksPerHost")


def test_ipamconfig_negative_max_blocks_is_rejected():
    rejected(doc("IPAMConfig", "default", {"strictAffinity": True, "maxBlocksPerHost": -1}),
             "spec.maxBlocksPerHost", "greater than or equal to 0")


def test_ipamconfig_cooldown_above_1200_is_rejected():
    rejected(doc("IPAMConfig", "default", {"ipCooldownSeconds": 1201}), "spec.ipCooldownSeconds", "1200")


@pytest.mark.parametrize("keepalive", ["300ms", "0s"])
def test_a_keepalive_time_that_rounds_to_zero_is_refused(keepalive):
    rejected(doc("BGPPeer", "tor", {"peerIP": "192.0.2.1", "asNumber": 64512,
                                    "keepaliveTime": keepalive}),
             "spec.keepaliveTime", "rounds to 0 seconds")
    assert parse(doc("BGPPeer", "tor", {"peerIP": "192.0.2.1", "asNumber": 64512,
                                        "keepaliveTime": "500ms"})).spec.keepalive_time == "500ms"


def test_an_ipv4_mapped_pool_is_refused_naming_the_ipv4_pool_to_give():
    rejected(doc("IPPool", "mapped", {"cidr": "::ffff:10.0.0.0/104"}), "spec.cidr",
             "IPv4-mapped IPv6 range; give the IPv4 pool 10.0.0.0/8")


@pytest.mark.parametrize("kind, spec, field", [
    # Calico reads these into Go integers, which refuse a string, a fraction and a boolean;
    # pydantic alone would have stored 3, 2 and 1.
    ("IPAMConfig", {"strictAffinity": True, "maxBlocksPerHost": "3"}, "spec.maxBlocksPerHost"),
    ("IPAMConfig", {"ipCooldownSeconds": 2.0}, "spec.ipCooldownSeconds"),
    ("IPPool", {"cidr": "10.0.0.0/16", "blockSize": "26"}, "spec.blockSize"),
    ("IPPool", {"cidr": "10.0.0.0/16", "blockSize": 26.0}, "spec.blockSize"),
    ("BGPPeer", {"peerIP": "192.0.2.1", "asNumber": 64512, "ttlSecurity": "1"}, "spec.ttlSecurity"),
    ("BGPPeer", {"peerIP": "192.0.2.1", "asNumber": 64512, "numAllowedLocalASNumbers": 1.5},
     "spec.numAllowedLocalASNumbers"),
])
def test_whole_number_fields_refuse_strings_and_fractions(kind, spec, field):
    name = "default" if kind == "IPAMConfig" else "x"
    rejected(doc(kind, name, spec), field, "must be a whole number")


# ---------------------------------------------------------------------------------------------
# IPAMBlock


def block_doc(cidr: str = "10.0.0.0/30", **spec: Any) -> dict[str, Any]:
    document = IPAMBlock.empty(cidr, host_affinity("node1"), sequence_number=7).to_document()
    document["spec"].update(spec)
    return document


def test_block_names_replace_only_the_slash():
    assert block_name("10.0.0.0/26") == "10.0.0.0-26"
    assert block_name("fd00::/122") == "fd00::-122"
    assert block_cidr("10.0.0.0-26") == "10.0.0.0/26"
    assert block_cidr("fd00::-122") == "fd00::/122"
    with pytest.raises(ValueError):
        block_cidr("10.0.0.0")
    assert affinity_name("node1", "fd00::/122") == "node1-fd00::-122"


def test_empty_block_has_every_address_free():
    block = IPAMBlock.empty("fd00::/122", sequence_number=0)
    assert block.metadata.name == "fd00::-122"
    assert block.spec.allocations == [None] * 64
    assert block.spec.unallocated == list(range(64))
    assert block.spec.affinity is None
    assert parse(block.to_document()) == block
    assert IPAMBlock.empty("10.0.0.0/26").spec.sequence_number > 0  # starts at the time in ns


def test_block_round_trips_with_allocations():
    block = round_trips(block_doc(
        allocations=[0, None, 1, None], unallocated=[3, 1],
        affinityClaimTime="2024-05-01T12:00:00.123456789Z",
        attributes=[
            {"handle_id": "k8s-pod-network.abc123", "secondary": {"node": "node1", "pod": "web-0"}},
            {"handle_id": "vxlan-tunnel-addr-node1", "secondary": {"type": "vxlanTunnelAddress"}},
        ],
        sequenceNumberForAllocation={"0": 5, "2": 6}, deleted=True,
    ))
    assert block.spec.affinity_node == "node1"
    assert "handle_id" in block.to_document()["spec"]["attributes"][0]


def test_block_name_must_match_its_cidr():
    document = block_doc()
    document["metadata"]["name"] = "10.0.0.4-30"
    rejected(document, "metadata.name", "must be named '10.0.0.0-30'")


def test_block_name_must_look_like_a_block():
    document = block_doc()
    document["metadata"]["name"] = "block-a"
    rejected(document, "metadata", "not a valid IPAMBlock name")


def test_block_cidr_must_be_strict():
    document = block_doc()
    document["spec"]["cidr"] = "10.0.0.1/30"
    rejected(document, "spec.cidr", "host bits set")


def test_block_wider_than_any_block_size_is_rejected():
    document = block_doc()
    document["spec"]["cidr"], document["metadata"]["name"] = "10.0.0.0/16", "10.0.0.0-16"
    rejected(document, "spec.cidr", "prefix length must be 20-32")


def test_block_allocations_must_cover_every_address():
    rejected(block_doc(allocations=[None] * 3, unallocated=[0, 1, 2]), "spec.allocations", "needs exactly 4")


def test_block_allocation_must_point_into_attributes():
    rejected(block_doc(allocations=[1, None, None, None], unallocated=[1, 2, 3],
                       attributes=[{"handle_id": "h"}]),
             "spec.allocations", "allocations[0] points at attributes[1]")


def test_block_unallocated_duplicates_are_rejected():
    rejected(block_doc(unallocated=[0, 1, 2, 3, 1]), "spec.unallocated", "ordinal 1 twice")


def test_block_unallocated_out_of_range_is_rejected():
    rejected(block_doc(unallocated=[0, 1, 2, 3, 4]), "spec.unallocated", "outside the block")


def test_block_unallocated_must_not_list_allocated_ordinals():
    rejected(block_doc(allocations=[0, None, None, None], attributes=[{"handle_id": "h"}]),
             "spec.unallocated", "ordinal 0 is allocated")


def test_block_free_ordinals_must_all_be_unallocated():
    rejected(block_doc(unallocated=[0, 2]), "spec.unallocated", "free ordinals 1, 3 are missing")


def test_block_affinity_must_be_a_host():
    rejected(block_doc(affinity="virtual:lb"), "spec.affinity", "host:<node name>")
    rejected(block_doc(affinity="host:Node_1"), "spec.affinity", "valid node")


def test_block_claim_time_must_be_rfc3339():
    rejected(block_doc(affinityClaimTime="yesterday"), "spec.affinityClaimTime", "RFC 3339")
    arabic_indic_year = "\u0662\u0660\u0662\u0666"  # 2026 in digits Go's time.Parse refuses
    rejected(block_doc(affinityClaimTime=arabic_indic_year + "-05-01T12:00:00Z"),
             "spec.affinityClaimTime", "RFC 3339")


def test_block_sequence_number_must_not_be_negative():
    rejected(block_doc(sequenceNumber=-1), "spec.sequenceNumber", "greater than or equal to 0")


def test_block_sequence_number_for_allocation_keys_are_ordinals():
    rejected(block_doc(sequenceNumberForAllocation={"9": 1}), "spec.sequenceNumberForAllocation", "not an ordinal")


# ---------------------------------------------------------------------------------------------
# BlockAffinity


def affinity_doc(**spec: Any) -> dict[str, Any]:
    base = {"state": "confirmed", "node": "node-1", "cidr": "fd00::40/122"}
    base.update(spec)
    return doc("BlockAffinity", affinity_name(base["node"], base["cidr"]), base)


def test_block_affinity_round_trips():
    affinity = round_trips(affinity_doc(state="pendingDeletion", deleted=True))
    assert affinity.metadata.name == "node-1-fd00::40-122"
    assert parse(affinity_doc()).spec.type == "host"


def test_block_affinity_name_must_match_node_and_cidr():
    document = affinity_doc()
    document["metadata"]["name"] = "node-2-fd00::40-122"
    rejected(document, "metadata.name", "must be named 'node-1-fd00::40-122'")


def test_block_affinity_state_must_be_known():
    rejected(affinity_doc(state="claimed"), "spec.state", "pendingDeletion")


def test_block_affinity_only_host_type():
    rejected(affinity_doc(type="virtual"), "spec.type", "host")


# ---------------------------------------------------------------------------------------------
# IPAMHandle


def test_handle_round_trips_and_keeps_case():
    handle = round_trips(doc("IPAMHandle", "k8s-pod-network.ABCdef0123", {
        "handleID": "k8s-pod-network.ABCdef0123", "block": {"10.0.0.0/26": 1, "fd00::/122": 2},
    }))
    assert handle.spec.deleted is False


def test_handle_name_must_be_its_id():
    rejected(doc("IPAMHandle", "h1", {"handleID": "h2"}), "metadata.name", "spec.handleID")


def test_handle_counts_must_not_be_negative():
    rejected(doc("IPAMHandle", "h", {"handleID": "h", "block": {"10.0.0.0/26": -1}}),
             "spec.block.10.0.0.0/26", "greater than or equal to 0")


def test_handle_block_keys_are_cidrs():
    rejected(doc("IPAMHandle", "h", {"handleID": "h", "block": {"10.0.0.1/26": 1}}),
             "spec.block.10.0.0.1/26.[key]", "host bits set")


# ---------------------------------------------------------------------------------------------
# BGPConfiguration


def test_bgp_configuration_leaves_unset_fields_unset():
    config = parse(doc("BGPConfiguration", "default"))
    assert config.spec.as_number is None and config.spec.node_to_node_mesh_enabled is None
    assert config.to_document()["spec"] == {}
    assert config.spec.effective_as_number == DEFAULT_AS_NUMBER == 64512
    assert config.spec.effective_listen_port == DEFAULT_LISTEN_PORT == 179
    assert config.spec.effective_node_to_node_mesh_enabled is True
    assert config.spec.effective_log_severity_screen == "Info"
    assert config.is_global and config.node is None


def test_bgp_configuration_round_trips():
    config = round_trips(doc("BGPConfiguration", "default", {
        "logSeverityScreen": "Debug", "nodeToNodeMeshEnabled": True, "asNumber": 63400,
        "listenPort": 178, "bindMode": "NodeIP",
        "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
        "serviceExternalIPs": [{"cidr": "104.244.42.129/32"}],
        "serviceLoadBalancerIPs": [{"cidr": "172.217.3.0/24"}],
        "communities": [{"name": "large", "value": "63400:300:100"}],
        "prefixAdvertisements": [{"cidr": "172.218.4.0/26", "communities": ["large", "63400:120"]}],
        "nodeMeshPassword": {"secretKeyRef": {"name": "bgp-secrets", "key": "mesh"}},
        "nodeMeshMaxRestartTime": "2m",
        "ignoredInterfaces": ["eth9", "veth*"],
    }))
    assert config.spec.effective_as_number == 63400
    assert parse(doc("BGPConfiguration", "default", {"asNumber": "1.10"})).spec.as_number == 65546


def test_service_ranges_and_advertisements_take_an_address_alone_as_its_network():
    # Calico's `net` validator takes 1.2.3.4 for 1.2.3.4/32; a CIDR with host bits stays refused.
    config = parse(doc("BGPConfiguration", "default", {
        "serviceExternalIPs": [{"cidr": "104.244.42.129"}],
        "serviceLoadBalancerIPs": [{"cidr": "fd00::7"}],
        "prefixAdvertisements": [{"cidr": "10.0.0.5", "communities": ["63400:120"]}]}))
    assert [b.cidr for b in config.spec.service_external_ips] == ["104.244.42.129/32"]
    assert [b.cidr for b in config.spec.service_load_balancer_ips] == ["fd00::7/128"]
    assert [a.cidr for a in config.spec.prefix_advertisements] == ["10.0.0.5/32"]
    rejected(doc("BGPConfiguration", "default", {"serviceClusterIPs": [{"cidr": "10.96.0.1/12"}]}),
             "spec.serviceClusterIPs.0.cidr", "host bits")
    rejected(doc("BGPConfiguration", "default", {"serviceClusterIPs": [{"cidr": "ten"}]}),
             "spec.serviceClusterIPs.0.cidr", "neither a CIDR nor an IP address")


def test_bgp_configuration_node_override():
    config = round_trips(doc("BGPConfiguration", "node.node-1", {"listenPort": 1179, "logSeverityScreen": "Error"}))
    assert not config.is_global and config.node == "node-1"


@pytest.mark.parametrize("name", ["global", "node-1", "nodes.node-1"])
def test_bgp_configuration_other_names_are_rejected(name):
    rejected(doc("BGPConfiguration", name), "metadata", "node.<node name>")


@pytest.mark.parametrize("field,value", [
    ("asNumber", 65000), ("nodeToNodeMeshEnabled", False),
    ("nodeMeshPassword", {"secretKeyRef": {"name": "s", "key": "k"}}), ("nodeMeshMaxRestartTime", "30s"),
    ("serviceClusterIPs", [{"cidr": "10.96.0.0/12"}]),
])
def test_bgp_configuration_global_only_fields_on_a_node_override_are_rejected(field, value):
    rejected(doc("BGPConfiguration", "node.node-1", {field: value}),
             f"spec.{field}", f"{field} can only be set on the global")


def test_bgp_configuration_mesh_password_needs_the_mesh():
    rejected(doc("BGPConfiguration", "default", {
        "nodeToNodeMeshEnabled": False, "nodeMeshPassword": {"secretKeyRef": {"name": "s", "key": "k"}},
    }), "spec.nodeMeshPassword", "nodeMeshPassword cannot be set when nodeToNodeMeshEnabled is false")


def test_bgp_configuration_mesh_restart_time_needs_the_mesh():
    rejected(doc("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": False, "nodeMeshMaxRestartTime": "1m"}),
             "spec.nodeMeshMaxRestartTime", "nodeMeshMaxRestartTime cannot be set")


@pytest.mark.parametrize("value,reason", [
    ("65536:1", "16 bits"), ("1:2:4294967296", "32 bits"), ("100", "aa:nn"), ("1:2:3:4", "aa:nn"),
    ("\u0666\u0665\u0660\u0660\u0660:1", "aa:nn"),  # Arabic-Indic digits: ExaBGP reads 0-9 only
])
def test_bgp_configuration_bad_community_values_are_rejected(value, reason):
    rejected(doc("BGPConfiguration", "default", {
        "communities": [{"name": "c", "value": value}], "prefixAdvertisements": [{"cidr": "10.0.0.0/24"}],
    }), "spec.communities.0.value", reason)


def test_bgp_configuration_unused_communities_are_rejected():
    rejected(doc("BGPConfiguration", "default", {"communities": [{"name": "c", "value": "1:2"}]}),
             "spec.communities", "no prefixAdvertisements use them")


def test_bgp_configuration_undefined_community_name_is_rejected():
    rejected(doc("BGPConfiguration", "default", {
        "prefixAdvertisements": [{"cidr": "10.0.0.0/24", "communities": ["nope"]}],
    }), "spec.prefixAdvertisements.0.communities.0", "'nope'")


def test_bgp_configuration_log_severity_is_calicos_set():
    rejected(doc("BGPConfiguration", "default", {"logSeverityScreen": "Verbose"}),
             "spec.logSeverityScreen", "Info")


def test_bgp_configuration_listen_port_range():
    rejected(doc("BGPConfiguration", "default", {"listenPort": 0}), "spec.listenPort", "between 1 and 65535")


def test_bgp_configuration_ignored_interface_names():
    rejected(doc("BGPConfiguration", "default", {"ignoredInterfaces": ["*"]}),
             "spec.ignoredInterfaces", "interface name")


# ---------------------------------------------------------------------------------------------
# BGPPeer


def peer(**spec: Any) -> dict[str, Any]:
    return doc("BGPPeer", "peer-1", spec)


def test_bgp_peer_round_trips_with_every_field():
    bgp_peer = round_trips(peer(
        node="node-1", peerIP="[fd00::1]:1179", asNumber=65001, localASNumber=65002,
        nextHopMode="Self", password={"secretKeyRef": {"name": "bgp", "key": "tor"}},
        sourceAddress="None", maxRestartTime="90s", keepaliveTime="10s", numAllowedLocalASNumbers=1,
        ttlSecurity=2, reachableBy="fd00::fe", filters=["export-only"], reversePeering="Manual",
    ))
    assert bgp_peer.spec.scope == "node"


def test_bgp_peer_defaults_and_scopes():
    spec = parse(peer(peerIP="10.0.0.9", asNumber=64513)).spec
    assert spec.scope == "global"
    assert spec.source_address == "UseNodeIP" and spec.keep_original_next_hop is False
    by_selector = parse(peer(nodeSelector="rack == 'a'", peerSelector="route-reflector == 'true'"))
    assert by_selector.spec.scope == "nodeSelector"
    assert parse(peer(peerIP="10.0.0.9:1179", asNumber=64513)).spec.peer_ip == "10.0.0.9:1179"


def test_an_ipv4_mapped_peer_is_the_ipv4_peer_it_maps():
    """As Calico's To4 reads it: kept as IPv6 it got no session on an IPv4 node, silently."""
    assert parse(peer(peerIP="::ffff:192.0.2.1", asNumber=65000)).spec.peer_ip == "192.0.2.1"
    assert parse(peer(peerIP="[::ffff:192.0.2.1]:1179", asNumber=65000)).spec.peer_ip == "192.0.2.1:1179"
    rejected(doc("Node", "n", {"bgp": {"ipv6Address": "::ffff:10.0.0.1/120"}}),
             "spec.bgp.ipv6Address", "IPv4-mapped address: write the IPv4 address 10.0.0.1")


@pytest.mark.parametrize("where, document", [
    ("spec.asNumber", lambda: doc("BGPConfiguration", "default", {"asNumber": 0})),
    ("spec.bgp.asNumber", lambda: doc("Node", "n", {"bgp": {"ipv4Address": "10.0.0.5/24", "asNumber": "0"}})),
    ("spec.localASNumber", lambda: peer(peerIP="10.0.0.9", asNumber=65000, localASNumber=0)),
    ("spec.asNumber", lambda: peer(peerSelector="all()", asNumber="0.0")),
])
def test_as_zero_is_refused_as_every_peer_refuses_it(where, document):
    rejected(document(), where, "AS 0 is reserved (RFC 7607)")


def test_bgp_peer_node_and_node_selector_are_exclusive():
    rejected(peer(node="node-1", nodeSelector="all()", peerIP="10.0.0.9", asNumber=1),
             "spec.nodeSelector", "node and nodeSelector")


def test_bgp_peer_peer_ip_and_peer_selector_are_exclusive():
    rejected(peer(peerIP="10.0.0.9", peerSelector="all()"), "spec.peerSelector", "peerIP and peerSelector")


def test_bgp_peer_needs_someone_to_peer_with():
    rejected(peer(node="node-1", asNumber=1), "spec", "one of peerIP, peerSelector or localWorkloadSelector")


def test_a_local_workload_selector_is_refused_when_written_and_read_when_stored():
    # It was stored and never acted on: no session, no word. One stored before stays readable.
    rejected(peer(localWorkloadSelector="all()", asNumber=65010), "spec.localWorkloadSelector",
             "peering with local workloads is not supported")
    import json

    from percale.datastore.codec import decode

    stored = decode("BGPPeer", json.dumps(peer(localWorkloadSelector="app == 'bgp'",
                                               asNumber=65010)).encode(), "7")
    assert stored.spec.local_workload_selector == "app == 'bgp'"


def test_bgp_peer_peer_ip_needs_as_number():
    rejected(peer(peerIP="10.0.0.9"), "spec.asNumber", "peerIP needs asNumber")


def test_bgp_peer_peer_selector_takes_the_as_from_the_node():
    rejected(peer(peerSelector="all()", asNumber=65001), "spec.asNumber",
             "asNumber must not be set with peerSelector")


def test_bgp_peer_reachable_by_needs_peer_ip():
    rejected(peer(peerSelector="all()", reachableBy="10.0.0.1"), "spec.reachableBy", "reachableBy needs peerIP")


def test_bgp_peer_reachable_by_must_be_the_peer_family():
    rejected(peer(peerIP="10.0.0.9", asNumber=1, reachableBy="fd00::1"), "spec.reachableBy",
             "is IPv6 but peerIP")


def test_bgp_peer_reachable_by_is_no_ipv6_link_local_address():
    rejected(peer(peerIP="fd00::9", asNumber=1, reachableBy="fe80::1"), "spec.reachableBy",
             "is link-local, which names no interface")
    # Refused since reachableBy is acted on: one stored before is still read (and not routed).
    import json

    from percale.datastore.codec import decode

    stored = decode("BGPPeer", json.dumps(peer(peerIP="fd00::9", asNumber=1,
                                               reachableBy="fe80::1")).encode(), "7")
    assert str(stored.spec.reachable_by) == "fe80::1"


def test_bgp_peer_keep_original_next_hop_conflicts_with_next_hop_mode():
    rejected(peer(peerIP="10.0.0.9", asNumber=1, keepOriginalNextHop=True, nextHopMode="Keep"),
             "spec.keepOriginalNextHop", "keepOriginalNextHop is deprecated")


def test_bgp_peer_ttl_security_is_a_hop_count():
    rejected(peer(peerIP="10.0.0.9", asNumber=1, ttlSecurity=256), "spec.ttlSecurity", "255")


def test_bgp_peer_bad_peer_ip_is_rejected():
    rejected(peer(peerIP="10.0.0.300", asNumber=1), "spec.peerIP", "not an IP address")


def test_bgp_peer_next_hop_mode_values():
    rejected(peer(peerIP="10.0.0.9", asNumber=1, nextHopMode="Never"), "spec.nextHopMode", "Keep")


# ---------------------------------------------------------------------------------------------
# Node


def test_node_round_trips_with_calicos_spellings():
    node = round_trips(doc("Node", "node-1", {
        "bgp": {"ipv4Address": "10.0.0.5/24", "ipv6Address": "fd00::5/64", "asNumber": 65001,
                "routeReflectorClusterID": "224.0.0.1", "ipv4IPIPTunnelAddr": "10.244.0.1"},
        "ipv4VXLANTunnelAddr": "10.244.0.0", "vxlanTunnelMACAddr": "66:aa:bb:cc:dd:ee",
        "ipv6VXLANTunnelAddr": "fd00:244::", "vxlanTunnelMACAddrV6": "66:aa:bb:cc:dd:ef",
        "addresses": [{"address": "10.0.0.5/24", "type": "CalicoNodeIP"},
                      {"address": "10.0.0.5", "type": "InternalIP"}],
        "orchRefs": [{"nodeName": "node-1.example", "orchestrator": "k8s"}],
    }))
    assert node.spec.bgp.route_reflector_cluster_id == "224.0.0.1"
    assert parse(doc("Node", "node-2")).spec.bgp is None


def test_node_bgp_address_must_be_the_right_family():
    rejected(doc("Node", "n", {"bgp": {"ipv4Address": "fd00::5/64"}}), "spec.bgp.ipv4Address", "not an IPv4")


def test_node_empty_bgp_section_is_rejected():
    rejected(doc("Node", "n", {"bgp": {}}), "spec.bgp", "bgp cannot be empty")


def test_node_route_reflector_cluster_id_is_ipv4():
    rejected(doc("Node", "n", {"bgp": {"ipv4Address": "10.0.0.5/24", "routeReflectorClusterID": "rr1"}}),
             "spec.bgp.routeReflectorClusterID", "not a valid IP address")


def test_node_vxlan_mac_must_be_a_mac():
    rejected(doc("Node", "n", {"vxlanTunnelMACAddr": "66:aa:bb"}), "spec.vxlanTunnelMACAddr", "MAC address")
    # The kernel refuses both for a device (EADDRNOTAVAIL): the node's VXLAN never came up.
    rejected(doc("Node", "n", {"vxlanTunnelMACAddr": "01:00:5e:00:00:01"}),
             "spec.vxlanTunnelMACAddr", "multicast MAC address")
    rejected(doc("Node", "n", {"vxlanTunnelMACAddrV6": "00:00:00:00:00:00"}),
             "spec.vxlanTunnelMACAddrV6", "zero MAC address")


def test_node_address_type_must_be_known():
    rejected(doc("Node", "n", {"addresses": [{"address": "10.0.0.5", "type": "Hostname"}]}),
             "spec.addresses.0.type", "InternalIP")


# ---------------------------------------------------------------------------------------------
# WorkloadEndpoint


def wep(name: str | None = None, **spec: Any) -> dict[str, Any]:
    base = {"orchestrator": "k8s", "node": "node-1", "pod": "nginx-5d4f", "endpoint": "eth0"}
    base.update(spec)
    document = doc("WorkloadEndpoint", name or workload_endpoint_name(
        base["node"], base["orchestrator"], base["pod"], base["endpoint"]), base)
    document["metadata"]["namespace"] = "web"
    return document


def test_workload_endpoint_name_doubles_dashes():
    assert workload_endpoint_name("node1", "k8s", "nginx-5d4f", "eth0") == "node1-k8s-nginx--5d4f-eth0"
    assert workload_endpoint_name("node-1", "k8s", "a-b-c", "eth0") == "node--1-k8s-a--b--c-eth0"


def test_workload_endpoint_round_trips():
    endpoint = round_trips(wep(
        workload="", containerID="0123abcdef", serviceAccountName="default",
        ipNetworks=["10.244.0.5/32", "fd00:244::5/128"],
        ipNATs=[{"internalIP": "10.244.0.5", "externalIP": "172.16.0.5"}],
        ipv4Gateway="169.254.1.1", ipv6Gateway="fe80::ecee:eeff:feee:eeee",
        profiles=["kns.web", "ksa.web.default"], interfaceName="cali1234567890a", mac="ee:ee:ee:ee:ee:ee",
        ports=[{"name": "http", "protocol": "TCP", "port": 80},
               {"protocol": "UDP", "port": 53, "hostPort": 5353, "hostIP": "10.0.0.5"}],
    ))
    assert endpoint.metadata.name == "node--1-k8s-nginx--5d4f-eth0"
    assert endpoint.metadata.namespace == "web"


def test_workload_endpoint_namespace_defaults():
    document = wep()
    del document["metadata"]["namespace"]
    assert parse(document).metadata.namespace == "default"


def test_workload_endpoint_name_must_match_the_spec():
    rejected(wep(name="node-1-k8s-nginx-5d4f-eth0"), "metadata.name", "must be named 'node--1-k8s-nginx--5d4f-eth0'")


def test_workload_endpoint_needs_a_pod():
    document = wep()
    del document["spec"]["pod"]
    rejected(document, "spec.pod", "pod is required")


def test_workload_endpoint_networks_are_single_addresses():
    rejected(wep(ipNetworks=["10.244.0.0/24"]), "spec.ipNetworks.0", "not a single address")


def test_workload_endpoint_nat_must_land_on_its_address():
    rejected(wep(ipNetworks=["10.244.0.5/32"], ipNATs=[{"internalIP": "10.244.0.6", "externalIP": "172.16.0.5"}]),
             "spec.ipNATs.0.internalIP", "not one of the endpoint's ipNetworks")


def test_workload_endpoint_nat_families_match():
    rejected(wep(ipNATs=[{"internalIP": "10.244.0.6", "externalIP": "fd00::5"}]),
             "spec.ipNATs.0.externalIP", "different IP versions")


def test_workload_endpoint_port_needs_a_name_or_host_port():
    rejected(wep(ports=[{"protocol": "TCP", "port": 80}]), "spec.ports.0.name", "needs a name")


def test_field_errors_of_nested_objects_keep_the_nested_location():
    # IPNAT's and WorkloadEndpointPort's checks span two fields and raise FieldError on the item;
    # the problem is reported at spec.<list>.<index>.<field>, not at the item or at spec.
    document = wep(
        ipNetworks=["10.244.0.5/32"],
        ipNATs=[{"internalIP": "10.244.0.5", "externalIP": "172.16.0.5"},
                {"internalIP": "10.244.0.5", "externalIP": "fd00::5"}],
        ports=[{"name": "http", "protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 53}],
    )
    with pytest.raises(InvalidResource) as caught:
        parse(document)
    fields = {p.field: p.reason for p in caught.value.problems}
    assert fields.keys() == {"spec.ipNATs.1.externalIP", "spec.ports.1.name"}, fields
    assert "different IP versions" in fields["spec.ipNATs.1.externalIP"]
    assert "spec.ipNATs.1.externalIP: internalIP 10.244.0.5" in str(caught.value)


def test_workload_endpoint_port_protocol():
    rejected(wep(ports=[{"name": "ping", "protocol": "ICMP", "port": 1}]), "spec.ports.0.protocol", "SCTP")


def test_workload_endpoint_gateway_family():
    rejected(wep(ipv4Gateway="fe80::1"), "spec.ipv4Gateway", "not an IPv4")


# ---------------------------------------------------------------------------------------------
# NodeStatus


def test_node_status_round_trips_with_status():
    status = round_trips(doc("NodeStatus", "node-1-status", {
        "node": "node-1", "classes": ["Agent", "BGP", "Routes"], "updatePeriodSeconds": 10,
    }, status={
        "lastUpdated": "2024-05-01T12:00:00Z",
        "agent": {"bgpV4": {"state": "Ready", "version": "4.2.21", "routerID": "10.0.0.5",
                            "lastBootTime": "2024-05-01 11:00:00", "lastReconfigurationTime": "2024-05-01 11:59:00"}},
        "bgp": {"numberEstablishedV4": 1, "numberNotEstablishedV4": 1, "numberEstablishedV6": 0,
                "numberNotEstablishedV6": 0,
                "peersV4": [{"peerIP": "10.0.0.6", "type": "NodeMesh", "state": "Established", "since": "11:00:05"},
                            {"peerIP": "10.0.0.9", "type": "GlobalPeer", "state": "Active", "since": "11:00:05"}]},
        "routes": {"routesV4": [{"type": "FIB", "destination": "10.244.1.0/26", "gateway": "10.0.0.6",
                                 "interface": "eth0", "learnedFrom": {"sourceType": "NodeMesh", "peerIP": "10.0.0.6"}}]},
    }))
    assert status.status.bgp.peers_v4[0].state == "Established"
    bare = parse(doc("NodeStatus", "s", {"node": "node-1", "classes": [], "updatePeriodSeconds": 0}))
    assert bare.status is None


def test_node_status_classes_are_known_and_unique():
    rejected(doc("NodeStatus", "s", {"node": "n", "classes": ["Felix"], "updatePeriodSeconds": 10}),
             "spec.classes.0", "Routes")
    rejected(doc("NodeStatus", "s", {"node": "n", "classes": ["BGP", "BGP"], "updatePeriodSeconds": 10}),
             "spec.classes", "only once")


def test_node_status_update_period_is_at_most_a_day():
    rejected(doc("NodeStatus", "s", {"node": "n", "classes": ["BGP"], "updatePeriodSeconds": 86401}),
             "spec.updatePeriodSeconds", "86400")


def test_node_status_session_state_must_be_a_bgp_state():
    rejected(doc("NodeStatus", "s", {"node": "n", "classes": ["BGP"], "updatePeriodSeconds": 10}, status={
        "bgp": {"peersV4": [{"peerIP": "10.0.0.6", "type": "NodeMesh", "state": "up"}]},
    }), "status.bgp.peersV4.0.state", "Established")


@pytest.mark.parametrize("spec, field, reason", [
    ({"allowedUses": ["LoadBalancer", "Workload"]}, "spec.allowedUses", "cannot be combined"),
    ({"allowedUses": ["LoadBalancer"], "vxlanMode": "Always"}, "spec.vxlanMode", "LoadBalancer"),
    ({"allowedUses": ["LoadBalancer"], "disableBGPExport": True}, "spec.disableBGPExport", "LoadBalancer"),
    ({"allowedUses": ["LoadBalancer"], "nodeSelector": "rack == 'a'"}, "spec.nodeSelector", "all()"),
])
def test_ippool_load_balancer_rules(spec, field, reason):
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/16", **spec}), field, reason)


# Found by a review probe: each was stored, and then broke a node's BGP (a zone in every node's
# ExaBGP configuration, an infinite restart time in peering) or read a file outside the secrets.

@pytest.mark.parametrize("spec, field, reason", [
    ({"peerIP": "fe80::1%eth0", "asNumber": 1}, "spec.peerIP", "has a zone"),
    ({"peerIP": "[fe80::1%eth0]:179", "asNumber": 1}, "spec.peerIP", "has a zone"),
    ({"peerIP": "10.0.0.9", "asNumber": 1, "reachableBy": "fe80::1%eth0"}, "spec.reachableBy",
     "has a zone"),
    ({"peerIP": "10.0.0.9:\u0661\u0667\u0669", "asNumber": 1}, "spec.peerIP", "with a port"),
    ({"peerIP": "10.0.0.9", "asNumber": "\u0666\u0665\u0660\u0660\u0661"}, "spec.asNumber",
     "not an AS number"),
    ({"peerIP": "10.0.0.9", "asNumber": 1, "maxRestartTime": "9" * 400 + "h"},
     "spec.maxRestartTime", "longer than a duration can be"),
    ({"peerIP": "10.0.0.9", "asNumber": 1, "maxRestartTime": "2562048h"},
     "spec.maxRestartTime", "longer than a duration can be"),
    ({"peerIP": "10.0.0.9", "asNumber": 1, "ttlSecurity": True}, "spec.ttlSecurity",
     "not true"),
    ({"peerIP": "10.0.0.9", "asNumber": 1,
      "password": {"secretKeyRef": {"name": "../../../etc", "key": "shadow"}}},
     "spec.password.secretKeyRef.name", "not a Secret name"),
    ({"peerIP": "10.0.0.9", "asNumber": 1, "password": {"secretKeyRef": {"name": "", "key": ""}}},
     "spec.password.secretKeyRef.name", "not a Secret name"),
    ({"peerIP": "10.0.0.9", "asNumber": 1, "password": {"secretKeyRef": {"name": "s", "key": ".."}}},
     "spec.password.secretKeyRef.key", "not a Secret key"),
    ({"peerIP": "10.0.0.9", "asNumber": 1, "password": {"secretKeyRef": {"name": "s", "key": "a/b"}}},
     "spec.password.secretKeyRef.key", "not a Secret key"),
])
def test_bgp_peer_values_that_broke_a_node_later_are_refused(spec, field, reason):
    rejected(peer(**spec), field, reason)


def test_bgp_peer_secret_keys_as_kubernetes_allows_them():
    ref = parse(peer(peerIP="10.0.0.9", asNumber=1, password={
        "secretKeyRef": {"name": "bgp-secrets.tor", "key": "Tor_1.password-v2"}})).spec.password
    assert (ref.secret_key_ref.name, ref.secret_key_ref.key) == ("bgp-secrets.tor", "Tor_1.password-v2")


def test_addresses_with_a_zone_are_refused_for_nodes_and_services():
    rejected(doc("Node", "node-1", {"bgp": {"ipv6Address": "fe80::5%eth0/64"}}),
             "spec.bgp.ipv6Address", "has a zone")
    rejected(doc("BGPConfiguration", "default", {"serviceClusterIPs": [{"cidr": "fe80::%eth0/64"}]}),
             "spec.serviceClusterIPs.0.cidr", "has a zone")


def test_bgp_configuration_listen_port_is_a_number_not_a_boolean():
    rejected(doc("BGPConfiguration", "default", {"listenPort": True}), "spec.listenPort", "not true")


@pytest.mark.parametrize("given, stored", [("debug", "Debug"), ("WARNING", "Warning"), ("Info", "Info")])
def test_bgp_configuration_log_severity_in_any_case_as_calicos_crd_takes_it(given, stored):
    configuration = parse(doc("BGPConfiguration", "node.n1", {"logSeverityScreen": given}))
    assert configuration.spec.log_severity_screen == stored


def test_ipam_numbers_are_numbers_in_calicos_range():
    rejected(doc("IPPool", "p", {"cidr": "10.0.0.0/16", "blockSize": True}), "spec.blockSize",
             "not true")
    rejected(doc("IPAMConfig", "default", {"strictAffinity": True, "maxBlocksPerHost": True}),
             "spec.maxBlocksPerHost", "not true")
    rejected(doc("IPAMConfig", "default", {"strictAffinity": True, "maxBlocksPerHost": 2**31}),
             "spec.maxBlocksPerHost", "2147483647")


@pytest.mark.parametrize("kind, name, spec, field", [
    ("IPPool", "p", {"cidr": "10.0.0.0/16", "natOutgoing": "yes"}, "spec.natOutgoing"),
    ("IPPool", "p", {"cidr": "10.0.0.0/16", "disabled": 1}, "spec.disabled"),
    ("IPPool", "p", {"cidr": "10.0.0.0/16", "disableBGPExport": "true"}, "spec.disableBGPExport"),
    ("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": "off"}, "spec.nodeToNodeMeshEnabled"),
    ("BGPPeer", "p", {"peerIP": "10.0.0.9", "asNumber": 1, "keepOriginalNextHop": "yes"},
     "spec.keepOriginalNextHop"),
    ("IPAMConfig", "default", {"strictAffinity": "yes"}, "spec.strictAffinity"),
    ("IPAMConfig", "default", {"autoAllocateBlocks": 0}, "spec.autoAllocateBlocks"),
])
def test_switches_are_booleans_not_words_or_numbers(kind, name, spec, field):
    """As Calico's Go structs read them: `natOutgoing: "yes"` is refused, not taken as true
    (YAML's unquoted yes/no are booleans before percale sees them, as they are for calicoctl)."""
    rejected(doc(kind, name, spec), field, "valid boolean")


def test_an_ipv4_mapped_address_is_the_ipv4_address_it_maps():
    """Go's net.ParseIP reads ::ffff:10.0.0.9 as 10.0.0.9 (To4, String): so does percale, in
    every address field, and an IPv6-only field refuses it as Calico's does."""
    node = parse(doc("Node", "n1", {"ipv4VXLANTunnelAddr": "::ffff:10.0.0.9"}))
    assert node.spec.ipv4_vxlan_tunnel_addr == "10.0.0.9"
    rejected(doc("Node", "n1", {"ipv6VXLANTunnelAddr": "::ffff:10.0.0.9"}),
             "spec.ipv6VXLANTunnelAddr", "not an IPv6 address")


def test_server_managed_metadata_is_taken_and_dropped():
    """`kubectl get -o yaml` prints what the apiserver keeps for itself; calicoctl takes it
    (metav1.ObjectMeta) and percale drops it: refused as unknown, such output did not apply."""
    server_kept = {
        "generation": 3, "selfLink": "/apis/percale.io/v1/ippools/p", "generateName": "p-",
        "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}],
        "finalizers": ["example.com/keep"], "ownerReferences": [], "deletionGracePeriodSeconds": 0,
        "deletionTimestamp": "2026-01-01T00:00:00Z",
    }
    pool = parse({**doc("IPPool", "p", {"cidr": "10.0.0.0/16"}),
                  "metadata": {"name": "p", "labels": {"a": "b"}, **server_kept}})
    assert pool.to_document()["metadata"] == {"name": "p", "labels": {"a": "b"}}
    assert pool == parse({**doc("IPPool", "p", {"cidr": "10.0.0.0/16"}),
                          "metadata": {"name": "p", "labels": {"a": "b"}}})
    # Still refused: a field Kubernetes' ObjectMeta does not have at all.
    rejected({**doc("IPPool", "p", {"cidr": "10.0.0.0/16"}),
              "metadata": {"name": "p", "lables": {"a": "b"}}}, "metadata.lables", "unknown field")


def test_annotation_keys_and_a_profiles_labels_follow_kubernetes_rules():
    """As Calico holds them (annotation keys are qualified names; labelsToApply are labels
    that endpoints then carry): `bad key!` was stored and shown by policy show."""
    rejected({**doc("IPPool", "p", {"cidr": "10.0.0.0/16"}),
              "metadata": {"name": "p", "annotations": {"bad key!": "v"}}},
             "metadata.annotations", "annotation key 'bad key!' is not valid")
    rejected({**doc("IPPool", "p", {"cidr": "10.0.0.0/16"}),
              "metadata": {"name": "p", "annotations": {"": "v"}}},
             "metadata.annotations", "annotation key '' is not valid")
    rejected(doc("Profile", "kns.default", {"labelsToApply": {"bad key!": "v"}}),
             "spec.labelsToApply", "label key 'bad key!' is not valid")
    rejected(doc("Profile", "kns.default", {"labelsToApply": {"team": "ünïcode value"}}),
             "spec.labelsToApply", "(label 'team')")
    profile = parse(doc("Profile", "kns.default", {"labelsToApply": {
        "pcns.kubernetes.io/metadata.name": "default", "pcns.team": "a"}}))
    assert profile.spec.labels_to_apply["pcns.team"] == "a"
    ippool = parse({**doc("IPPool", "p", {"cidr": "10.0.0.0/16"}), "metadata": {
        "name": "p", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}})
    assert ippool.metadata.annotations
