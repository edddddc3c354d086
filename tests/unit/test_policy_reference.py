"""The reference evaluator against truth tables written by hand (dataplane.md §C3's canonical
cases): the matrix the dataplane is checked against is only as good as this."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from percale.api import parse
from percale.api.k8s_policy import parse_kubernetes_policy
from percale.policy.reference import VXLAN_PORT, Endpoint, Flow, NamedPort, World

pytestmark = pytest.mark.unit

PORTS = tuple(NamedPort(f"serve-{port}-{proto.lower()}", proto, port)
              for port in (80, 81) for proto in ("TCP", "UDP"))
PODS = {f"{ns}/{pod}": Endpoint(pod, ns, f"10.244.{i // 3}.{i % 3 + 10}", {"pod": pod},
                                {"kubernetes.io/metadata.name": ns}, PORTS)
        for i, (ns, pod) in enumerate((ns, pod) for ns in "xyz" for pod in "abc")}
EXTERNAL = "192.0.2.7"


def k8s(spec: dict, name: str = "p", namespace: str = "x"):
    return parse_kubernetes_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                    "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def percale(spec: dict, name: str = "p", namespace: str | None = "x"):
    kind = "NetworkPolicy" if namespace else "GlobalNetworkPolicy"
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return parse({"apiVersion": "percale.io/v1", "kind": kind, "metadata": meta, "spec": spec})


def reach(world: World, source: str, destination: str, port: int = 80, protocol: str = "TCP") -> bool:
    def party(name):
        return PODS.get(name, name)
    return world.allowed(Flow(party(source), party(destination), protocol, port))


def allowed_into(world: World, destination: str, port: int = 80, protocol: str = "TCP") -> set[str]:
    return {s for s in PODS if s != destination and reach(world, s, destination, port, protocol)}


EVERYONE = set(PODS)


def test_no_policy_allows_everything():
    world = World()
    assert all(reach(world, a, b) for a in PODS for b in PODS if a != b)


def test_deny_all_ingress_isolates_the_namespace_inbound_only():
    world = World([k8s({"podSelector": {}})])
    assert allowed_into(world, "x/a") == set()
    assert allowed_into(world, "y/a") == EVERYONE - {"y/a"}  # x's pods still reach out


def test_deny_all_egress():
    world = World([k8s({"podSelector": {}, "policyTypes": ["Egress"]})])
    assert not reach(world, "x/a", "y/a") and not reach(world, "x/a", "x/b")
    assert reach(world, "y/a", "x/a")


def test_pod_selector_peer_is_limited_to_the_policys_namespace():
    world = World([k8s({"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})])
    assert allowed_into(world, "x/a") == {"x/b"}


def test_pod_and_namespace_in_one_peer_versus_two_peers():
    both = World([k8s({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
         "podSelector": {"matchLabels": {"pod": "b"}}}]}]})])
    assert allowed_into(both, "x/a") == {"y/b"}
    either = World([k8s({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}},
        {"podSelector": {"matchLabels": {"pod": "b"}}}]}]})])
    assert allowed_into(either, "x/a") == {"y/a", "y/b", "y/c", "x/b"}


def test_empty_namespace_selector_means_every_pod_but_not_outside():
    world = World([k8s({"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"from": [{"namespaceSelector": {}}]}]})])
    assert allowed_into(world, "x/a") == EVERYONE - {"x/a"}
    assert not reach(world, EXTERNAL, "x/a")


def test_named_ports_resolve_on_the_destination_and_need_the_protocol():
    world = World([k8s({"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]})])
    assert allowed_into(world, "x/a", 81) == EVERYONE - {"x/a"}
    assert allowed_into(world, "x/a", 80) == set()
    wrong_protocol = World([k8s({"podSelector": {}, "ingress": [{"ports": [
        {"port": "serve-80-udp", "protocol": "TCP"}]}]})])
    assert allowed_into(wrong_protocol, "x/a", 80) == set()
    assert allowed_into(wrong_protocol, "x/a", 80, "UDP") == set()


def test_end_port_ranges_and_protocol_only_rules():
    world = World([k8s({"podSelector": {}, "ingress": [{"ports": [{"port": 79, "endPort": 80}]}]})])
    assert reach(world, "y/a", "x/a", 80) and not reach(world, "y/a", "x/a", 81)
    udp = World([k8s({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]})])
    assert reach(udp, "y/a", "x/a", 81, "UDP") and not reach(udp, "y/a", "x/a", 81, "TCP")


def test_ip_block_except_and_an_additive_second_policy():
    x_b = PODS["x/b"].address
    carve = k8s({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"{x_b}/32"]}}]}]})
    assert allowed_into(World([carve]), "x/a") == EVERYONE - {"x/a", "x/b"}
    allow_b = k8s({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"ipBlock": {"cidr": f"{x_b}/32"}}]}]}, name="b")
    assert allowed_into(World([carve, allow_b]), "x/a") == EVERYONE - {"x/a"}


def test_egress_rules_without_policy_types_isolate_ingress_too():
    world = World([k8s({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{}]})])
    assert allowed_into(world, "x/a") == set()
    assert reach(world, "x/a", "y/c")


def test_both_ends_must_allow():
    deny_out = k8s({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]})
    allow_in = k8s({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}, namespace="y")
    assert not reach(World([deny_out, allow_in]), "x/a", "y/a")


def test_calico_order_deny_before_allow_and_pass_to_the_profile():
    deny = percale({"order": 10, "selector": "pod == 'a'",
                    "ingress": [{"action": "Deny", "source": {"selector": "pod == 'b'"}}]}, "deny")
    allow = percale({"order": 20, "selector": "pod == 'a'", "ingress": [{"action": "Allow"}]}, "allow")
    world = World(percale=[allow, deny])
    assert allowed_into(world, "x/a") == EVERYONE - {"x/a", "x/b"}
    # Pass skips the allow policy; the namespace's profile (allow all by default) decides.
    passing = percale({"order": 5, "selector": "pod == 'a'",
                       "ingress": [{"action": "Pass", "source": {"selector": "pod == 'b'"}}]}, "pass")
    assert reach(World(percale=[allow, deny, passing]), "x/b", "x/a")
    # A global policy with no namespace selector reaches every namespace.
    denied_everywhere = percale({"order": 1, "selector": "pod == 'c'",
                                 "ingress": [{"action": "Deny"}]}, "g", namespace=None)
    assert allowed_into(World(percale=[denied_everywhere]), "z/c") == set()


def test_equal_orders_are_broken_by_name_whatever_the_kind():
    """A global Deny named zz-deny and Kubernetes' allow-all (knp.default.allow-all), both at
    order 1000: "knp..." sorts first, so it allows, as felix orders them (dataplane.md §A2). A
    global policy used to come before every namespaced one of its order, whatever the names."""
    deny = percale({"order": 1000, "selector": "pod == 'a'", "types": ["Ingress"],
                    "ingress": [{"action": "Deny"}]}, "zz-deny", namespace=None)
    allow_all = k8s({"podSelector": {}, "ingress": [{}]}, "allow-all")
    assert reach(World([allow_all], percale=[deny]), "x/b", "x/a")
    first = percale({"order": 1000, "selector": "pod == 'a'", "types": ["Ingress"],
                     "ingress": [{"action": "Deny"}]}, "a-deny", namespace=None)
    assert not reach(World([allow_all], percale=[first]), "x/b", "x/a")


def test_the_seed_policy():
    seed = parse_kubernetes_policy(yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "examples/policy/allow-frontend-to-backend.yaml").read_text()))
    prod = {"kubernetes.io/metadata.name": "production"}
    backend = Endpoint("backend", "production", "10.244.9.1", {"app": "backend"}, prod)
    frontend = Endpoint("frontend", "staging", "10.244.9.2", {"app": "frontend"},
                        {"kubernetes.io/metadata.name": "staging"})
    other = Endpoint("other", "staging", "10.244.9.3", {"app": "other"},
                     {"kubernetes.io/metadata.name": "staging"})
    database = Endpoint("database", "production", "10.244.9.4", {"app": "database"}, prod)
    world = World([seed])
    assert not world.allowed(Flow(frontend, backend, "TCP", 8080))  # frontend is in staging
    frontend = Endpoint("frontend", "production", "10.244.9.2", {"app": "frontend"}, prod)
    assert world.allowed(Flow(frontend, backend, "TCP", 8080))
    assert not world.allowed(Flow(frontend, backend, "TCP", 8081))
    assert not world.allowed(Flow(other, backend, "TCP", 8080))
    assert world.allowed(Flow(backend, database, "TCP", 5432))
    assert not world.allowed(Flow(backend, database, "TCP", 5433))
    assert world.allowed(Flow(backend, "192.0.2.53", "UDP", 53))
    assert not world.allowed(Flow(backend, "192.0.2.53", "TCP", 443))


def test_a_not_selector_alone_keeps_to_the_policys_namespace_and_not_in_a_global_one():
    """Calico's getEndpointSelector: in a namespaced policy any selector of a rule, a notSelector
    alone included, scopes the side to the policy's namespace; a global policy's does not."""
    rule = {"action": "Allow", "source": {"notSelector": "pod == 'b'"}}
    namespaced = World(percale=[percale({"selector": "pod == 'a'", "ingress": [rule]})])
    assert allowed_into(namespaced, "x/a") == {"x/c"}
    assert not reach(namespaced, EXTERNAL, "x/a")
    everywhere = World(percale=[percale({"selector": "pod == 'a'", "ingress": [rule]}, namespace=None)])
    assert allowed_into(everywhere, "x/a") == {p for p in EVERYONE if not p.endswith("/b")} - {"x/a"}
    assert reach(everywhere, EXTERNAL, "x/a")


def test_the_compiler_orders_equal_orders_by_name_as_the_reference_does():
    from percale.policy.compile import PolicyEndpoint, compile_ruleset, policy_chain
    from percale.policy.convert import convert

    labels = {"kubernetes.io/metadata.name": "x"}
    a = PolicyEndpoint("x/a", "x", "pcl00000000000a", ("10.244.0.10",), {"pod": "a"}, labels)
    deny = percale({"order": 1000, "selector": "pod == 'a'", "ingress": [{"action": "Deny"}]},
                   "zz-deny", namespace=None)
    allow_all = convert(k8s({"podSelector": {}, "ingress": [{}]}, "allow-all"))
    ruleset = compile_ruleset([deny, allow_all], {}, [a])
    jumps = [rule.split("jump ")[1] for rule in ruleset.chains["tw-pcl00000000000a"]
             if "jump pi-" in rule]
    assert jumps == [policy_chain("Ingress", "NetworkPolicy/x/knp.default.allow-all"),
                     policy_chain("Ingress", "GlobalNetworkPolicy/zz-deny")]


def test_a_pod_never_sends_vxlan_or_ip_in_ip():
    """Whatever its policy says (felix's cali-fw-* drops them first): a node would unwrap them
    and forward what is inside with no egress policy of its own. Sent to a pod, they are just
    traffic."""
    world = World()
    assert not reach(world, "x/a", EXTERNAL, VXLAN_PORT, "UDP")
    assert not reach(world, "x/a", "y/b", VXLAN_PORT, "UDP")
    assert not reach(world, "x/a", EXTERNAL, None, 4)
    assert reach(world, "x/a", EXTERNAL, VXLAN_PORT, "TCP")
    assert reach(world, EXTERNAL, "x/a", VXLAN_PORT, "UDP")


def test_calicos_endpoint_labels_select_pods_and_a_pod_cannot_claim_them():
    """projectcalico.org/namespace, /orchestrator and /serviceaccount (dataplane.md §A2), after
    the pod's own labels: a Deny written with them denies."""
    liar = Endpoint("liar", "x", "10.244.9.1", {"projectcalico.org/namespace": "y",
                                                "projectcalico.org/serviceaccount": "scanner"})
    scanner = Endpoint("scan", "z", "10.244.9.2", service_account="scanner")
    deny = percale({"order": 1, "selector": "projectcalico.org/namespace == 'y'", "ingress": [
        {"action": "Deny", "source": {"selector": "projectcalico.org/orchestrator == 'k8s' && "
                                                  "pod == 'a'"}},
        {"action": "Deny",
         "source": {"selector": "projectcalico.org/serviceaccount == 'scanner'"}},
        {"action": "Allow"}]}, namespace=None)
    world = World(percale=[deny])
    assert allowed_into(world, "y/b") == EVERYONE - {"y/b", "x/a", "y/a", "z/a"}
    assert allowed_into(world, "x/b") == EVERYONE - {"x/b"}  # not selected
    assert not world.allowed(Flow(scanner, PODS["y/b"], "TCP", 80))
    assert world.allowed(Flow(liar, PODS["y/b"], "TCP", 80))  # its claims are not its labels
    assert world.allowed(Flow(PODS["y/a"], liar, "TCP", 80))  # nor is it selected as y's


def test_a_namespace_selector_sees_calicos_namespace_name():
    """A namespace's labels carry projectcalico.org/name (Calico's pcns.projectcalico.org/name),
    after its own: one labelled with another namespace's name is not that namespace."""
    impostor = Endpoint("a", "w", "10.244.9.3", {"pod": "a"},
                        {"kubernetes.io/metadata.name": "w", "projectcalico.org/name": "y"})
    world = World(percale=[percale({"selector": "pod == 'a'", "ingress": [
        {"action": "Allow", "source": {"namespaceSelector": "projectcalico.org/name == 'y'"}}]})])
    assert allowed_into(world, "x/a") == {"y/a", "y/b", "y/c"}
    assert not world.allowed(Flow(impostor, PODS["x/a"], "TCP", 80))
