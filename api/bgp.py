"""BGP kinds: BGPConfiguration (cluster-wide and per-node BGP settings), BGPPeer (extra sessions)
and BGPFilter (import and export rules a BGPPeer names).

Users write them with `percalectl apply`; the BGP speaker on every node reads them to decide its
AS, listen port, mesh, peerings and what each session takes and sends (calico.md §2.1, §2.2,
§2.4), and `percalectl get` prints them.
BGPConfiguration keeps unset fields as None so the CLI can print `-` for them; the `effective_*`
properties and the DEFAULT_* constants give the value that applies when a field is unset.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import (
    AfterValidator, BeforeValidator, Field, StrictBool, ValidationInfo, WithJsonSchema,
    field_validator, model_validator,
)

from percale.api.fields import (
    CIDR,
    ASNumber,
    Duration,
    IPAddress,
    NetworkOrAddress,
    PeerIP,
    Port,
    Selector,
    duration_seconds,
    network_of,
    split_peer_ip,
    whole_number,
)
from percale.api.meta import FieldError, Model, ObjectMeta, Resource, register, written
from percale.api.node import Node, NodeName

# The values that apply when BGPConfiguration leaves a field unset (calico.md §2.1).
DEFAULT_AS_NUMBER = 64512
DEFAULT_NODE_TO_NODE_MESH_ENABLED = True
DEFAULT_LISTEN_PORT = 179
DEFAULT_LOG_SEVERITY_SCREEN = "Info"

GLOBAL_CONFIG_NAME = "default"
NODE_CONFIG_PREFIX = "node."

# Calico's logLevel validation set.
_SEVERITIES = ("Trace", "Debug", "Info", "Warning", "Error", "Fatal")


def _severity(value: object) -> object:
    # Calico's CRD pattern takes any case ((?i)); stored as Calico spells it.
    if isinstance(value, str):
        return next((s for s in _SEVERITIES if s.lower() == value.lower()), value)
    return value


LogSeverity = Annotated[Literal[_SEVERITIES],  # type: ignore[valid-type]
                        BeforeValidator(_severity),
                        # the CRD's too, as Calico's: kubectl may give "debug" as well
                        WithJsonSchema({"type": "string",
                                        "pattern": f"^(?i)({'|'.join(_SEVERITIES)})$"})]


class SecretKeyRef(Model):
    """A key of a Secret: read from <secrets dir>/<name>/<key> on the node, so both are held
    to Kubernetes' rules, which keep them inside that directory."""

    name: str
    key: str

    @field_validator("name")
    @classmethod
    def _secret_name(cls, value: str) -> str:
        if not Resource.is_valid_name(value):
            raise ValueError(f"{value!r} is not a Secret name (lower-case letters, digits, '-' and "
                             "'.', at most 253 characters)")
        return value

    @field_validator("key")
    @classmethod
    def _secret_key(cls, value: str) -> str:
        if not (_SECRET_KEY.fullmatch(value) and value not in (".", "..") and len(value) <= 253):
            raise ValueError(f"{value!r} is not a Secret key (letters, digits, '-', '_' and '.', "
                             "at most 253 characters, not '.' or '..')")
        return value


_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


class BGPPassword(Model):
    """A TCP-MD5 password read from a Kubernetes Secret in the node agent's namespace."""

    secret_key_ref: SecretKeyRef


# re.ASCII: \d alone takes any script's digits, which ExaBGP's configuration does not.
_STANDARD_COMMUNITY = re.compile(r"(\d+):(\d+)", re.ASCII)
_LARGE_COMMUNITY = re.compile(r"(\d+):(\d+):(\d+)", re.ASCII)


def community_problem(value: str) -> str | None:
    """Why `value` is not a BGP community literal, or None when it is one."""
    if m := _STANDARD_COMMUNITY.fullmatch(value):
        bits, parts = 16, m.groups()  # RFC 1997: two 16-bit halves
    elif m := _LARGE_COMMUNITY.fullmatch(value):
        bits, parts = 32, m.groups()  # RFC 8092: three 32-bit parts
    else:
        return f"{value!r} is not a community: use aa:nn (standard) or aa:nn:mm (large)"
    if any(int(part) >= 1 << bits for part in parts):
        return f"community {value!r} has a part that does not fit in {bits} bits"
    return None


