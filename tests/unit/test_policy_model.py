"""Policy resources validate as Calico's and Kubernetes' do, and a bad one names its field."""

from __future__ import annotations

import pytest

from percale.api import InvalidResource, parse
from percale.api.k8s_policy import parse_kubernetes_policy

pytestmark = pytest.mark.unit


def policy(**spec) -> dict:
    return {"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"}, "spec": spec}


def k8s(**spec) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"}, "spec": spec}


def problem(document, parser=parse) -> str:
    with pytest.raises(InvalidResource) as caught:
        parser(document)
    return str(caught.value)


def test_types_default_as_calico_defaults_them():
    assert parse(policy()).spec.effective_types == ("Ingress",)
    assert parse(policy(egress=[{"action": "Allow"}])).spec.effective_types == ("Egress",)
    both = policy(ingress=[{"action": "Deny"}], egress=[{"action": "Allow"}])
    assert parse(both).spec.effective_types == ("Ingress", "Egress")
    assert parse(policy(types=["Egress"])).spec.effective_types == ("Egress",)


def test_kubernetes_policy_types_default_as_kubernetes_defaults_them():
    # The trap: egress rules and no policyTypes isolate ingress too.
    assert parse_kubernetes_policy(k8s(egress=[{}])).spec.effective_types == ("Ingress", "Egress")
    assert parse_kubernetes_policy(k8s()).spec.effective_types == ("Ingress",)
    assert parse_kubernetes_policy(k8s(policyTypes=["Egress"])).spec.effective_types == ("Egress",)


@pytest.mark.parametrize("rule,field,words", [
    ({"action": "Reject"}, "spec.ingress.0.action", "Allow"),
    ({"action": "Allow", "source": {"selector": "app == "}}, "spec.ingress.0.source.selector", ""),
    ({"action": "Allow", "destination": {"ports": [80]}}, "destination.ports", "protocol TCP, UDP or SCTP"),
    ({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["a-very-long-port-name"]}},
     "spec.ingress.0.destination.ports.0", "longer than 15"),
    ({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}},
     "spec.ingress.0.destination.ports.0", "lower to a higher"),
    ({"action": "Allow", "protocol": "GRE"}, "spec.ingress.0.protocol", "unknown protocol"),
    ({"action": "Allow", "source": {"nets": ["10.0.0.0/33"]}}, "spec.ingress.0.source.nets.0", ""),
])
def test_a_bad_rule_is_refused_naming_its_field(rule, field, words):
    text = problem(policy(ingress=[rule]))
    assert field in text and words in text, text


@pytest.mark.parametrize("spec,field,words", [
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]},
     "except[0]", "not strictly inside cidr 10.0.0.0/16"),
    ({"ingress": [{"ports": [{"port": "serve-80-tcp-and-more"}]}]}, "port", "longer than 15"),
    ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "endPort", "numeric port"),
    ({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "endPort", "between port 90"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "ipBlock", "cannot be combined"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "values", "at least one"),
    ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "protocol", ""),
])
def test_a_bad_kubernetes_policy_is_refused_naming_its_field(spec, field, words):
    text = problem(k8s(**spec), parse_kubernetes_policy)
    assert field in text and words in text, text


def test_a_global_policy_takes_a_namespace_selector_and_a_namespaced_one_does_not():
    parse({"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
           "spec": {"namespaceSelector": "team == 'a'", "order": 10}})
    assert "namespaceSelector" in problem(policy(namespaceSelector="all()"))
