"""Kubernetes NetworkPolicy -> percale NetworkPolicy, as Calico converts it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from percale.api import InvalidResource
from percale.api.k8s_policy import LabelSelector, parse_kubernetes_policy
from percale.datastore import DatastoreError
from percale.datastore.kube_native import policy_from_kubernetes
from percale.policy.convert import convert, selector_text

pytestmark = pytest.mark.unit

SEED = Path(__file__).resolve().parents[2] / "examples" / "policy" / "allow-frontend-to-backend.yaml"


def k8s(spec: dict, name: str = "p") -> object:
    return parse_kubernetes_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                    "metadata": {"name": name, "namespace": "x"}, "spec": spec})


def rules(policy, direction: str = "ingress") -> list[dict]:
    return [r.model_dump(by_alias=True, exclude_defaults=True) for r in getattr(policy.spec, direction)]


def test_the_seed_policy_converts_as_calico_converts_it():
    converted = convert(parse_kubernetes_policy(yaml.safe_load(SEED.read_text())))
    assert converted.metadata.name == "knp.default.allow-frontend-to-backend"
    assert converted.metadata.namespace == "production"
    assert converted.spec.order == 1000
    assert converted.spec.selector == 'app == "backend"'
    assert converted.spec.types == ["Ingress", "Egress"]
    # One Allow rule per protocol and peer; the ports on the pod's side.
    assert rules(converted) == [
        {"action": "Allow", "protocol": "TCP", "source": {"selector": 'app == "frontend"'},
         "destination": {"ports": [8080]}},
        {"action": "Allow", "protocol": "TCP",
         "source": {"namespaceSelector": 'kubernetes.io/metadata.name == "production"'},
         "destination": {"ports": [8080]}},
    ]
    assert rules(converted, "egress") == [
        {"action": "Allow", "protocol": "TCP",
         "destination": {"selector": 'app == "database"', "ports": [5432]}},
        {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
    ]


def test_selectors_translate_every_operator():
    assert selector_text(k8s({"podSelector": {}}).spec.pod_selector) == "all()"
    chosen = k8s({"podSelector": {"matchLabels": {"pod": "a"}, "matchExpressions": [
        {"key": "ns", "operator": "In", "values": ["y", "x"]},
        {"key": "tier", "operator": "NotIn", "values": ["db"]},
        {"key": "env", "operator": "Exists"},
        {"key": "old", "operator": "DoesNotExist"}]}}).spec.pod_selector
    assert selector_text(chosen) == ('pod == "a" && ns in {"x", "y"} && tier not in {"db"} && '
                                     "has(env) && !has(old)")


def test_ports_group_by_protocol_and_ranges_and_names_survive():
    policy = convert(k8s({"ingress": [{"ports": [
        {"port": 80}, {"port": 81, "endPort": 90}, {"port": "serve-80-udp", "protocol": "UDP"},
        {"protocol": "SCTP"}]}]}))
    assert rules(policy) == [
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80, "81:90"]}},
        {"action": "Allow", "protocol": "UDP", "destination": {"ports": ["serve-80-udp"]}},
        {"action": "Allow", "protocol": "SCTP"},  # protocol only: every port of it
    ]


def test_an_empty_rule_allows_everything_and_no_rules_isolate():
    assert rules(convert(k8s({"ingress": [{}]}))) == [{"action": "Allow"}]
    isolating = convert(k8s({"policyTypes": ["Ingress", "Egress"]}))
    assert isolating.spec.types == ["Ingress", "Egress"] and not isolating.spec.ingress


def test_ip_blocks_become_nets_and_not_nets():
    policy = convert(k8s({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                            "except": ["10.1.0.0/16"]}}]}]}))
    assert rules(policy, "egress") == [
        {"action": "Allow", "destination": {"nets": ["10.0.0.0/8"], "notNets": ["10.1.0.0/16"]}}]
    assert policy.spec.types == ["Ingress", "Egress"]  # Kubernetes' default, made explicit


def test_an_ip_block_with_host_bits_is_its_network_as_calico_reads_it():
    """The apiserver takes 192.168.1.5/24 in an ipBlock (a warning, or an object older than its
    refusal): the whole policy was left out for it, and its pods were protected by nothing."""
    policy = convert(k8s({"egress": [{"to": [{"ipBlock": {"cidr": "192.168.1.5/24",
                                                            "except": ["192.168.1.9/30"]}}]}]}))
    assert rules(policy, "egress") == [
        {"action": "Allow", "destination": {"nets": ["192.168.1.0/24"],
                                            "notNets": ["192.168.1.8/30"]}}]


KEY_RULE = ("is not valid: a name starts and ends with a letter or digit, with only letters, "
            "digits, '-', '_' and '.' between")
VALUE_RULE = ("is not valid: a value is empty, or starts and ends with a letter or digit, with only "
              "letters, digits, '-', '_' and '.' between")
SPACED = {"matchLabels": {"a b": "c"}}
SPACED_EXPRESSION = {"matchExpressions": [{"key": "a b", "operator": "Exists"}]}
LONG = "a" * 242

# Each once reached percale's own model unchecked, and percalectl printed pydantic's traceback.
REFUSED = {
    "upper-case name": (
        {"name": "UPPER"}, {},
        "invalid NetworkPolicy (networking.k8s.io/v1) 'UPPER': metadata.name: 'UPPER' is not a "
        "valid name: lower-case letters, digits, '-' and '.', each part between dots starting and "
        "ending with a letter or digit, at most 253 characters"),
    # Kubernetes accepts it; knp.default.<name> would be 254 characters.
    "name too long to convert": (
        {"name": LONG}, {},
        f"invalid NetworkPolicy (networking.k8s.io/v1) '{LONG}': metadata.name: percale stores "
        "this policy as knp.default.<name>, so the name has at most 241 characters; this one has 242"),
    "name longer than Kubernetes allows": (
        {"name": "a" * 254}, {},
        f"invalid NetworkPolicy (networking.k8s.io/v1) '{'a' * 254}': metadata.name: a name has at "
        "most 253 characters, this one has 254"),
    "matchLabels key": (
        {}, {"podSelector": SPACED},
        f"invalid NetworkPolicy (networking.k8s.io/v1) 'p': spec.podSelector.matchLabels: label "
        f"key 'a b' {KEY_RULE}"),
    "matchExpressions key": (
        {}, {"podSelector": SPACED_EXPRESSION},
        f"invalid NetworkPolicy (networking.k8s.io/v1) 'p': "
        f"spec.podSelector.matchExpressions.0.key: label key 'a b' {KEY_RULE}"),
    "matchLabels value with a quote": (
        {}, {"podSelector": {"matchLabels": {"app": 'we"b'}}},
        f"invalid NetworkPolicy (networking.k8s.io/v1) 'p': spec.podSelector.matchLabels: label "
        f"value 'we\"b' {VALUE_RULE} (label 'app')"),
    "matchExpressions value with a quote": (
        {}, {"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["web", 'we"b']}]}},
        f"invalid NetworkPolicy (networking.k8s.io/v1) 'p': "
        f"spec.podSelector.matchExpressions.0.values: label value 'we\"b' {VALUE_RULE}"),
    "matchLabels value too long": (
        {}, {"podSelector": {"matchLabels": {"app": "v" * 64}}},
        f"invalid NetworkPolicy (networking.k8s.io/v1) 'p': spec.podSelector.matchLabels: label "
        f"value '{'v' * 64}' is longer than 63 characters (label 'app')"),
    "ingress peer podSelector": (
        {}, {"ingress": [{"from": [{"podSelector": SPACED}]}]},
        f"invalid NetworkPolicy (networking.k8s.io/v1) 'p': "
        f"spec.ingress.0.from.0.podSelector.matchLabels: label key 'a b' {KEY_RULE}"),
    "ingress peer namespaceSelector": (
        {}, {"ingress": [{"from": [{"namespaceSelector": SPACED_EXPRESSION}]}]},
        f"invalid NetworkPolicy (networking.k8s.io/v1) 'p': "
        f"spec.ingress.0.from.0.namespaceSelector.matchExpressions.0.key: label key 'a b' "
        f"{KEY_RULE}"),
    "egress peer podSelector": (
        {}, {"egress": [{"to": [{"podSelector": SPACED}]}]},
        f"invalid NetworkPolicy (networking.k8s.io/v1) 'p': "
        f"spec.egress.0.to.0.podSelector.matchLabels: label key 'a b' {KEY_RULE}"),
}


def document(metadata: dict, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", **metadata}, "spec": spec}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_policy_percale_cannot_hold_is_refused_naming_the_kubernetes_field(case):
    metadata, spec, message = REFUSED[case]
    # Parsing then converting, as `percalectl apply` reads a document.
    with pytest.raises(InvalidResource) as caught:
        convert(parse_kubernetes_policy(document(metadata, spec)))
    assert str(caught.value) == message


def test_the_longest_names_and_valid_labels_still_convert():
    longest = convert(parse_kubernetes_policy(document({"name": "a" * 241}, {"podSelector": {
        "matchLabels": {"example.com/app": "", "tier": "A-1_b.c"},
        "matchExpressions": [{"key": "env", "operator": "In", "values": ["", "prod"]}]}})))
    assert longest.metadata.name == "knp.default." + "a" * 241
    assert longest.spec.selector == ('example.com/app == "" && tier == "A-1_b.c" && '
                                     'env in {"", "prod"}')


def test_a_conversion_the_kubernetes_model_let_through_is_still_a_named_problem():
    """The safety net: a check missing from the Kubernetes model surfaces as InvalidResource
    naming the converted policy's field, not as pydantic's ValidationError."""
    policy = parse_kubernetes_policy(document({}, {}))
    policy.spec.pod_selector = LabelSelector.model_construct(
        match_labels={"a b": "c"}, match_expressions=[])  # unchecked, as a missing check would be
    with pytest.raises(InvalidResource) as caught:
        convert(policy)
    assert str(caught.value) == (
        "invalid NetworkPolicy (networking.k8s.io/v1) 'p': cannot be converted to percale's "
        "NetworkPolicy 'knp.default.p': selector: invalid selector \"a b == \"c\"\": expected an "
        "operator: ==, !=, in, not in, contains, starts with or ends with at position 2")


def test_the_kubernetes_datastore_reports_a_policy_it_cannot_convert_as_a_datastore_error():
    # The apiserver accepts this name; the agent's view must get DatastoreError (which it logs
    # and retries), never pydantic's ValidationError, which would end its task group.
    stored = document({"name": LONG, "resourceVersion": "7"}, {})
    with pytest.raises(DatastoreError) as caught:
        policy_from_kubernetes(stored)
    assert str(caught.value) == (
        f"the Kubernetes NetworkPolicy x/{LONG} cannot be used: invalid NetworkPolicy "
        f"(networking.k8s.io/v1) '{LONG}': metadata.name: percale stores this policy as "
        "knp.default.<name>, so the name has at most 241 characters; this one has 242")
