"""The reference evaluator: is one flow allowed? Written from the semantics (dataplane.md §A), on
its own, to compute the expected matrix the dataplane is checked against.

It shares nothing with the compiler (percale.policy.compile) or the converter
(percale.policy.convert) but the resource models and the selector language: Kubernetes
NetworkPolicies are judged by Kubernetes' rules directly, percale's policies by Calico's, and the
two meet as Calico makes them meet (a Kubernetes policy is an allow-only policy of order 1000).

A flow goes from a source to a destination: each is an Endpoint (a pod) or a bare address (a host
outside the pools). It is allowed when the source's egress and the destination's ingress both
allow it; an address has no policy of its own. A pod never sends VXLAN or IP-in-IP, whatever its
policy says (felix drops them before any policy: the node would unwrap them and forward what is
inside unchecked). Per endpoint and direction: the policies that select it and govern that
direction, in order; the first Allow allows, the first Deny denies, a Pass goes on to the
namespace's profile, Log goes on; when policies applied and none decided, the flow is denied.
With no policy, the profile decides (by default it allows).

Selectors, Kubernetes' included (Calico converts them to its own), see a pod's labels with
Calico's after them (projectcalico.org/namespace, /orchestrator, /serviceaccount) and its
namespace's labels with projectcalico.org/name (dataplane.md §A2).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from percale.api import selector
from percale.api.k8s_policy import KubernetesNetworkPolicy, LabelSelector, NetworkPolicyPeer
from percale.api.policy import (
    EntityRule,
    GlobalNetworkPolicy,
    NetworkPolicy,
    Profile,
    Rule,
    port_range,
    protocol_number,
)


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: str
    port: int


# Calico's labels and the encapsulations a pod may not send, spelled out here and not taken
# from the compiler, so that a mistake in either shows as a difference.
CALICO_NAMESPACE = "projectcalico.org/namespace"
CALICO_ORCHESTRATOR = "projectcalico.org/orchestrator"
CALICO_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
CALICO_NAMESPACE_NAME = "projectcalico.org/name"
VXLAN_PORT = 4789
IPIP_PROTOCOL = 4


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)  # the pod's own
    namespace_labels: Mapping[str, str] = field(default_factory=dict)  # the namespace's own
    ports: tuple[NamedPort, ...] = ()
    service_account: str | None = None

    @property
    def selector_labels(self) -> dict[str, str]:
        """The pod's labels, then Calico's: the pod cannot override them, nor claim a
        service account that is not known to be its own."""
        own = {k: v for k, v in self.labels.items() if k != CALICO_SERVICE_ACCOUNT}
        calico = {CALICO_NAMESPACE: self.namespace, CALICO_ORCHESTRATOR: "k8s"}
        if self.service_account:
            calico[CALICO_SERVICE_ACCOUNT] = self.service_account
        return {**own, **calico}

    @property
    def selector_namespace_labels(self) -> dict[str, str]:
        return {**self.namespace_labels, CALICO_NAMESPACE_NAME: self.namespace}


Party = Endpoint | str  # a pod, or the address of something that is not one


@dataclass(frozen=True)
class Flow:
    source: Party
    destination: Party
    protocol: str | int  # TCP, UDP, SCTP, ICMP, or a number (4: IP-in-IP)
    port: int | None = None  # the destination port (none for ICMP)
    source_port: int | None = None


def _address(party: Party) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(party.address if isinstance(party, Endpoint) else party)


def _named_port(party: Party, name: str, protocol: str) -> int | None:
    if not isinstance(party, Endpoint):
        return None
    return next((p.port for p in party.ports if p.name == name and p.protocol == protocol), None)


# -- Kubernetes NetworkPolicy, by Kubernetes' rules --------------------------------------------

def _label_selector_matches(chosen: LabelSelector, labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in chosen.match_labels.items()):
        return False
    for requirement in chosen.match_expressions:
        present = requirement.key in labels
        if requirement.operator == "In" and not (present and labels[requirement.key] in requirement.values):
            return False
        if requirement.operator == "NotIn" and present and labels[requirement.key] in requirement.values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


def _k8s_peer_matches(peer: NetworkPolicyPeer, party: Party, namespace: str) -> bool:
    if peer.ip_block is not None:
        address = _address(party)
        inside = address in ipaddress.ip_network(peer.ip_block.cidr)
        return inside and not any(address in ipaddress.ip_network(e) for e in peer.ip_block.except_)
    if not isinstance(party, Endpoint):
        return False
    if peer.namespace_selector is not None:
        if not _label_selector_matches(peer.namespace_selector, party.selector_namespace_labels):
            return False
    elif party.namespace != namespace:
        return False
    return (peer.pod_selector is None
            or _label_selector_matches(peer.pod_selector, party.selector_labels))


def _k8s_port_matches(ports, flow: Flow, owner: Party) -> bool:
    if not ports:
        return True
    for port in ports:
        if port.protocol != flow.protocol:
            continue
        if port.port is None:
            return True
        if isinstance(port.port, str):
            if flow.port is not None and _named_port(owner, port.port, port.protocol) == flow.port:
                return True
            continue
        last = port.end_port if port.end_port is not None else port.port
        if flow.port is not None and port.port <= flow.port <= last:
            return True
    return False


@dataclass(frozen=True)
class _Kubernetes:
    policy: KubernetesNetworkPolicy

    @property
    def sort_key(self) -> tuple:
        meta = self.policy.metadata
        return (1000.0, "knp.default." + meta.name, meta.namespace or "")

    def governs(self, endpoint: Endpoint, direction: str) -> bool:
        return (endpoint.namespace == self.policy.metadata.namespace
                and direction in self.policy.spec.effective_types
                and _label_selector_matches(self.policy.spec.pod_selector,
                                            endpoint.selector_labels))

    def decide(self, direction: str, flow: Flow) -> str | None:
        namespace = self.policy.metadata.namespace or "default"
        if direction == "Ingress":
            for rule in self.policy.spec.ingress:
                if ((not rule.from_ or any(_k8s_peer_matches(p, flow.source, namespace) for p in rule.from_))
                        and _k8s_port_matches(rule.ports, flow, flow.destination)):
                    return "Allow"
        else:
            for rule in self.policy.spec.egress:
                if ((not rule.to or any(_k8s_peer_matches(p, flow.destination, namespace) for p in rule.to))
                        and _k8s_port_matches(rule.ports, flow, flow.destination)):
                    return "Allow"
        return None


# -- percale's policies, by Calico's rules ----------------------------------------------------

def _in_nets(party: Party, nets: Iterable[str]) -> bool:
    address = _address(party)
    return any(address.version == ipaddress.ip_network(n).version and address in ipaddress.ip_network(n)
               for n in nets)


def _port_in(port: int | None, ports, flow: Flow, owner: Party) -> bool:
    for candidate in ports:
        span = port_range(candidate)
        if span is None:
            if port is not None and _named_port(owner, candidate, flow.protocol) == port:
                return True
        elif port is not None and span[0] <= port <= span[1]:
            return True
    return False


def _entity_matches(entity: EntityRule, party: Party, flow: Flow, namespace: str | None,
                    port: int | None) -> bool:
    """`namespace`: the policy's own for a namespaced policy, None for a global one; `port`:
    the party's port (source port for the source, destination port for the destination)."""
    if entity.nets and not _in_nets(party, entity.nets):
        return False
    if entity.not_nets and _in_nets(party, entity.not_nets):
        return False
    # In a namespaced policy a notSelector alone also limits the side to the policy's namespace.
    if (entity.selector is not None or entity.namespace_selector is not None
            or (namespace is not None and entity.not_selector is not None)):
        if not isinstance(party, Endpoint):
            return False
        if entity.namespace_selector is not None:
            if not selector.matches(entity.namespace_selector, party.selector_namespace_labels):
                return False
        elif namespace is not None and party.namespace != namespace:
            return False
        if (entity.selector is not None
                and not selector.matches(entity.selector, party.selector_labels)):
            return False
    if (entity.not_selector is not None and isinstance(party, Endpoint)
            and selector.matches(entity.not_selector, party.selector_labels)):
        return False
    if entity.ports and not _port_in(port, entity.ports, flow, party):
        return False
    if entity.not_ports and _port_in(port, entity.not_ports, flow, party):
        return False
    return True


