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
    # Digits other than 0-9 (Arabic-Indic here) read as a port by Python's \d, never by Calico.
    ({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["\u0668\u0660:\u0669\u0660"]}},
     "spec.ingress.0.destination.ports.0", "not a port name"),
    ({"action": "Allow", "protocol": "GRE"}, "spec.ingress.0.protocol", "unknown protocol"),
    # Neither a name nor an integer, as Calico's numorstring.Protocol refuses them: each ended
    # percalectl in a traceback (.lower() on a list, a map, a float).
    ({"action": "Allow", "protocol": ["TCP", "UDP"]}, "spec.ingress.0.protocol",
     "must be a protocol name or a number 1-255"),
    ({"action": "Allow", "protocol": {"name": "TCP"}}, "spec.ingress.0.protocol",
     "must be a protocol name or a number 1-255"),
    ({"action": "Allow", "notProtocol": 6.0}, "spec.ingress.0.notProtocol",
     "must be a protocol name or a number 1-255"),
    ({"action": "Allow", "source": {"nets": ["10.0.0.0/33"]}}, "spec.ingress.0.source.nets.0", ""),
    # No packet is from an IPv4 net to an IPv6 one: the rule would match nothing, silently.
    ({"action": "Deny", "source": {"nets": ["10.0.0.0/8"]}, "destination": {"nets": ["fd00::/8"]}},
     "spec.ingress.0.destination", "no address family"),
    ({"action": "Deny", "protocol": "ICMP", "ipVersion": 6}, "spec.ingress.0.ipVersion", "IPv4 protocol"),
    ({"action": "Deny", "notProtocol": 58, "ipVersion": 4}, "spec.ingress.0.ipVersion", "IPv6 protocol"),
    ({"action": "Deny", "protocol": 1, "destination": {"ports": [80]}}, "destination.ports", "6, 17 or 132"),
    ({"action": "Deny", "protocol": "ICMP", "icmp": {"type": True}}, "spec.ingress.0.icmp.type", "not a number"),
    # As Calico refuses it: not in every address leaves the rule no packet of that family.
    ({"action": "Deny", "source": {"notNets": ["10.0.0.0/8", "0.0.0.0/0"]}},
     "spec.ingress.0.source.notNets", "0.0.0.0/0 matches every address"),
    ({"action": "Deny", "destination": {"notNets": ["::/0"]}}, "destination.notNets", "::/0 matches every"),
    # ICMP is IPv4's: with IPv6 sources only it matched nothing, left out of the table unsaid.
    ({"action": "Deny", "protocol": "ICMP", "source": {"nets": ["fd00::/8"]}}, "spec.ingress.0.source",
     "no address family"),
    ({"action": "Deny", "protocol": "ICMPv6", "destination": {"nets": ["10.0.0.0/8"]}},
     "spec.ingress.0.destination", "no address family"),
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


def test_an_empty_rule_selector_is_a_selector_not_given():
    """Calico's rule selectors are omitempty strings: "" is none given. Parsed, it was all(),
    and namespaceSelector: "" beside a selector let the pods it names in from every namespace."""
    rule = parse(policy(ingress=[{"action": "Allow", "source": {
        "selector": "app == 'a'", "namespaceSelector": "", "notSelector": ""}}])).spec.ingress[0]
    assert (rule.source.selector, rule.source.namespace_selector, rule.source.not_selector) == (
        "app == 'a'", None, None)


def test_a_global_policy_takes_a_namespace_selector_and_a_namespaced_one_does_not():
    parse({"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
           "spec": {"namespaceSelector": "team == 'a'", "order": 10}})
    assert "namespaceSelector" in problem(policy(namespaceSelector="all()"))


@pytest.mark.parametrize("order,words", [(float("nan"), "NaN"), (True, "not a number")])
def test_an_order_must_be_a_number(order, words):
    # NaN sorts nowhere: stored, it scrambled the order of every other policy.
    text = problem(policy(order=order))
    assert "spec.order" in text and words in text, text
    assert parse(policy(order=float("inf"))).spec.order == float("inf")  # last, on purpose


@pytest.mark.parametrize("protocol", [6, "6", "TCP", "tcp"])
def test_ports_take_tcp_by_name_or_number(protocol):
    rule = parse(policy(ingress=[{"action": "Allow", "protocol": protocol,
                                  "destination": {"ports": [80]}}])).spec.ingress[0]
    assert rule.protocol in (6, "TCP")


@pytest.mark.parametrize("rule,families", [
    ({"action": "Allow"}, (4, 6)),
    ({"action": "Allow", "ipVersion": 6}, (6,)),
    # Both families in one list: each family's rule keeps its own CIDRs (felix does the same).
    ({"action": "Allow", "source": {"nets": ["10.0.0.0/8", "fd00::/8"]}}, (4, 6)),
    ({"action": "Allow", "source": {"nets": ["10.0.0.0/8", "fd00::/8"]},
      "destination": {"nets": ["10.1.0.0/16"]}}, (4,)),
    # notNets all of the other family leave the rule out of this family, as in felix.
    ({"action": "Allow", "source": {"notNets": ["fd00::/8"]}}, (6,)),
])
def test_the_families_a_rule_applies_to(rule, families):
    assert parse(policy(ingress=[rule])).spec.ingress[0].families == families


def test_a_kubernetes_policy_as_kubectl_prints_it_and_with_null_fields_is_taken():
    """`kubectl get -o yaml` output (generation, managedFields) applies again, and a field left
    null (`podSelector:` with nothing after it) means what Kubernetes reads: left out."""
    document = k8s(podSelector=None, ingress=[{"from": None, "ports": None},
                                              {"from": [{"podSelector": None, "namespaceSelector": {}}]}])
    document["metadata"].update(generation=3, managedFields=[{"manager": "kubectl"}],
                                uid="1f0e1f0e-0000-0000-0000-000000000000", resourceVersion="55")
    spec = parse_kubernetes_policy(document).spec
    assert spec.pod_selector.match_labels == {} and spec.ingress[0].from_ == []
    assert spec.ingress[1].from_[0].pod_selector is None
    assert spec.ingress[1].from_[0].namespace_selector is not None
