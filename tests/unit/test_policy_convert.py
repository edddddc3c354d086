"""Kubernetes NetworkPolicy -> percale NetworkPolicy, as Calico converts it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from percale.api.k8s_policy import parse_kubernetes_policy
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
