"""The policy compiler: the policies and profiles in force and the endpoints of the cluster -> the
nftables ruleset a node wants (dataplane.md §B, in felix's shape). Pure: no kernel, no nft; the
writer (percale.policy.nft) applies what this returns.

One table, `inet percale`:

  prerouting          base chain (raw priority, before conntrack): a packet from a pod interface
                      whose source address does not route back out of that interface is dropped
                      (anti-spoofing, felix's raw cali-PREROUTING)
  forward, input      base chains (filter priority): a packet from a pod interface (pcl*) goes
                      through its endpoint's egress chain, one to a pod interface through the
                      endpoint's ingress chain, pod-to-pod on one node through both
  from-endpoint       verdict maps: interface -> `goto` its endpoint chain; an interface named
  to-endpoint         pcl* that is in no map is dropped (fail closed: a pod whose chains are
                      not programmed yet gets nothing through)
  fw-<if>, tw-<if>    an endpoint's egress (from workload) and ingress (to workload) chain:
                      replies of allowed connections accepted, invalid dropped, (fw- only) VXLAN
                      and IP-in-IP the pod sends dropped, then each policy that selects the
                      endpoint in order, then its namespace profile
  po-<id>, pi-<id>    a policy's egress and ingress rules, shared by every endpoint it selects
  pro-<id>, pri-<id>  a profile's rules
  s4-…, s6-…          addresses of the endpoints a rule's selector matches
  n4-…, n6-…          address . protocol . port of a rule's named ports, per endpoint
  vxlan-input         jumped to from input for UDP to the VXLAN port: per family that has VXLAN
                      in use, a source outside all-vxlan-net4 / all-vxlan-net6 (the nodes'
                      underlay addresses) is dropped, as felix's cali-INPUT drops it

A rule that allows sets the ACCEPT mark and returns; Pass sets PASS and returns; Deny drops; Log
logs and goes on. After each policy the endpoint chain returns on ACCEPT, and once PASS is set it
skips the policies left (each jump is guarded by PASS being clear); when policies applied and
none decided, it drops; after a PASS, or with no policy, the profile decides. The profile is
inline in the endpoint chain, not a chain of its own: nft reads every chain of the table before
each transaction, so each chain per pod costs every later ADD.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from percale.api import selector
from percale.api.policy import (
    EntityRule,
    GlobalNetworkPolicy,
    NetworkPolicy,
    Profile,
    Rule,
    port_range,
    protocol_number,
)

TABLE = "percale"
FAMILY = "inet"
INTERFACE_PREFIX = "pcl"
ACCEPT_MARK, PASS_MARK = 0x10000, 0x20000
LOG_PREFIX = "percale-policy "
# nft refuses a comment longer than this, and with it the whole transaction: one policy with a
# long name (a valid name has up to 253 characters) stopped every policy change on the node.
COMMENT_LIMIT = 128
# What follows a name in a comment (" ingress 12 Allow", ": the profile did not allow it") fits in
# this much, so a name too long is cut to the same length in every comment it is in.
_COMMENT_AFTER_NAME = 32
PROTOCOL_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "ipv6-icmp", 136: "udplite"}
# What a pod may not send whatever its policy says (felix's cali-fw-*, dataplane.md §B4 step 7):
# a node unwraps VXLAN (this port: dataplane/vxlan.py's PORT, which policy may not import) and
# IP-in-IP (protocol 4, IPv4 in IPv4 or in IPv6) and forwards the inner packet, whose egress
# policy then never ran: a pod allowed the internet reached every pod through a node's address.
VXLAN_PORT = 4789
IPIP_PROTOCOL = 4
# VXLAN to the node itself is taken only from nodes (felix's all-vxlan-net, dataplane.md §B3):
# the devices unwrap whatever reaches the port, so any host that could reach a node's address
# sent a frame with a pod's source inside, and the pod behind it took it as from that pod.
VXLAN_INPUT_CHAIN = "vxlan-input"
VXLAN_SOURCE_SETS = {4: "all-vxlan-net4", 6: "all-vxlan-net6"}
# Calico's labels on every workload endpoint (libcalico-go's LabelNamespace, LabelOrchestrator,
# LabelServiceAccount; dataplane.md §A2), for selectors written for Calico. Without them such a
# selector matched nothing, and a Deny written with one denied nothing.
NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: str  # TCP, UDP, SCTP
    port: int


@dataclass(frozen=True)
class PolicyEndpoint:
    """A pod as policy sees it."""

    key: str  # namespace/name, for messages
    namespace: str
    interface: str | None  # the host-side veth; None for endpoints of other nodes
    addresses: tuple[str, ...]  # without prefix length
    labels: Mapping[str, str] = field(default_factory=dict)  # the pod's own
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[NamedPort, ...] = ()
    orchestrator: str = "k8s"
    service_account: str | None = None  # None: not known

    @functools.cached_property
    def selector_labels(self) -> Mapping[str, str]:
        """What selectors match: the pod's labels, then Calico's. Calico's come last, as
        Calico writes them, so a pod cannot label itself into another namespace's policies;
        a service account label the pod gives itself is dropped when its real one is not
        known, or a pod would pass for any service account an Allow names."""
        labels = {key: value for key, value in self.labels.items()
                  if key != SERVICE_ACCOUNT_LABEL}
        labels[NAMESPACE_LABEL] = self.namespace
        labels[ORCHESTRATOR_LABEL] = self.orchestrator
        if self.service_account and len(self.service_account) < 63:
            # A label value holds 63 characters at most: Calico leaves a longer name out too.
            labels[SERVICE_ACCOUNT_LABEL] = self.service_account
        return labels

    @functools.cached_property
    def likeness(self) -> tuple:
        """What policy can tell apart: namespace, labels, namespace labels (a Deployment's
        replicas are alike). Kept on the endpoint, which is built once per revision."""
        return (self.namespace, frozenset(self.selector_labels.items()),
                frozenset(self.namespace_labels.items()))


@dataclass(frozen=True)
class NftSet:
    type: str
    interval: bool
    elements: tuple[str, ...]

    def declaration(self, name: str) -> str:
        flags = " flags interval;" if self.interval else ""
        body = f" elements = {{ {', '.join(self.elements)} }};" if self.elements else ""
        return f"set {name} {{ type {self.type};{flags}{body} }}"


@dataclass
class Ruleset:
    """What the table should hold: sets, chains (name -> rules), and the dispatch maps."""

    sets: dict[str, NftSet] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)
    from_endpoint: dict[str, str] = field(default_factory=dict)  # interface -> chain
    to_endpoint: dict[str, str] = field(default_factory=dict)
    # A policy's or profile's key cut to fit nft's comment limit -> the whole key (metrics).
    shortened: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def size(self) -> int:
        """Rules, set elements and endpoints: what nft's copy of the table grows with. Counted
        once, when the ruleset is complete (the writer asks after compilation)."""
        return (sum(len(rules) for rules in self.chains.values())
                + sum(len(declared.elements) for declared in self.sets.values())
                + len(self.from_endpoint))


BASE_CHAINS = {
    # Anti-spoofing, felix's raw cali-PREROUTING (dataplane.md §B3): a packet from a pod whose
    # source does not route back out of the interface it came in on is dropped, before conntrack
    # and before any policy trusts its source. rp_filter does it for IPv4 only, and only where
    # the node sets it (percale does not; often it is 0); IPv6 has nothing of the kind: a pod
    # sending with another pod's address passed selector-based ingress policy as that pod.
    # Pods' /32 and /128 routes point at their pcl veth (dataplane/pod_network.py), the veth's
    # fe80::/64 route takes their link-local sources, and a CNI ADD answers only once the routes
    # are in: nothing the pod runs sends before them.
    "prerouting": ["type filter hook prerouting priority raw; policy accept;",
                   # Duplicate address detection and MLD before the pod has an address: from ::
                   # to link-local scope. Recent kernels' fib lets these through by itself
                   # (nft_fib_v6_skip_icmpv6); older ones found no route to :: via the pod and
                   # dropped them, which would hide a duplicate address.
                   f'iifname "{INTERFACE_PREFIX}*" ip6 saddr :: ip6 daddr ff02::/16 '
                   "meta l4proto ipv6-icmp accept",
                   f'iifname "{INTERFACE_PREFIX}*" fib saddr . iif oif missing counter drop '
                   'comment "source address not routed to the pod that sent it"'],
    "forward": ["type filter hook forward priority filter; policy accept;",
                f'iifname "{INTERFACE_PREFIX}*" jump from-endpoint-dispatch',
                f'oifname "{INTERFACE_PREFIX}*" jump to-endpoint-dispatch'],
    "input": ["type filter hook input priority filter; policy accept;",
              # Neighbour discovery and MLD from a pod to its node, before the pod's egress
              # policy, as felix's cali-wl-to-host allows them: conntrack leaves them untracked,
              # so no established rule lets them by, and an egress policy cut the pod's IPv6 off
              # (its gateway unresolved, the node's solicitations unanswered).
              f'iifname "{INTERFACE_PREFIX}*" icmpv6 type {{ mld-listener-query, '
              "mld-listener-report, mld-listener-done, nd-router-solicit, nd-neighbor-solicit, "
              "nd-neighbor-advert } accept",
              f'iifname "{INTERFACE_PREFIX}*" jump from-endpoint-dispatch',
              # After the pod's egress chain, which drops a pod's own VXLAN under its name: what
              # reaches this is VXLAN from outside the pods (VXLAN_INPUT_CHAIN's comment).
              f"udp dport {VXLAN_PORT} jump {VXLAN_INPUT_CHAIN}"],
}
DISPATCH_CHAINS = {
    "from-endpoint-dispatch": ["iifname vmap @from-endpoint",
                               f'iifname "{INTERFACE_PREFIX}*" counter drop comment "no policy programmed yet"'],
    "to-endpoint-dispatch": ["oifname vmap @to-endpoint",
                             f'oifname "{INTERFACE_PREFIX}*" counter drop comment "no policy programmed yet"'],
}


def vxlan_guard(ruleset: Ruleset, sources: Mapping[int, Iterable[str]]) -> None:
    """The VXLAN_INPUT_CHAIN and its sets into `ruleset`: for each family in `sources` (those
    with a VXLAN pool), VXLAN from an address not in that family's set is dropped. The chain is
    there, empty, with no family: the input chain jumps to it whatever the pools say. The
    addresses live in a set, not in the rule, so a node that comes, goes or moves changes set
    elements and no chain."""
    rules = []
    for version, addresses in sorted(sources.items()):
        name = VXLAN_SOURCE_SETS[version]
        ruleset.sets[name] = NftSet("ipv4_addr" if version == 4 else "ipv6_addr", False,
                                    tuple(sorted(set(addresses))))
        rules.append(f'{"ip" if version == 4 else "ip6"} saddr != @{name} counter drop '
                     f'comment "IPv{version} VXLAN from a host that is not a node"')
    ruleset.chains[VXLAN_INPUT_CHAIN] = rules


def within_comment_limit(key: str, rest: str = "") -> str:
    """`key` followed by `rest` (at most _COMMENT_AFTER_NAME characters), as an nft comment:
    when too long, `key` is cut, the same way whatever follows it, and ends with `~` and a
    digest of the whole key, so two long names that share a beginning stay apart."""
    if len(key) + len(rest) <= COMMENT_LIMIT:
        return key + rest
    digest = "~" + _digest(key)
    return key[:COMMENT_LIMIT - _COMMENT_AFTER_NAME - len(digest)] + digest + rest


def _digest(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=65536)
def _name_digest(kind: str, name: str) -> str:
    """_digest of a policy's or profile's name: asked again on every compilation, for every
    endpoint, so it is remembered."""
    return _digest(kind, name)


def policy_id(policy: NetworkPolicy | GlobalNetworkPolicy) -> str:
    """`<namespace>/<name>` for a namespaced policy, `<name>` for a global one."""
    if isinstance(policy, NetworkPolicy):
        return f"{policy.metadata.namespace}/{policy.metadata.name}"
    return policy.metadata.name


def policy_chain(direction: str, policy_key: str) -> str:
    return ("pi-" if direction == "Ingress" else "po-") + _name_digest("policy", policy_key)


def sort_key(policy: NetworkPolicy | GlobalNetworkPolicy) -> tuple:
    """Order, then the name, then the namespace (a global policy's is ""): ties broken by name
    as felix breaks them (dataplane.md §A2), so a GlobalNetworkPolicy does not come before
    every namespaced one of the same order."""
    order = policy.spec.order
    namespace = policy.metadata.namespace if isinstance(policy, NetworkPolicy) else ""
    return (math.inf if order is None else order, policy.metadata.name, namespace or "")


def selects(policy: NetworkPolicy | GlobalNetworkPolicy, endpoint: PolicyEndpoint) -> bool:
    if isinstance(policy, NetworkPolicy):
        if policy.metadata.namespace != endpoint.namespace:
            return False
    elif policy.spec.namespace_selector is not None and not selector.matches(
            policy.spec.namespace_selector, endpoint.namespace_labels):
        return False
    return selector.matches(policy.spec.selector, endpoint.selector_labels)


def _families(addresses: Iterable[str]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {4: [], 6: []}
    for address in addresses:
        found[ipaddress.ip_network(address, strict=False).version].append(address)
    return found


@dataclass(frozen=True)
class _EndpointChain:
    """One direction of one endpoint as compiled: its chain, and the policy and profile chains
    it jumps to."""

    direction: str
    chain: str
    rules: list[str]
    policies: tuple
    profile: Profile

    @functools.cached_property
    def jumps(self) -> tuple:
        """What it jumps to, by identity: endpoint chains with the same jumps need the same
        policy and profile chains."""
        return (self.direction, tuple(map(id, self.policies)), id(self.profile))


class _Compiler:
    """One compilation's policy and profile chains and sets (into `ruleset`), and endpoint
    chains on request."""

    def __init__(self, endpoints: list[PolicyEndpoint]):
        self.endpoints = endpoints
        self.ruleset = Ruleset()
        self._groups: dict[tuple, list[PolicyEndpoint]] | None = None
        self._members: dict[tuple, dict[int, list[str]]] = {}
        self._applicable: dict[tuple, tuple] = {}

    @property
    def groups(self) -> dict[tuple, list[PolicyEndpoint]]:
        """Endpoints alike for policy, so selectors are evaluated per group, not per endpoint.
        Grouped when a selector first asks: with no selector in force, never."""
        if self._groups is None:
            self._groups = {}
            for endpoint in self.endpoints:
                self._groups.setdefault(endpoint.likeness, []).append(endpoint)
        return self._groups

    # -- sets ------------------------------------------------------------------------------

    def _set(self, prefix: str, version: int, kind: str, elements: Iterable[str], *key) -> str:
        name = f"{prefix}{version}-{_digest(*key)}"
        if name not in self.ruleset.sets:
            address = "ipv4_addr" if version == 4 else "ipv6_addr"
            nft_type = address if kind == "addresses" else f"{address} . inet_proto . inet_service"
            self.ruleset.sets[name] = NftSet(nft_type, False, tuple(sorted(set(elements))))
        return name

    def selector_set(self, entity: EntityRule, which: str, scope: str | None, version: int) -> str:
        """The addresses of the endpoints `which` (selector or notSelector) matches, scoped as
        the rule says: its namespaceSelector, else the policy's namespace (None: any)."""
        chosen = getattr(entity, which)
        key = (which, chosen, entity.namespace_selector if which == "selector" else None,
               scope if which == "selector" else None)
        if key not in self._members:
            members: dict[int, list[str]] = {4: [], 6: []}
            for group in self.groups.values():
                endpoint = group[0]
                if which == "selector":
                    if entity.namespace_selector is not None:
                        if not selector.matches(entity.namespace_selector, endpoint.namespace_labels):
                            continue
                    elif scope is not None and endpoint.namespace != scope:
                        continue
                if chosen is not None and not selector.matches(chosen, endpoint.selector_labels):
                    continue
                for member in group:
                    for address in member.addresses:
                        members[ipaddress.ip_address(address).version].append(address)
            self._members[key] = members
        return self._set("s", version, "addresses", self._members[key][version], *key)

    def named_port_set(self, names: list[str], protocol: str, version: int) -> str:
        members = [f"{address} . {protocol.lower()} . {port.port}"
                   for endpoint in self.endpoints for port in endpoint.ports
                   if port.name in names and port.protocol == protocol
                   for address in endpoint.addresses if ipaddress.ip_address(address).version == version]
        return self._set("n", version, "ports", members, tuple(sorted(names)), protocol)

    # -- rules -----------------------------------------------------------------------------

    def rule(self, rule: Rule, scope: str | None, comment: str) -> list[str]:
        """nft rules for one policy rule: one per address family it can match, and per kind
        of port (numbers and names OR together, which one nft rule cannot say)."""
        rendered = []
        for port_kind in self._port_kinds(rule):
            per_family = []
            for version in rule.families:  # ipVersion, ICMP's, nets and notNets as felix reads them
                matches = self._matches(rule, scope, version, port_kind)
                if matches is not None:  # None: its nets are all of the other family
                    per_family.append(matches)
            if len(per_family) == 2 and per_family[0][1:] == per_family[1][1:]:
                per_family = [per_family[0][1:]]  # nothing family-specific: one rule for both
            rendered += [" ".join([*matches, "counter", *self._verdict(rule), f'comment "{comment}"'])
                         for matches in per_family]
        return rendered

    @staticmethod
    def _port_kinds(rule: Rule) -> list[tuple[str, str]]:
        """Which (side, kind) of a rule's `ports` to render as separate nft rules: numbers and
        names of one side OR together. ("", "") when no side lists ports."""
        kinds = []
        for side, entity in (("source", rule.source), ("destination", rule.destination)):
            numeric = [p for p in entity.ports if port_range(p) is not None]
            named = [p for p in entity.ports if port_range(p) is None]
            side_kinds = [k for k, present in (("numeric", numeric), ("named", named)) if present]
            kinds.append([(side, k) for k in side_kinds] or [(side, "")])
        return [(a, b) for a in kinds[0] for b in kinds[1]]

    def _matches(self, rule: Rule, scope: str | None, version: int, port_kind) -> list[str] | None:
        ip = "ip" if version == 4 else "ip6"
        parts = [f"meta nfproto {'ipv4' if version == 4 else 'ipv6'}"]
        protocol = None
        if rule.protocol is not None:
            protocol = protocol_number(rule.protocol)
            parts.append(f"meta l4proto {PROTOCOL_NAMES.get(protocol, protocol)}")
        if rule.not_protocol is not None:
            number = protocol_number(rule.not_protocol)
            parts.append(f"meta l4proto != {PROTOCOL_NAMES.get(number, number)}")
        if rule.icmp is not None or rule.not_icmp is not None:
            icmp = "icmp" if version == 4 else "icmpv6"
            if rule.icmp is not None and rule.icmp.type is not None:
                parts.append(f"{icmp} type {rule.icmp.type}")
                if rule.icmp.code is not None:
                    parts.append(f"{icmp} code {rule.icmp.code}")
            if rule.not_icmp is not None and rule.not_icmp.type is not None:
                if rule.not_icmp.code is None:
                    parts.append(f"{icmp} type != {rule.not_icmp.type}")
                else:
                    # Not that type with that code, as iptables' ! --icmp-type T/C: two
                    # separate != matched neither the type nor, with any type, the code.
                    parts.append(f"{icmp} type . {icmp} code != "
                                 f"{{ {rule.not_icmp.type} . {rule.not_icmp.code} }}")
        for (side, entity), kind in zip((("source", rule.source), ("destination", rule.destination)),
                                        (k for _, k in port_kind)):
            address = f"{ip} {'saddr' if side == 'source' else 'daddr'}"
            port_field = "th sport" if side == "source" else "th dport"
            nets = _families(entity.nets)
            if entity.nets and not nets[version]:
                return None
            if nets[version]:
                parts.append(f"{address} {{ {', '.join(nets[version])} }}")
            not_nets = _families(entity.not_nets)[version]
            if not_nets:
                parts.append(f"{address} != {{ {', '.join(not_nets)} }}")
            # In a namespaced policy any selector, a notSelector alone included, limits the side
            # to endpoints of the policy's namespace (Calico's getEndpointSelector): a notSelector
            # alone matched every other namespace, and hosts, in an Allow.
            if (entity.selector is not None or entity.namespace_selector is not None
                    or (scope is not None and entity.not_selector is not None)):
                parts.append(f"{address} @{self.selector_set(entity, 'selector', scope, version)}")
            if entity.not_selector is not None:
                parts.append(f"{address} != @{self.selector_set(entity, 'not_selector', scope, version)}")
            assert protocol is not None or not (entity.ports or entity.not_ports)  # the model's rule
            name = PROTOCOL_NAMES.get(protocol or 0, "").upper()
            if kind == "numeric":
                numeric = [p for p in entity.ports if port_range(p) is not None]
                parts.append(f"{port_field} {{ {_port_list(numeric)} }}")
            elif kind == "named":
                names = [p for p in entity.ports if port_range(p) is None]
                parts.append(f"{address} . meta l4proto . {port_field} "
                             f"@{self.named_port_set(names, name, version)}")
            numeric_not = [p for p in entity.not_ports if port_range(p) is not None]
            named_not = [p for p in entity.not_ports if port_range(p) is None]
            if numeric_not:
                parts.append(f"{port_field} != {{ {_port_list(numeric_not)} }}")
            if named_not:
                parts.append(f"{address} . meta l4proto . {port_field} "
                             f"!= @{self.named_port_set(named_not, name, version)}")
        return parts

    @staticmethod
    def _verdict(rule: Rule) -> list[str]:
        return {
            "Allow": [f"meta mark set mark or 0x{ACCEPT_MARK:x}", "return"],
            "Pass": [f"meta mark set mark or 0x{PASS_MARK:x}", "return"],
            "Deny": ["drop"],
            "Log": [f'log prefix "{LOG_PREFIX}"'],
        }[rule.action]

    # -- chains ----------------------------------------------------------------------------

    def policy_chains(self, policy: NetworkPolicy | GlobalNetworkPolicy, direction: str) -> str:
        key = f"{policy.kind}/{policy_id(policy)}"
        chain = policy_chain(direction, key)
        if chain not in self.ruleset.chains:
            scope = policy.metadata.namespace if isinstance(policy, NetworkPolicy) else None
            rules = policy.spec.ingress if direction == "Ingress" else policy.spec.egress
            self.ruleset.chains[chain] = [
                r for i, rule in enumerate(rules)
                for r in self.rule(rule, scope, self._rule_comment(key, direction, i, rule))]
        return chain

    def _rule_comment(self, key: str, direction: str, index: int, rule: Rule) -> str:
        """The rule's identity, "<kind>/<id> <direction> <index> <action>", as the metrics read
        it back; a key too long for nft is shortened, and the Ruleset says what it stood for."""
        rest = f" {direction.lower()} {index} {rule.action}"
        comment = within_comment_limit(key, rest)
        if not comment.startswith(key + " "):
            self.ruleset.shortened[comment[:-len(rest)]] = key
        return comment

    def profile_chain(self, profile: Profile, direction: str) -> str:
        chain = ("pri-" if direction == "Ingress" else "pro-") + _name_digest("profile", profile.metadata.name)
        if chain not in self.ruleset.chains:
            rules = profile.spec.ingress if direction == "Ingress" else profile.spec.egress
            self.ruleset.chains[chain] = [
                r for i, rule in enumerate(rules)
                for r in self.rule(rule, None, self._rule_comment(f"Profile/{profile.metadata.name}", direction, i, rule))]
        return chain

    def endpoint_chain(self, endpoint: PolicyEndpoint, direction: str,
                       policies: list[tuple[NetworkPolicy | GlobalNetworkPolicy, tuple[str, ...]]],
                       profile: Profile) -> _EndpointChain:
        """`policies`: in order, each with its effective types."""
        name = ("tw-" if direction == "Ingress" else "fw-") + endpoint.interface
        accepted = f"meta mark and 0x{ACCEPT_MARK:x} == 0x{ACCEPT_MARK:x} return"
        not_passed = f"meta mark and 0x{PASS_MARK:x} == 0x0"
        rules = ["ct state established,related accept", "ct state invalid drop",
                 f"meta mark set mark and 0x{~(ACCEPT_MARK | PASS_MARK) & 0xffffffff:x}"]
        if direction == "Egress":
            for matches, what in ((f"udp dport {VXLAN_PORT}", ": VXLAN sent by the pod"),
                                  (f"meta l4proto {IPIP_PROTOCOL}", ": IP-in-IP sent by the pod")):
                comment = within_comment_limit(endpoint.key, what)
                rules.append(f'{matches} counter drop comment "{comment}"')
        likeness = (endpoint.likeness, direction)
        if likeness not in self._applicable:
            self._applicable[likeness] = tuple(p for p, types in policies
                                               if direction in types and selects(p, endpoint))
        applicable = self._applicable[likeness]
        for i, policy in enumerate(applicable):
            jump = f"jump {self.policy_chains(policy, direction)}"
            # The first policy always runs; a later one only while no policy passed.
            rules += [jump if i == 0 else f"{not_passed} {jump}", accepted]
        if applicable:
            comment = within_comment_limit(endpoint.key, ": no policy allowed it")
            rules.append(f'{not_passed} counter drop comment "{comment}"')
        comment = within_comment_limit(endpoint.key, ": the profile did not allow it")
        rules += [f"jump {self.profile_chain(profile, direction)}", accepted,
                  f'counter drop comment "{comment}"']
        return _EndpointChain(direction, name, rules, applicable, profile)


def _port_list(ports) -> str:
    spans = sorted(port_range(p) for p in ports)
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


@functools.lru_cache(maxsize=4096)
def default_profile(namespace: str) -> Profile:
    """A namespace with no Profile stored behaves as Calico's kns.<namespace>: allow both ways.
    Remembered: building the model costs more than the rest of a small endpoint's compilation,
    and nothing changes a Profile after it is made."""
    return Profile(metadata={"name": f"kns.{namespace}"})


def compile_ruleset(policies: Iterable[NetworkPolicy | GlobalNetworkPolicy],
                    profiles: Mapping[str, Profile], endpoints: Iterable[PolicyEndpoint],
                    vxlan_sources: Mapping[int, Iterable[str]] | None = None) -> Ruleset:
    """The ruleset for the endpoints with an interface (this node's), against every endpoint
    (the cluster's: selectors and named ports reach pods of other nodes). `profiles` maps a
    namespace to its profile; `vxlan_sources` each IP version with VXLAN in use to the nodes'
    addresses of that version (vxlan_guard)."""
    return RulesetCompiler().compile(policies, profiles, endpoints, vxlan_sources)


class RulesetCompiler:
    """compile_ruleset that carries its endpoint chains from one compilation to the next: while
    the policies and profiles stay the same objects, only endpoints that are new or a new object
    get chains built, and the rest of the work does not grow with the pods of the node. A CNI
    ADD on a node of 150 pods rebuilt all 300 endpoint chains (0.95 ms) for its one new pod.
    Policy and profile chains and sets are built again every time: a set's members can change
    with any endpoint of the cluster."""

    def __init__(self) -> None:
        self._policies: list[tuple] = []
        self._profiles: dict[str, Profile] = {}
        self._local: dict[str, PolicyEndpoint] = {}  # interface -> endpoint, as compiled
        self._built: dict[str, tuple[_EndpointChain, _EndpointChain]] = {}  # egress, ingress
        self._chains: dict[str, list[str]] = {}  # the endpoint chains, by name
        self._from: dict[str, str] = {}
        self._to: dict[str, str] = {}
        # What the endpoint chains jump to, each with how many chains do and one of them.
        self._jumps: dict[tuple, list] = {}

    def compile(self, policies: Iterable[NetworkPolicy | GlobalNetworkPolicy],
                profiles: Mapping[str, Profile], endpoints: Iterable[PolicyEndpoint],
                vxlan_sources: Mapping[int, Iterable[str]] | None = None) -> Ruleset:
        everyone = list(endpoints)
        ordered = [(p, p.spec.effective_types) for p in sorted(policies, key=sort_key)]
        same = (len(ordered) == len(self._policies)
                and all(policy is before and types == types_before
                        for (policy, types), (before, types_before) in zip(ordered, self._policies))
                and profiles.keys() == self._profiles.keys()
                and all(profile is self._profiles[name] for name, profile in profiles.items()))
        if not same:
            self._start_over()
        self._policies, self._profiles = ordered, dict(profiles)
        try:
            ruleset = self._compile(_Compiler(everyone), everyone, ordered, profiles)
        except BaseException:
            self._start_over()  # half carried over: the next compilation builds everything
            raise
        vxlan_guard(ruleset, vxlan_sources or {})
        return ruleset

    def _start_over(self) -> None:
        self._policies, self._profiles = [], {}
        self._local, self._built, self._chains, self._from, self._to, self._jumps = {}, {}, {}, {}, {}, {}

    def _compile(self, compiler: _Compiler, everyone: list[PolicyEndpoint], ordered: list[tuple],
                 profiles: Mapping[str, Profile]) -> Ruleset:
        local = {e.interface: e for e in everyone if e.interface}
        for interface in self._local.keys() - local.keys():
            self._forget(interface)
        for interface, endpoint in local.items():
            if self._local.get(interface) is endpoint:
                continue
            if interface in self._built:
                self._forget(interface)
            profile = profiles.get(endpoint.namespace) or default_profile(endpoint.namespace)
            built = (compiler.endpoint_chain(endpoint, "Egress", ordered, profile),
                     compiler.endpoint_chain(endpoint, "Ingress", ordered, profile))
            self._built[interface] = built
            for chain in built:
                self._chains[chain.chain] = chain.rules
                self._jumps.setdefault(chain.jumps, [0, chain])[0] += 1
            self._from[interface], self._to[interface] = built[0].chain, built[1].chain
        self._local = local
        for _, chain in self._jumps.values():
            for policy in chain.policies:
                compiler.policy_chains(policy, chain.direction)
            compiler.profile_chain(chain.profile, chain.direction)
        ruleset = compiler.ruleset
        ruleset.chains.update(self._chains)
        ruleset.from_endpoint, ruleset.to_endpoint = dict(self._from), dict(self._to)
        return ruleset

    def _forget(self, interface: str) -> None:
        for chain in self._built.pop(interface):
            del self._chains[chain.chain]
            counted = self._jumps[chain.jumps]
            counted[0] -= 1
            if counted[0] == 0:
                del self._jumps[chain.jumps]
        del self._from[interface], self._to[interface]


# -- text for nft -f ------------------------------------------------------------------------

def _vmap(name: str, entries: Mapping[str, str]) -> str:
    elements = ", ".join(f'"{interface}" : goto {chain}' for interface, chain in sorted(entries.items()))
    body = f" elements = {{ {elements} }};" if elements else ""
    return f"map {name} {{ type ifname : verdict;{body} }}"


def render(ruleset: Ruleset) -> str:
    """The whole table, as one `nft -f` transaction that replaces whatever the table held:
    `add table` (so the delete never fails), `delete table`, then everything. nft applies the
    file atomically: no packet sees a half-written table."""
    lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}",
             f"table {FAMILY} {TABLE} {{"]
    for name, declared in sorted(ruleset.sets.items()):
        lines.append("  " + declared.declaration(name))
    lines.append("  " + _vmap("from-endpoint", ruleset.from_endpoint))
    lines.append("  " + _vmap("to-endpoint", ruleset.to_endpoint))
    chains = {**ruleset.chains}
    for name in sorted(chains, key=lambda n: (n.startswith(("fw-", "tw-")), n)):
        lines.append(f"  chain {name} {{")
        lines += [f"    {rule}" for rule in chains[name]]
        lines.append("  }")
    for name, rules in {**DISPATCH_CHAINS, **BASE_CHAINS}.items():
        lines.append(f"  chain {name} {{")
        lines += [f"    {rule}" for rule in rules]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