def _community(value: str) -> str:
    if problem := community_problem(value):
        raise ValueError(problem)
    return value


class Community(Model):
    name: str
    value: Annotated[str, AfterValidator(_community)]


class PrefixAdvertisement(Model):
    cidr: NetworkOrAddress
    # Literal communities or names from spec.communities.
    communities: list[str] = Field(default_factory=list)


class ServiceIPBlock(Model):
    cidr: NetworkOrAddress


# Calico's ignoredInterface pattern: interface names (at most 15 characters) with * wildcards.
_IGNORED_INTERFACE = re.compile(r"[A-Za-z0-9_.*-]{1,15}")

# Only the global instance may set these (Calico's ValidateDefaultOnlyFields plus the documented
# global-only mesh settings): they describe the whole cluster's mesh and AS, not one node.
_GLOBAL_ONLY = (
    "node_to_node_mesh_enabled", "as_number", "node_mesh_password", "node_mesh_max_restart_time",
    "service_cluster_ips", "service_external_ips", "service_load_balancer_ips",
)


class BGPConfigurationSpec(Model):
    log_severity_screen: LogSeverity | None = None
    node_to_node_mesh_enabled: StrictBool | None = None
    as_number: ASNumber | None = None
    listen_port: Port | None = None
    # NodeIP: listen on the node's address only, not on every address.
    bind_mode: Literal["None", "NodeIP"] | None = None
    service_cluster_ips: list[ServiceIPBlock] | None = Field(None, alias="serviceClusterIPs")
    service_external_ips: list[ServiceIPBlock] | None = Field(None, alias="serviceExternalIPs")
    service_load_balancer_ips: list[ServiceIPBlock] | None = Field(None, alias="serviceLoadBalancerIPs")
    communities: list[Community] | None = None
    prefix_advertisements: list[PrefixAdvertisement] | None = None
    node_mesh_password: BGPPassword | None = None
    # Graceful-restart time for mesh sessions; None keeps the speaker's default (120s).
    node_mesh_max_restart_time: Duration | None = None
    ignored_interfaces: list[str] | None = None

    @property
    def effective_as_number(self) -> int:
        return DEFAULT_AS_NUMBER if self.as_number is None else self.as_number

    @property
    def effective_node_to_node_mesh_enabled(self) -> bool:
        if self.node_to_node_mesh_enabled is None:
            return DEFAULT_NODE_TO_NODE_MESH_ENABLED
        return self.node_to_node_mesh_enabled

    @property
    def effective_listen_port(self) -> int:
        return DEFAULT_LISTEN_PORT if self.listen_port is None else self.listen_port

    @property
    def effective_log_severity_screen(self) -> str:
        return self.log_severity_screen or DEFAULT_LOG_SEVERITY_SCREEN

    @field_validator("ignored_interfaces")
    @classmethod
    def _interface_names(cls, names: list[str] | None) -> list[str] | None:
        for name in names or ():
            if name == "*" or not _IGNORED_INTERFACE.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not an interface name (up to 15 of A-Z a-z 0-9 _ . - *, not just *)"
                )
        return names

    @model_validator(mode="after")
    def _consistent(self) -> BGPConfigurationSpec:
        names = {c.name for c in self.communities or ()}
        if names and not self.prefix_advertisements:
            raise FieldError("communities", "communities are defined but no prefixAdvertisements use them")
        for i, adv in enumerate(self.prefix_advertisements or ()):
            for j, community in enumerate(adv.communities):
                if community not in names and community_problem(community):
                    raise FieldError(
                        f"prefixAdvertisements.{i}.communities.{j}",
                        f"prefixAdvertisements community {community!r} for {adv.cidr} is neither a "
                        f"community value (aa:nn or aa:nn:mm) nor a name defined in communities"
                    )
        if self.node_to_node_mesh_enabled is False:
            # Both only configure mesh sessions; with no mesh they would silently do nothing.
            if self.node_mesh_password is not None:
                raise FieldError(
                    "nodeMeshPassword", "nodeMeshPassword cannot be set when nodeToNodeMeshEnabled is false"
                )
            if self.node_mesh_max_restart_time is not None:
                raise FieldError(
                    "nodeMeshMaxRestartTime",
                    "nodeMeshMaxRestartTime cannot be set when nodeToNodeMeshEnabled is false",
                )
        return self


