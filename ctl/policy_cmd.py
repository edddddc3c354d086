"""`percalectl policy show POD`: what policy applies to a pod, in the order it applies.

For each of the pod's endpoints: its labels and its namespace's; then per direction the policies
that select it, sorted as the dataplane runs them (order, then namespace and name), each with its
rules; and what happens when none decides (drop when a policy applied, else the namespace's
profile). The same selection and order the compiler uses (percale.policy.compile), read from the
datastore.
"""

from __future__ import annotations

from typing import Annotated

import typer

from percale.api import Profile, WorkloadEndpoint
from percale.api.meta import namespace_problem
from percale.api.policy import EntityRule, Rule, namespace_labels
from percale.ctl.context import fail, with_datastore
from percale.datastore import Datastore, Key, NotFound
from percale.policy.compile import PolicyEndpoint, default_profile, policy_id, selects, sort_key

policy_app = typer.Typer(help="What network policy applies where.", no_args_is_help=True)


def _entity(entity: EntityRule) -> str:
    parts = []
    for field, title in (("selector", "selector"), ("not_selector", "notSelector"),
                         ("namespace_selector", "namespaceSelector")):
        if getattr(entity, field) is not None:
            parts.append(f"{title} {getattr(entity, field)}")
    for field, title in (("nets", "nets"), ("not_nets", "notNets"), ("ports", "ports"),
                         ("not_ports", "notPorts")):
        if getattr(entity, field):
            parts.append(f"{title} {','.join(map(str, getattr(entity, field)))}")
    return " ".join(parts)


def describe_rule(rule: Rule) -> str:
    words = [rule.action]
    if rule.ip_version is not None:
        words.append(f"IPv{rule.ip_version}")
    if rule.protocol is not None:
        words.append(str(rule.protocol))
    if rule.not_protocol is not None:
        words.append(f"not {rule.not_protocol}")
    if rule.icmp is not None:
        words.append(f"icmp type {rule.icmp.type}" + (f" code {rule.icmp.code}" if rule.icmp.code is not None else ""))
    if (source := _entity(rule.source)):
        words.append(f"from {source}")
    if (destination := _entity(rule.destination)):
        words.append(f"to {destination}")
    if len(words) == 1 or (len(words) == 2 and rule.protocol is not None):
        words.append("(any peer)")
    return " ".join(words)


def render(endpoint: WorkloadEndpoint, policies: list, profile: Profile,
           namespace_labels: dict[str, str]) -> str:
    namespace = endpoint.metadata.namespace or "default"
    view = PolicyEndpoint(f"{namespace}/{endpoint.spec.workload_name}", namespace,
                          endpoint.spec.interface_name, (), dict(endpoint.metadata.labels),
                          namespace_labels, orchestrator=endpoint.spec.orchestrator,
                          service_account=endpoint.spec.service_account_name)
    labels = ", ".join(f"{k}={v}" for k, v in sorted(endpoint.metadata.labels.items())) or "(none)"
    ns_labels = ", ".join(f"{k}={v}" for k, v in sorted(namespace_labels.items()))
    lines = [f"Workload endpoint {namespace}/{endpoint.metadata.name}",
             f"  node {endpoint.spec.node}, interface {endpoint.spec.interface_name or '-'}, "
             f"addresses {', '.join(endpoint.spec.ip_networks) or '-'}",
             f"  labels: {labels}", f"  namespace labels: {ns_labels}"]
    for direction in ("Ingress", "Egress"):
        applicable = [p for p in sorted(policies, key=sort_key)
                      if direction in p.spec.effective_types and selects(p, view)]
        lines.append(f"{direction}:")
        for number, policy in enumerate(applicable, 1):
            order = "unset" if policy.spec.order is None else f"{policy.spec.order:g}"
            lines.append(f"  {number}. {policy.kind} {policy_id(policy)} (order {order})")
            rules = policy.spec.ingress if direction == "Ingress" else policy.spec.egress
            lines += [f"       rule {i}: {describe_rule(rule)}" for i, rule in enumerate(rules)]
            if not rules:
                lines.append("       no rules")
        profile_rules = profile.spec.ingress if direction == "Ingress" else profile.spec.egress
        profile_says = "; ".join(describe_rule(r) for r in profile_rules) or "no rules: drop"
        if applicable:
            lines.append("  then: drop (a policy applied and none allowed it; Pass goes to the "
                         f"profile {profile.metadata.name}: {profile_says})")
        else:
            lines.append(f"  no policy selects it: profile {profile.metadata.name}: {profile_says}")
    return "\n".join(lines)


@policy_app.command("show")
def show(pod: Annotated[str, typer.Argument(help="The pod's name")],
         namespace: Annotated[str, typer.Option("--namespace", "-n", help="Its namespace")] = "default") -> None:
    """The policies and rules that apply to a pod, in the order the dataplane applies them."""
    if problem := namespace_problem(namespace):
        raise fail(f"--namespace: {problem}")

    async def read(store: Datastore):
        endpoints = [kv.value for kv in (await store.list("WorkloadEndpoint")).items
                     if kv.value.metadata.namespace == namespace and kv.value.spec.workload_name == pod]
        policies = [kv.value for kind in ("NetworkPolicy", "GlobalNetworkPolicy")
                    for kv in (await store.list(kind)).items]
        try:
            profile = (await store.get(Key("Profile", f"kns.{namespace}"))).value
        except NotFound:
            profile = default_profile(namespace)
        return endpoints, policies, profile

    endpoints, policies, profile = with_datastore(read)
    if not endpoints:
        raise fail(f"no workload endpoint for pod {pod!r} in namespace {namespace!r}")
    labels = namespace_labels(namespace, profile)
    typer.echo("\n\n".join(render(e, policies, profile, labels) for e in endpoints))