def _rule_matches(rule: Rule, flow: Flow, namespace: str | None) -> bool:
    # ipVersion, and a list of nets or notNets with nothing of the flow's family, as felix
    # reads them (Rule.families).
    if _address(flow.destination).version not in rule.families:
        return False
    number = protocol_number(flow.protocol)
    if rule.protocol is not None and protocol_number(rule.protocol) != number:
        return False
    if rule.not_protocol is not None and protocol_number(rule.not_protocol) == number:
        return False
    return (_entity_matches(rule.source, flow.source, flow, namespace, flow.source_port)
            and _entity_matches(rule.destination, flow.destination, flow, namespace, flow.port))


def _first_action(rules: Iterable[Rule], flow: Flow, namespace: str | None) -> str | None:
    for rule in rules:
        if _rule_matches(rule, flow, namespace) and rule.action != "Log":
            return rule.action
    return None


@dataclass(frozen=True)
class _Percale:
    policy: NetworkPolicy | GlobalNetworkPolicy

    @property
    def namespace(self) -> str | None:
        return self.policy.metadata.namespace if isinstance(self.policy, NetworkPolicy) else None

    @property
    def sort_key(self) -> tuple:
        order = self.policy.spec.order
        return (math.inf if order is None else order, self.policy.metadata.name,
                self.namespace or "")

    def governs(self, endpoint: Endpoint, direction: str) -> bool:
        spec = self.policy.spec
        if direction not in spec.effective_types:
            return False
        if self.namespace is not None and endpoint.namespace != self.namespace:
            return False
        namespace_selector = getattr(spec, "namespace_selector", None)
        if namespace_selector is not None and not selector.matches(
                namespace_selector, endpoint.selector_namespace_labels):
            return False
        return selector.matches(spec.selector, endpoint.selector_labels)

    def decide(self, direction: str, flow: Flow) -> str | None:
        rules = self.policy.spec.ingress if direction == "Ingress" else self.policy.spec.egress
        return _first_action(rules, flow, self.namespace)


