"""percale's own policy: NetworkPolicy (namespaced) and GlobalNetworkPolicy, with Calico's fields
(dataplane.md §A2).

A policy selects endpoints (`selector`, and for a global policy `namespaceSelector`) and gives
them ordered rules per direction. A rule's `action` is Allow (accept, stop), Deny (drop), Pass
(skip the policies left, on to the profiles), or Log (note and go on). `order` sorts policies, lower
first, unset last, then by name. `types` says which directions a policy governs; left out, it is
Egress when the policy has only egress rules, both when it has both, else Ingress.

Kubernetes NetworkPolicies (percale.api.k8s_policy) are converted into this model
(percale.policy.convert), with order 1000 as Calico gives them.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from percale.api.fields import CIDR, Selector
from percale.api.meta import FieldError, KubernetesLabels, Model, ObjectMeta, Resource, register

Action = Literal["Allow", "Deny", "Log", "Pass"]
Direction = Literal["Ingress", "Egress"]
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
# The same by number: a rule may name its protocol either way (Calico's SupportsPorts).
PORT_PROTOCOL_NUMBERS = frozenset({6, 17, 132})
# IANA protocol numbers for the names Calico accepts.
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
MAX_RULES = 1024  # per direction, as Calico's validation allows

# Kubernetes port names (IANA service names): at most 15 lower-case letters, digits and single
# inner dashes, at least one letter.
_PORT_NAME = re.compile(r"(?=.*[a-z])(?!.*--)[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def port_name_problem(name: str) -> str | None:
    if len(name) > 15:
        return f"port name {name!r} is longer than 15 characters"
    if not _PORT_NAME.fullmatch(name):
        return (f"{name!r} is not a port name (lower-case letters, digits and inner dashes, "
                "with at least one letter)")
    return None


def _port(value: int | str) -> int | str:
    """A port: a number, a range `first:last`, or a named port (resolved per endpoint)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a port")
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise ValueError(f"port {value} is not between 0 and 65535")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a port, a range first:last or a port name")
    if re.fullmatch(r"[0-9]+", value):
        return _port(int(value))
    if match := re.fullmatch(r"([0-9]+):([0-9]+)", value):
        first, last = int(match[1]), int(match[2])
        if not 0 <= first <= last <= 65535:
            raise ValueError(f"port range {value} must run from a lower to a higher port, "
                             "within 0-65535")
        return value
    if problem := port_name_problem(value):
        raise ValueError(problem)
    return value


PolicyPort = Annotated[int | str, BeforeValidator(_port)]


def port_range(port: int | str) -> tuple[int, int] | None:
    """(first, last) of a numeric port or range; None for a named port."""
    if isinstance(port, int):
        return port, port
    if match := re.fullmatch(r"([0-9]+):([0-9]+)", port):
        return int(match[1]), int(match[2])
    return None


def _protocol(value: object) -> str | int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a protocol")
    if not isinstance(value, (str, int)):
        # As Calico's numorstring.Protocol decodes: an integer or a string, nothing else (6.0
        # included). A list or map went on to .lower() and ended percalectl in a traceback.
        raise ValueError("must be a protocol name or a number 1-255")
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # "6", as YAML gives a quoted number: the number, as Calico reads it
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise ValueError(f"protocol number {value} is not between 1 and 255")
        return value
    for name in PROTOCOL_NUMBERS:
        if value.lower() == name.lower():
            return name
    raise ValueError(f"unknown protocol {value!r}: use one of {', '.join(PROTOCOL_NUMBERS)} or a "
                     "number 1-255")


Protocol = Annotated[str | int, BeforeValidator(_protocol)]


def protocol_number(protocol: str | int) -> int:
    return protocol if isinstance(protocol, int) else PROTOCOL_NUMBERS[protocol]


def _not_a_bool(value: object) -> object:
    # pydantic reads true as 1 where a number is wanted; Calico's Go decoding refuses it.
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a number")
    return value


class ICMPMatch(Model):
    type: Annotated[int, Field(ge=0, le=254)] | None = None
    code: Annotated[int, Field(ge=0, le=255)] | None = None

    _numbers = field_validator("type", "code", mode="before")(_not_a_bool)

    @model_validator(mode="after")
    def _code_needs_type(self) -> ICMPMatch:
        if self.code is not None and self.type is None:
            raise FieldError("code", "an ICMP code needs a type")
        return self


def _empty_is_unset(value: object) -> object:
    # Calico's rule selectors are omitempty strings: "" is a selector not given, where parsed it
    # was all() (namespaceSelector: "" widened an Allow to every namespace).
    return None if value == "" else value