class BGPConfiguration(Resource):
    kind: Literal["BGPConfiguration"] = "BGPConfiguration"
    metadata: ObjectMeta
    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)

    @property
    def is_global(self) -> bool:
        return self.metadata.name == GLOBAL_CONFIG_NAME

    @property
    def node(self) -> str | None:
        """The node a `node.<name>` override applies to; None for the global instance."""
        return None if self.is_global else self.metadata.name.removeprefix(NODE_CONFIG_PREFIX)

    @field_validator("metadata")
    @classmethod
    def _global_or_node(cls, meta: ObjectMeta) -> ObjectMeta:
        node = meta.name.removeprefix(NODE_CONFIG_PREFIX)
        if meta.name != GLOBAL_CONFIG_NAME and (node == meta.name or not Node.name_pattern.fullmatch(node)):
            raise ValueError(
                f"a BGPConfiguration is named {GLOBAL_CONFIG_NAME!r} (global) or node.<node name> "
                f"(one node's overrides), not {meta.name!r}"
            )
        return meta

    @field_validator("spec")
    @classmethod
    def _global_only_fields(cls, spec: BGPConfigurationSpec, info: ValidationInfo) -> BGPConfigurationSpec:
        meta = info.data.get("metadata")
        if meta is None or meta.name == GLOBAL_CONFIG_NAME:
            return spec
        for name in _GLOBAL_ONLY:
            # An explicit false is a setting; an empty list is not (Calico checks len > 0).
            if getattr(spec, name) not in (None, []):
                alias = BGPConfigurationSpec.model_fields[name].alias
                # A check on the whole spec: FieldError points at the offending field inside it.
                raise FieldError(
                    alias,
                    f"{alias} can only be set on the global BGPConfiguration {GLOBAL_CONFIG_NAME!r}, "
                    f"not on {meta.name!r}"
                )
        return spec


register(BGPConfiguration, plural="bgpconfigurations", short_names=("bgpconfig", "bgpconfigs"))


def configuration_for(node: str, configs: Iterable[BGPConfiguration],
                      field: str) -> BGPConfiguration | None:
    """The BGPConfiguration whose `field` (a spec attribute) applies on `node`, as confd reads
    per-node settings: the node's own `node.<name>` when it sets the field, else the global one
    (None when there is neither)."""
    by_name = {c.metadata.name: c for c in configs}
    own = by_name.get(NODE_CONFIG_PREFIX + node)
    if own is not None and getattr(own.spec, field) is not None:
        return own
    return by_name.get(GLOBAL_CONFIG_NAME)

# --------------------------------------------------------------------------------------------
# BGPPeer

PeerScope = Literal["global", "node", "nodeSelector"]