# -- the verdict ------------------------------------------------------------------------------

def _encapsulated(flow: Flow) -> bool:
    number = protocol_number(flow.protocol)
    udp = protocol_number("UDP")
    return number == IPIP_PROTOCOL or (number == udp and flow.port == VXLAN_PORT)


class World:
    """The policies and profiles in force."""

    def __init__(self, kubernetes: Iterable[KubernetesNetworkPolicy] = (),
                 percale: Iterable[NetworkPolicy | GlobalNetworkPolicy] = (),
                 profiles: Mapping[str, Profile] | None = None):
        self.policies = sorted([*map(_Kubernetes, kubernetes), *map(_Percale, percale)],
                               key=lambda p: p.sort_key)
        self.profiles = dict(profiles or {})  # namespace -> its profile; absent: allow all

    def direction_allows(self, endpoint: Endpoint, direction: str, flow: Flow) -> bool:
        applicable = [p for p in self.policies if p.governs(endpoint, direction)]
        for policy in applicable:
            action = policy.decide(direction, flow)
            if action == "Allow":
                return True
            if action == "Deny":
                return False
            if action == "Pass":
                break
        else:
            if applicable:
                return False
        profile = self.profiles.get(endpoint.namespace)
        if profile is None:
            return True
        rules = profile.spec.ingress if direction == "Ingress" else profile.spec.egress
        return _first_action(rules, flow, None) == "Allow"

    def allowed(self, flow: Flow) -> bool:
        if isinstance(flow.source, Endpoint) and _encapsulated(flow):
            return False
        if isinstance(flow.source, Endpoint) and not self.direction_allows(flow.source, "Egress", flow):
            return False
        if isinstance(flow.destination, Endpoint) and not self.direction_allows(flow.destination, "Ingress", flow):
            return False
        return True