class EntityRule(Model):
    """One end of a rule: where traffic comes from (source) or goes to (destination)."""

    nets: list[CIDR] = Field(default_factory=list)
    not_nets: list[CIDR] = Field(default_factory=list)
    selector: Selector | None = None
    not_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ports: list[PolicyPort] = Field(default_factory=list)
    not_ports: list[PolicyPort] = Field(default_factory=list)

    _selectors_given = field_validator("selector", "not_selector", "namespace_selector",
                                       mode="before")(_empty_is_unset)

    @field_validator("not_nets")
    @classmethod
    def _no_catch_all(cls, nets: list[str]) -> list[str]:
        # As Calico refuses it: not in 0.0.0.0/0 (or ::/0) is no packet of that family, so the
        # rule would silently match nothing there.
        for net in nets:
            if ipaddress.ip_network(net).prefixlen == 0:
                raise ValueError(f"{net} matches every address: in notNets it leaves the rule "
                                 "nothing to match")
        return nets

    @property
    def has_ports(self) -> bool:
        return bool(self.ports or self.not_ports)


class Rule(Model):
    action: Action
    ip_version: Literal[4, 6] | None = None
    protocol: Protocol | None = None
    not_protocol: Protocol | None = None
    icmp: ICMPMatch | None = None
    not_icmp: ICMPMatch | None = Field(None, alias="notICMP")
    source: EntityRule = Field(default_factory=EntityRule)
    destination: EntityRule = Field(default_factory=EntityRule)

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions this rule applies to, as felix renders rules: each version its
        ipVersion allows for which every non-empty list of nets and notNets holds a CIDR of that
        version (notNets all of the other family leave the rule out, as in felix)."""
        lists = [nets for entity in (self.source, self.destination)
                 for nets in (entity.nets, entity.not_nets) if nets]
        # ICMP is IPv4's, ICMPv6 IPv6's: such a rule has no other family (with only CIDRs of the
        # other family it has none, and is refused rather than left out without a word).
        protocol = None if self.protocol is None else protocol_number(self.protocol)
        only = {1: 4, 58: 6}.get(protocol) if protocol is not None else None
        return tuple(v for v in (4, 6) if self.ip_version in (None, v) and only in (None, v)
                     and all(any(ipaddress.ip_network(n).version == v for n in nets) for nets in lists))

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        ports_allowed = (self.protocol is not None
                         and protocol_number(self.protocol) in PORT_PROTOCOL_NUMBERS)
        for side in ("source", "destination"):
            entity: EntityRule = getattr(self, side)
            if entity.has_ports and not ports_allowed:
                field = "ports" if entity.ports else "notPorts"
                raise FieldError(f"{side}.{field}",
                                 "ports need protocol TCP, UDP or SCTP (6, 17 or 132) in the same rule")
            for key in ("nets", "not_nets"):
                field = f"{side}.{'notNets' if key == 'not_nets' else 'nets'}"
                for net in getattr(entity, key):
                    version = ipaddress.ip_network(net).version
                    if self.ip_version is not None and version != self.ip_version:
                        raise FieldError(field, f"{net} is not IPv{self.ip_version} (ipVersion)")
        for key, protocol in (("protocol", self.protocol), ("notProtocol", self.not_protocol)):
            number = None if protocol is None else protocol_number(protocol)
            wanted = {1: 4, 58: 6}.get(number) if number is not None else None
            if wanted is not None and self.ip_version not in (None, wanted):
                raise FieldError("ipVersion", f"{self.ip_version}: {key} {protocol} "
                                 f"is an IPv{wanted} protocol; set ipVersion {wanted} or leave it out")
        if not self.families:
            # Say source.nets IPv4 and destination.nets IPv6: no packet has both, and the rule
            # would be left out of the table without a word.
            icmp = {1: "ICMP is IPv4's", 58: "ICMPv6 is IPv6's"}.get(
                protocol_number(self.protocol) if self.protocol is not None else -1)
            raise FieldError("destination" if self.destination.nets or self.destination.not_nets
                             else "source",
                             f"{icmp + ', and ' if icmp else ''}"
                             "its CIDRs leave the rule no address family to match (each list of "
                             "nets or notNets needs one of the packet's family): write one rule "
                             "per family")
        icmp_protocols = ("ICMP", "ICMPv6", 1, 58)
        for key, match in (("icmp", self.icmp), ("notICMP", self.not_icmp)):
            if match is not None and self.protocol not in icmp_protocols:
                raise FieldError(key, "ICMP type and code need protocol ICMP or ICMPv6")
        return self


def _rules(rules: list[Rule]) -> list[Rule]:
    if len(rules) > MAX_RULES:
        raise ValueError(f"{len(rules)} rules: at most {MAX_RULES} per direction")
    return rules


Rules = Annotated[list[Rule], AfterValidator(_rules)]


class PolicySpec(Model):
    # Infinity sorts last (stored as such, datastore/codec.py); NaN would sort nowhere, and
    # scrambled the order of the other policies.
    order: Annotated[float, BeforeValidator(_not_a_bool)] | None = None
    tier: Literal["default"] = "default"
    selector: Selector = "all()"
    types: list[Direction] | None = None
    ingress: Rules = Field(default_factory=list)
    egress: Rules = Field(default_factory=list)

    @property
    def effective_types(self) -> tuple[Direction, ...]:
        """`types`, or Calico's default: Egress for egress rules alone, both for both, else
        Ingress."""
        if self.types:
            return tuple(t for t in ("Ingress", "Egress") if t in self.types)
        if self.egress and not self.ingress:
            return ("Egress",)
        if self.egress:
            return ("Ingress", "Egress")
        return ("Ingress",)

    @field_validator("order")
    @classmethod
    def _order_is_a_number(cls, order: float | None) -> float | None:
        if order is not None and math.isnan(order):
            raise ValueError("NaN is not an order: give a number")
        return order

    @model_validator(mode="after")
    def _types_unique(self) -> PolicySpec:
        if self.types is not None and len(set(self.types)) != len(self.types):
            raise FieldError("types", "a type is listed twice")
        return self


class GlobalPolicySpec(PolicySpec):
    namespace_selector: Selector | None = None


class NetworkPolicy(Resource):
    """Rules for the endpoints of one namespace."""

    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    metadata: ObjectMeta
    spec: PolicySpec = Field(default_factory=PolicySpec)


class GlobalNetworkPolicy(Resource):
    """Rules for endpoints of every namespace (narrowed by namespaceSelector)."""

    kind: Literal["GlobalNetworkPolicy"] = "GlobalNetworkPolicy"
    metadata: ObjectMeta
    spec: GlobalPolicySpec = Field(default_factory=GlobalPolicySpec)


# calicoctl's names (resourcemgr/networkpolicy.go), `get policy` as Calico's docs write it, for
# percalectl only: in the CRD, kubectl would take `policy` (an API group's name) for this kind.
register(NetworkPolicy, plural="networkpolicies", short_names=("netpol", "netpols", "np"),
         namespaced=True, cli_aliases=("policy", "policies", "pol", "pols"))
register(GlobalNetworkPolicy, plural="globalnetworkpolicies", short_names=("gnp", "gnps"))


class ProfileSpec(Model):
    """A namespace's profile (`kns.<namespace>`): labels every endpoint of the namespace gets for
    namespaceSelectors to match, and the rules that apply when no policy selects an endpoint
    (Calico's: allow everything both ways)."""

    # Endpoints take these as labels, which namespaceSelectors then match: held to the rule of
    # labels, as Calico holds them.
    labels_to_apply: KubernetesLabels = Field(default_factory=dict)
    ingress: Rules = Field(default_factory=lambda: [Rule(action="Allow")])
    egress: Rules = Field(default_factory=lambda: [Rule(action="Allow")])


class Profile(Resource):
    kind: Literal["Profile"] = "Profile"
    metadata: ObjectMeta
    spec: ProfileSpec = Field(default_factory=ProfileSpec)


NAMESPACE_PROFILE_PREFIX = "kns."


def namespace_profile_name(namespace: str) -> str:
    return f"{NAMESPACE_PROFILE_PREFIX}{namespace}"


# The label Kubernetes gives every Namespace (1.21+), its name: a namespace's labels carry it even
# where no Profile kns.<namespace> is stored (etcd, unless one was applied).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


# Calico's profile of a namespace applies its name as well (pcns.projectcalico.org/name;
# dataplane.md §A2), last, so labelsToApply cannot make one namespace pass for another.
CALICO_NAMESPACE_NAME_LABEL = "projectcalico.org/name"


def namespace_labels(namespace: str, profile: Profile | None) -> dict[str, str]:
    """What a namespaceSelector (a policy's, a rule's, an IPPool's) sees of `namespace`: the
    labels its Profile kns.<namespace> applies (on Kubernetes, the Namespace's own), its name,
    and Calico's projectcalico.org/name."""
    applied = profile.spec.labels_to_apply if profile is not None else {}
    return {NAMESPACE_NAME_LABEL: namespace, **applied, CALICO_NAMESPACE_NAME_LABEL: namespace}


register(Profile, plural="profiles", short_names=("pro", "pros"))
