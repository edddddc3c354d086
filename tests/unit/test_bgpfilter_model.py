"""BGPFilter through `percale.api.parse`: Calico's wire spelling round-trips, each refusal names
the rule's field and says why, and the Calico fields percale does not apply are refused by name
with the reason, not as unknown fields."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from percale.api import BGPFilter, InvalidResource, kind_named, parse

pytestmark = pytest.mark.unit

API = "percale.io/v1"


def bgp_filter(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "BGPFilter", "metadata": {"name": "edge"}, "spec": spec}


def refused(document: dict[str, Any], field: str, reason: str) -> str:
    """parse() refuses `document` with a problem at `field` whose reason holds `reason`."""
    with pytest.raises(InvalidResource) as caught:
        parse(document)
    problems = caught.value.problems
    assert any(p.field == field and reason in p.reason for p in problems), problems
    return next(p.reason for p in problems if p.field == field)


def v4_rule(**rule: Any) -> dict[str, Any]:
    return bgp_filter(exportV4=[{"action": "Accept", **rule}])


def v6_rule(**rule: Any) -> dict[str, Any]:
    return bgp_filter(importV6=[{"action": "Reject", **rule}])


FULL = bgp_filter(
    exportV4=[
        {"action": "Accept", "cidr": "10.244.0.0/16", "matchOperator": "In",
         "prefixLength": {"min": 24, "max": 28}, "source": "RemotePeers", "peerType": "eBGP",
         "communities": {"values": ["65000:100"]}, "asPathPrefix": [64512, 64513]},
        {"action": "Reject"},
    ],
    importV4=[{"action": "Reject", "cidr": "192.0.2.0/24", "matchOperator": "Equal"}],
    exportV6=[{"action": "Accept", "cidr": "fd00:10:244::/48", "matchOperator": "NotIn",
               "prefixLength": {"max": 64}, "communities": {"values": ["65000:1:2"]}}],
    importV6=[{"action": "Reject", "peerType": "iBGP", "cidr": "fd00::/8",
               "matchOperator": "NotEqual"}],
)


def test_a_full_filter_parses_into_the_named_fields():
    parsed = parse(copy.deepcopy(FULL))
    assert isinstance(parsed, BGPFilter)
    first = parsed.spec.export_v4[0]
    assert (first.action, first.cidr, first.match_operator) == ("Accept", "10.244.0.0/16", "In")
    assert (first.prefix_length.min, first.prefix_length.max) == (24, 28)
    assert (first.source, first.peer_type) == ("RemotePeers", "eBGP")
    assert first.communities.values == ["65000:100"]
    assert first.as_path_prefix == [64512, 64513]
    assert parsed.spec.export_v4[1].cidr is None
    assert [len(parsed.spec.import_v4), len(parsed.spec.export_v6), len(parsed.spec.import_v6)] == [1, 1, 1]


def test_a_full_filter_round_trips_in_calicos_spelling():
    parsed = parse(copy.deepcopy(FULL))
    printed = parsed.to_document()
    assert printed["spec"] == FULL["spec"]
    assert parse(printed) == parsed


def test_an_empty_filter_has_four_empty_lists():
    parsed = parse(bgp_filter())
    assert parsed.spec.export_v4 == parsed.spec.import_v4 == parsed.spec.export_v6 == parsed.spec.import_v6 == []


def test_bgpfilter_is_cluster_scoped_with_calicoctls_names():
    assert kind_named("bgpfilters") is BGPFilter
    for short in ("bgpf", "bgpfs", "bf", "bfs"):
        assert kind_named(short) is BGPFilter
    assert not BGPFilter.info.namespaced and not BGPFilter.info.managed
    document = bgp_filter()
    document["metadata"]["namespace"] = "default"
    refused(document, "metadata", "not namespaced")


def test_a_rule_needs_an_action():
    refused(bgp_filter(exportV4=[{"cidr": "10.0.0.0/8", "matchOperator": "In"}]),
            "spec.exportV4.0.action", "required")
    refused(v4_rule(action="Drop"), "spec.exportV4.0.action", "Accept")


def test_cidr_without_match_operator_is_refused():
    refused(v4_rule(cidr="10.0.0.0/8"), "spec.exportV4.0.matchOperator", "needs matchOperator")


def test_match_operator_without_cidr_is_refused():
    refused(v6_rule(matchOperator="In"), "spec.importV6.0.cidr", "needs cidr")


def test_prefix_length_without_cidr_is_refused():
    refused(v4_rule(prefixLength={"min": 24}), "spec.exportV4.0.prefixLength", "needs cidr")


@pytest.mark.parametrize("operator", ["Equal", "NotEqual"])
def test_prefix_length_with_equal_or_not_equal_points_at_in_and_not_in(operator):
    reason = refused(v4_rule(cidr="10.0.0.0/8", matchOperator=operator, prefixLength={"max": 24}),
                     "spec.exportV4.0.prefixLength", f"matchOperator {operator}")
    assert "use matchOperator In or NotIn" in reason


def test_prefix_length_min_above_max_is_refused():
    refused(v4_rule(cidr="10.0.0.0/8", matchOperator="In", prefixLength={"min": 24, "max": 16}),
            "spec.exportV4.0.prefixLength.min", "greater than max 16")


def test_prefix_length_max_shorter_than_the_cidr_is_refused():
    # The cidr's own length is the least a matched prefix can have: nothing would match.
    refused(v4_rule(cidr="10.244.0.0/16", matchOperator="In", prefixLength={"max": 8}),
            "spec.exportV4.0.prefixLength.max", "at least /16")


@pytest.mark.parametrize("end", ["min", "max"])
def test_prefix_length_beyond_32_in_a_v4_list_is_refused(end):
    refused(v4_rule(cidr="10.0.0.0/8", matchOperator="In", prefixLength={end: 33}),
            f"spec.exportV4.0.prefixLength.{end}", "longer than an IPv4 prefix can be (32)")


def test_prefix_length_up_to_128_is_taken_in_a_v6_list():
    parsed = parse(v6_rule(cidr="fd00::/8", matchOperator="In", prefixLength={"min": 64, "max": 128}))
    assert parsed.spec.import_v6[0].prefix_length.max == 128


@pytest.mark.parametrize("value", [129, -1])
def test_prefix_length_outside_0_to_128_is_refused(value):
    refused(v6_rule(cidr="fd00::/8", matchOperator="In", prefixLength={"max": value}),
            "spec.importV6.0.prefixLength.max", "between 0 and 128")


def test_prefix_length_must_be_a_whole_number():
    refused(v6_rule(cidr="fd00::/8", matchOperator="In", prefixLength={"min": "64"}),
            "spec.importV6.0.prefixLength.min", "whole number")


def test_an_ipv6_cidr_in_a_v4_list_is_refused():
    refused(v4_rule(cidr="fd00::/8", matchOperator="In"), "spec.exportV4.0.cidr", "put the rule in exportV6")


def test_an_ipv4_cidr_in_a_v6_list_is_refused():
    refused(v6_rule(cidr="10.0.0.0/8", matchOperator="In"), "spec.importV6.0.cidr", "put the rule in importV4")


def test_the_rule_position_is_named():
    document = bgp_filter(importV4=[{"action": "Accept"}, {"action": "Reject", "cidr": "fd00::/8",
                                                           "matchOperator": "In"}])
    refused(document, "spec.importV4.1.cidr", "is IPv6")


def test_a_cidr_with_host_bits_is_refused():
    refused(v4_rule(cidr="10.0.0.1/8", matchOperator="In"), "spec.exportV4.0.cidr", "host bits")


@pytest.mark.parametrize("values", [["65000:1", "65000:2"], []])
def test_communities_take_exactly_one_value(values):
    refused(v4_rule(communities={"values": values}), "spec.exportV4.0.communities.values", "exactly one")


def test_a_community_that_is_not_a_literal_is_refused():
    refused(v4_rule(communities={"values": ["65536:1"]}), "spec.exportV4.0.communities.values.0",
            "does not fit in 16 bits")
    refused(v4_rule(communities={"values": ["no-export"]}), "spec.exportV4.0.communities.values.0",
            "aa:nn")


def test_as_path_prefix_holds_as_numbers():
    assert parse(v4_rule(asPathPrefix=["1.10"])).spec.export_v4[0].as_path_prefix == [65546]
    refused(v4_rule(asPathPrefix=[0]), "spec.exportV4.0.asPathPrefix.0", "reserved")


def test_source_and_peer_type_take_calicos_values_only():
    refused(v4_rule(source="Local"), "spec.exportV4.0.source", "RemotePeers")
    refused(v4_rule(peerType="ebgp"), "spec.exportV4.0.peerType", "eBGP")


@pytest.mark.parametrize("field, value, why", [
    ("interface", "eth*", "percale exports no interface routes"),
    ("priority", 512, "percale has no route priority"),
    ("operations", [{"addCommunity": {"value": "65000:1"}}], "does not implement"),
])
def test_calico_fields_percale_does_not_apply_are_refused_saying_why(field, value, why):
    reason = refused(v4_rule(**{field: value}), f"spec.exportV4.0.{field}", why)
    assert reason.startswith(f"{field} ") and "not supported" in reason and "unknown" not in reason


def test_an_empty_unsupported_field_is_no_setting():
    # Calico's omitempty writes none of them empty; one written so asks for nothing.
    assert parse(v4_rule(interface="")).spec.export_v4[0] == parse(v4_rule()).spec.export_v4[0]


def test_other_unknown_fields_are_still_unknown():
    refused(v4_rule(cidrs=["10.0.0.0/8"]), "spec.exportV4.0.cidrs", "unknown field")
    refused(bgp_filter(exportv4=[]), "spec.exportv4", "unknown field")
