"""Kubernetes NetworkPolicy -> percale NetworkPolicy, as Calico converts one (dataplane.md §A3).

Pure. The result is named `knp.default.<name>` in the policy's namespace, has order 1000, the pod
selector as its selector, and policyTypes (with Kubernetes' default) as its types. Each rule
becomes one Allow rule per protocol and peer: the peer on the far side (source for ingress,
destination for egress), the ports of that protocol on the pod's side (destination for both
directions); a rule with no ports allows any protocol; ipBlock becomes nets and notNets.

A peer without namespaceSelector means the policy's own namespace; percale's model says the same
by a rule selector without namespaceSelector in a namespaced policy, so nothing is added here.

A policy percale cannot hold raises InvalidResource naming the Kubernetes field, as parsing does:
`percalectl apply` reports it with the other bad documents, and the Kubernetes datastore turns it
into a DatastoreError, as it does any object it cannot read.
"""

from __future__ import annotations

from pydantic import ValidationError

from percale.api.k8s_policy import (
    KIND,
    MAX_NAME_LENGTH,
    KubernetesNetworkPolicy,
    LabelSelector,
    NetworkPolicyPeer,
    NetworkPolicyPort,
)
from percale.api.meta import InvalidResource, ObjectMeta, Problem, validation_problems
from percale.api.policy import EntityRule, NetworkPolicy, PolicySpec, Rule

KUBERNETES_POLICY_PREFIX = "knp.default."
# knp.default.<name> is itself a name of at most 253 characters, so the apiserver accepts names
# (242 to 253 characters) that percale cannot store.
MAX_CONVERTIBLE_NAME_LENGTH = MAX_NAME_LENGTH - len(KUBERNETES_POLICY_PREFIX)
KUBERNETES_POLICY_ORDER = 1000.0
# On the converted policy: where it came from, for `percalectl get networkpolicies`.
SOURCE_ANNOTATION = "percale.io/source"
SOURCE_KUBERNETES = "networking.k8s.io/v1"


def converted_name(name: str) -> str:
    return f"{KUBERNETES_POLICY_PREFIX}{name}"


def selector_text(selector: LabelSelector) -> str:
    """A label selector in percale's selector language; empty -> all()."""
    terms = [f'{key} == "{value}"' for key, value in sorted(selector.match_labels.items())]
    for requirement in selector.match_expressions:
        values = ", ".join(f'"{v}"' for v in sorted(set(requirement.values)))
        terms.append({
            "In": f"{requirement.key} in {{{values}}}",
            "NotIn": f"{requirement.key} not in {{{values}}}",
            "Exists": f"has({requirement.key})",
            "DoesNotExist": f"!has({requirement.key})",
        }[requirement.operator])
    return " && ".join(terms) or "all()"


def _peer_entity(peer: NetworkPolicyPeer | None) -> EntityRule:
    if peer is None:
        return EntityRule()
    if peer.ip_block is not None:
        return EntityRule(nets=[peer.ip_block.cidr], not_nets=list(peer.ip_block.except_))
    return EntityRule(
        selector=selector_text(peer.pod_selector) if peer.pod_selector is not None else None,
        namespace_selector=(selector_text(peer.namespace_selector)
                            if peer.namespace_selector is not None else None))


def _ports_by_protocol(ports: list[NetworkPolicyPort]) -> dict[str | None, list[int | str]]:
    """protocol -> its ports, in first-seen order; [] means every port of that protocol; the
    single key None (no ports at all) means every protocol."""
    if not ports:
        return {None: []}
    grouped: dict[str | None, list[int | str] | None] = {}
    for port in ports:
        listed = grouped.setdefault(port.protocol, [])
        if port.port is None or listed is None:
            grouped[port.protocol] = None  # a protocol-only entry: any port of it
            continue
        value = f"{port.port}:{port.end_port}" if port.end_port is not None else port.port
        if value not in listed:
            listed.append(value)
    return {protocol: listed or [] for protocol, listed in grouped.items()}


def _rules(peers: list[NetworkPolicyPeer], ports: list[NetworkPolicyPort],
           ingress: bool) -> list[Rule]:
    rules = []
    for protocol, numbers in _ports_by_protocol(ports).items():
        for peer in peers or [None]:
            far = _peer_entity(peer)
            if ingress:
                rule = Rule(action="Allow", protocol=protocol, source=far,
                            destination=EntityRule(ports=numbers))
            else:
                rule = Rule(action="Allow", protocol=protocol,
                            destination=far.model_copy(update={"ports": numbers}))
            rules.append(rule)
    return rules


def convert(policy: KubernetesNetworkPolicy) -> NetworkPolicy:
    """percale's NetworkPolicy for `policy`; InvalidResource when percale cannot hold it."""
    name = policy.metadata.name
    if len(name) > MAX_CONVERTIBLE_NAME_LENGTH:
        raise InvalidResource(KIND, name, [Problem(
            "metadata.name", f"percale stores this policy as {converted_name('<name>')}, so the "
            f"name has at most {MAX_CONVERTIBLE_NAME_LENGTH} characters; this one has "
            f"{len(name)}")])
    spec = policy.spec
    try:
        meta = ObjectMeta(name=converted_name(name),
                          namespace=policy.metadata.namespace,
                          labels=dict(policy.metadata.labels),
                          annotations={**policy.metadata.annotations,
                                       SOURCE_ANNOTATION: SOURCE_KUBERNETES})
        return NetworkPolicy(metadata=meta, spec=PolicySpec(
            order=KUBERNETES_POLICY_ORDER,
            selector=selector_text(spec.pod_selector),
            types=list(spec.effective_types),
            ingress=[r for rule in spec.ingress for r in _rules(rule.from_, rule.ports, True)],
            egress=[r for rule in spec.egress for r in _rules(rule.to, rule.ports, False)],
        ))
    except ValidationError as err:
        # The Kubernetes model checks what the conversion needs, so this is a check it lacks; the
        # field named is then one of the converted policy's, and the message says so.
        raise InvalidResource(KIND, name, [
            Problem("", f"cannot be converted to percale's NetworkPolicy "
                        f"{converted_name(name)!r}: {problem}")
            for problem in validation_problems(err)]) from None