class BGPPeerSpec(Model):
    # Which local nodes get the session: one node, the nodes a selector matches, or (neither) all.
    node: NodeName | None = None
    node_selector: Selector | None = None
    # Whom to peer with: one address, every percale node matching peerSelector, or local pods.
    peer_ip: PeerIP | None = Field(None, alias="peerIP")
    as_number: ASNumber | None = None
    local_as_number: ASNumber | None = Field(None, alias="localASNumber")
    peer_selector: Selector | None = None
    local_workload_selector: Selector | None = None
    keep_original_next_hop: StrictBool = False  # deprecated by nextHopMode
    next_hop_mode: Literal["Auto", "Self", "Keep"] | None = None
    password: BGPPassword | None = None
    source_address: Literal["UseNodeIP", "None"] = "UseNodeIP"
    max_restart_time: Duration | None = None
    keepalive_time: Duration | None = None
    num_allowed_local_as_numbers: Annotated[int | None, BeforeValidator(whole_number)] = Field(
        None, ge=0, alias="numAllowedLocalASNumbers")
    ttl_security: Annotated[int | None, BeforeValidator(whole_number)] = Field(None, ge=0, le=255)
    # Gateway to the peer: the node routes peerIP/32 (/128) via this address
    # (bgpd/peer_routes.py).
    reachable_by: IPAddress | None = None
    filters: list[str] | None = None
    reverse_peering: Literal["Auto", "Manual"] | None = None

    @property
    def scope(self) -> PeerScope:
        """Which nodes the peering applies to; `percalectl get bgppeers` prints global as `(global)`."""
        if self.node:
            return "node"
        if self.node_selector:
            return "nodeSelector"
        return "global"

    @field_validator("keepalive_time")
    @classmethod
    def _whole_seconds(cls, value: str | None) -> str | None:
        # BGP counts keepalives in whole seconds, rounded as confd rounds them: under half a
        # second becomes 0, which BIRD refuses and percale's speaker read as "not set".
        if value is not None and duration_seconds(value) < 0.5:
            raise ValueError(f"{value} rounds to 0 seconds; BGP keepalives are whole seconds, "
                             "so give at least 1s")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> BGPPeerSpec:
        if self.node and self.node_selector:
            raise FieldError(
                "nodeSelector", "node and nodeSelector cannot both be set; use one to choose the local nodes"
            )
        if self.peer_ip and self.peer_selector:
            raise FieldError("peerSelector", "peerIP and peerSelector cannot both be set")
        if self.local_workload_selector and written(info):
            # Peering with the node's own pods needs BGPConfiguration's
            # localWorkloadPeeringIPV4/IPV6 and sessions ExaBGP would have to open per pod:
            # refused rather than stored and silently never acted on.
            raise FieldError(
                "localWorkloadSelector",
                "peering with local workloads is not supported by percale; peer with the "
                "workloads' addresses through peerIP instead",
            )
        if self.local_workload_selector and (self.peer_ip or self.peer_selector):
            raise FieldError(
                "localWorkloadSelector",
                "localWorkloadSelector cannot be combined with peerIP or peerSelector",
            )
        if not (self.peer_ip or self.peer_selector or self.local_workload_selector):
            raise ValueError("one of peerIP, peerSelector or localWorkloadSelector is required")
        if self.peer_selector and self.as_number:
            raise FieldError(
                "asNumber", "asNumber must not be set with peerSelector: each selected node's own AS is used"
            )
        if self.peer_ip and not self.as_number:
            raise FieldError("asNumber", "peerIP needs asNumber, the remote peer's AS")
        if self.local_workload_selector and not self.as_number:
            raise FieldError("asNumber", "localWorkloadSelector needs asNumber, the workloads' AS")
        if self.reachable_by:
            if not self.peer_ip:
                raise FieldError("reachableBy", "reachableBy needs peerIP: it is the gateway to that address")
            peer, _ = split_peer_ip(self.peer_ip)
            gateway = ipaddress.ip_address(self.reachable_by)
            if peer.version != gateway.version:
                raise FieldError(
                    "reachableBy",
                    f"reachableBy {self.reachable_by} is IPv{gateway.version} but peerIP "
                    f"{self.peer_ip} is IPv{peer.version}"
                )
            # Refused since reachableBy is acted on; a value stored before stays readable (and
            # bgpd/peer_routes.py leaves it out).
            if gateway.version == 6 and gateway.is_link_local and written(info):
                raise FieldError(
                    "reachableBy",
                    f"reachableBy {self.reachable_by} is link-local, which names no interface: "
                    "give the gateway's address on the network both share"
                )
        if self.keep_original_next_hop and self.next_hop_mode is not None:
            raise FieldError(
                "keepOriginalNextHop",
                "keepOriginalNextHop is deprecated and cannot be true when nextHopMode is set",
            )
        return self


class BGPPeer(Resource):
    kind: Literal["BGPPeer"] = "BGPPeer"
    metadata: ObjectMeta
    spec: BGPPeerSpec


register(BGPPeer, plural="bgppeers", short_names=("bgpp", "bgpps", "bp", "bps"))

# --------------------------------------------------------------------------------------------
# BGPFilter

# The longest prefix of each family: a V4 list's prefix lengths stop at 32, a V6 list's at 128.
_PREFIX_BITS = {4: 32, 6: 128}


def _prefix_length(value: int | None) -> int | None:
    # The widest bound of either family; a V4 list is held to 32 by BGPFilterSpec, which knows
    # the family.
    if value is not None and not 0 <= value <= 128:
        raise ValueError(f"{value} is not a prefix length between 0 and 128")
    return value


PrefixLengthBound = Annotated[int | None, BeforeValidator(whole_number), AfterValidator(_prefix_length)]


class BGPFilterPrefixLength(Model):
    """The prefix lengths a rule's cidr matches; an end left out is the cidr's own length (min)
    or the family's longest prefix (max), as Calico's confd fills them in."""

    min: PrefixLengthBound = Field(None, json_schema_extra={"minimum": 0, "maximum": 128})
    max: PrefixLengthBound = Field(None, json_schema_extra={"minimum": 0, "maximum": 128})


class BGPFilterCommunityMatch(Model):
    # Checked here rather than by min/max_length, whose message does not say why one.
    values: list[Annotated[str, AfterValidator(_community)]] = Field(
        json_schema_extra={"minItems": 1, "maxItems": 1})

    @field_validator("values")
    @classmethod
    def _exactly_one(cls, values: list[str]) -> list[str]:
        # Calico's MaxItems=1: several values have no agreed meaning yet (any of them, or all).
        if len(values) != 1:
            raise ValueError(f"values holds {len(values)} communities; a rule matches exactly one, "
                             "as Calico's BGPFilter: write one rule per community")
        return values


# Calico fields percale refuses by name rather than as unknown, so a filter brought over from
# Calico says why it cannot apply instead of only that the field is not known.
_UNSUPPORTED_RULE_FIELDS = {
    "interface": "interface is not supported: percale exports no interface routes, so a rule "
                 "matching a route's outgoing interface would match nothing; remove it",
    "priority": "priority is not supported: percale has no route priority (Felix's "
                "...RoutePriority), so no route carries one to match; remove it",
    "operations": "operations are not supported: percale does not implement addCommunity, "
                  "prependASPath or setPriority in a BGPFilter; remove them",
}


class BGPFilterRule(Model):
    """One rule of a BGPFilter list: a route that matches every criterion set gets `action`, and
    the rules after it are not looked at. The same model serves V4 and V6 lists (Calico has one
    type for each); BGPFilterSpec holds each rule to its list's family."""

    action: Literal["Accept", "Reject"]
    cidr: CIDR | None = None
    match_operator: Literal["Equal", "NotEqual", "In", "NotIn"] | None = None
    prefix_length: BGPFilterPrefixLength | None = None
    # RemotePeers: only routes learned from a BGP peer, not those the node originates.
    source: Literal["RemotePeers"] | None = None
    peer_type: Literal["eBGP", "iBGP"] | None = None
    communities: BGPFilterCommunityMatch | None = None
    # The AS path must begin with these ASes, in this order.
    as_path_prefix: list[ASNumber] | None = Field(None, alias="asPathPrefix")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        for name, why in _UNSUPPORTED_RULE_FIELDS.items():
            # Empty is unset, as Calico's omitempty reads it: nothing to refuse.
            if data.get(name) not in (None, "", []):
                raise FieldError(name, why)
        return {k: v for k, v in data.items() if k not in _UNSUPPORTED_RULE_FIELDS}

    @model_validator(mode="after")
    def _consistent(self) -> BGPFilterRule:
        # Calico's CEL rule: cidr and matchOperator are one criterion, meaningless apart.
        if self.cidr and not self.match_operator:
            raise FieldError("matchOperator", f"cidr {self.cidr} needs matchOperator (Equal, NotEqual, "
                             "In or NotIn): it says how a route's prefix is compared with cidr")
        if self.match_operator and not self.cidr:
            raise FieldError("cidr", f"matchOperator {self.match_operator} needs cidr, the prefix "
                             "routes are compared with")
        lengths = self.prefix_length
        if lengths is None:
            return self
        if not self.cidr:
            raise FieldError("prefixLength", "prefixLength needs cidr: it narrows the lengths of the "
                             "prefixes matched within cidr")
        if self.match_operator in ("Equal", "NotEqual"):
            # With prefixLength the match is a prefix set, cidr{min,max}; BIRD compares a prefix
            # with a set only by ~ and !~, and refuses the whole configuration otherwise.
            raise FieldError("prefixLength", f"prefixLength cannot be used with matchOperator "
                             f"{self.match_operator}: a prefix is compared with a range of prefix "
                             "lengths only by In or NotIn; use matchOperator In or NotIn")
        if lengths.min is not None and lengths.max is not None and lengths.min > lengths.max:
            raise FieldError("prefixLength.min", f"prefixLength.min {lengths.min} is greater than "
                             f"max {lengths.max}: no prefix length lies between them")
        own = network_of(self.cidr).prefixlen
        if lengths.max is not None and lengths.max < own:
            # confd raises min to the cidr's length and writes cidr{own,max}, a range BIRD
            # refuses (min above max), taking every other filter and peer down with it.
            raise FieldError("prefixLength.max", f"prefixLength.max {lengths.max} is shorter than "
                             f"cidr {self.cidr} itself: every prefix within it is at least /{own}, "
                             "so the rule would match nothing")
        return self


# Each list of BGPFilterSpec: its wire name and the address family of its rules.
_FILTER_LISTS = (("export_v4", 4), ("import_v4", 4), ("export_v6", 6), ("import_v6", 6))


class BGPFilterSpec(Model):
    """Ordered rule lists, each applied to one direction and family of one peer's routes; the
    first rule a route matches decides."""

    export_v4: list[BGPFilterRule] = Field(default_factory=list, alias="exportV4")
    import_v4: list[BGPFilterRule] = Field(default_factory=list, alias="importV4")
    export_v6: list[BGPFilterRule] = Field(default_factory=list, alias="exportV6")
    import_v6: list[BGPFilterRule] = Field(default_factory=list, alias="importV6")

    @model_validator(mode="after")
    def _rules_fit_their_family(self) -> BGPFilterSpec:
        for name, version in _FILTER_LISTS:
            alias = BGPFilterSpec.model_fields[name].alias
            bits = _PREFIX_BITS[version]
            for i, rule in enumerate(getattr(self, name)):
                if rule.cidr and (got := network_of(rule.cidr).version) != version:
                    other = alias[:-1] + str(got)
                    raise FieldError(f"{alias}.{i}.cidr", f"cidr {rule.cidr} is IPv{got}, but {alias} "
                                     f"holds IPv{version} rules; put the rule in {other}")
                for end in ("min", "max"):
                    value = getattr(rule.prefix_length, end, None)
                    if value is not None and value > bits:
                        raise FieldError(f"{alias}.{i}.prefixLength.{end}",
                                         f"prefixLength.{end} {value} is longer than an IPv{version} "
                                         f"prefix can be ({bits})")
        return self


class BGPFilter(Resource):
    """Import and export rules that BGPPeers name in `filters`."""

    kind: Literal["BGPFilter"] = "BGPFilter"
    metadata: ObjectMeta
    spec: BGPFilterSpec = Field(default_factory=BGPFilterSpec)


register(BGPFilter, plural="bgpfilters", short_names=("bgpf", "bgpfs", "bf", "bfs"))
