"""Who a node peers with: the BGP sessions Calico's confd renders for it (calico.md §2.4).

Pure: Node, BGPPeer and BGPConfiguration values in, `Session` values out; no I/O and no datastore
import. percale-node's BGP driver calls `sessions_for` whenever one of those kinds changes and
turns the result into ExaBGP neighbors (bgpd/exabgp_config.py); `local_speaker` gives the node's
own router ID, addresses, AS and listen port from the same inputs.

The computation follows confd's two stages, so corner cases come out as Calico's do:

1. Peerings (confd `client.go`, `updatePeersV1`). BGPPeers expand into peerings keyed by peer
   address and port: global BGPPeers first; then node-scoped ones, skipped where a global peering
   has the same key; then the automatic reverse peerings that make a peering between two Calico
   nodes symmetric (none for `reversePeering: Manual`). The first peering for a key wins. confd
   walks BGPPeers in Go map order, which is random; here they go in name order.
2. Sessions (confd `bgp_processor.go`), per address family: the node-to-node mesh, then global
   peerings, then this node's node-specific ones, each with Calico's name, port, AS numbers,
   passive flag and route-reflector settings.

Deliberate differences from confd:
* BIRD can run `Mesh_10_0_0_2` beside `Node_10_0_0_2`, or `Global_10_0_0_9` beside
  `Node_10_0_0_9_port_1790`; ExaBGP holds one neighbour per peer address (its configuration
  refuses a second one as a "duplicate peer definition", and with it every session of the
  node). So sessions with the same peer address, whatever their ports, collapse to the first
  by Calico's precedence: mesh, then global, then node-specific, and by BGPPeer name within a
  class. `sessions_with_clashes` says which were left out, for the agent to log.
* Whether a peerIP names a Calico node (for the reverse peering and the default port) compares the
  port with that node's effective listen port. confd's Go also rejects the node when a per-node
  listenPort matches but a different global listenPort is set, which leaves a one-sided peering.
* BGPPeers with `localWorkloadSelector` (peering with local pods) are not expanded yet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from percale.api import selector
from percale.api.bgp import (
    DEFAULT_LISTEN_PORT,
    BGPConfiguration,
    BGPConfigurationSpec,
    BGPPassword,
    BGPPeer,
    BGPPeerSpec,
)
from percale.api.fields import duration_seconds, split_peer_ip
from percale.api.node import Node

__all__ = [
    "DEFAULT_RESTART_TIME", "GLOBAL", "MESH", "NODE", "Clash", "LocalSpeaker", "SecretRef",
    "Session", "SessionKind", "local_speaker", "node_addresses", "router_id", "sessions_for",
    "sessions_with_clashes",
]

# The PEER TYPE column of `calicoctl node status` (calico.md §5.2).
SessionKind = Literal["node-to-node mesh", "global", "node specific"]
MESH: SessionKind = "node-to-node mesh"
GLOBAL: SessionKind = "global"
NODE: SessionKind = "node specific"
# BIRD protocol name prefixes, which `node status` parses back into the kinds above.
_NAME_PREFIX = {MESH: "Mesh", GLOBAL: "Global", NODE: "Node"}
# Which session keeps a peer address that several want (Calico's order of the three kinds).
_PRECEDENCE = {MESH: 0, GLOBAL: 1, NODE: 2}

# BIRD's graceful-restart time; Calico renders another only for maxRestartTime or
# nodeMeshMaxRestartTime (calico.md §2.7).
DEFAULT_RESTART_TIME = 120


class SecretRef(NamedTuple):
    """Where a session's TCP-MD5 password is kept: key `key` of Secret `name`. The agent resolves
    it; a peering computation that read secrets would no longer be pure."""

    name: str
    key: str


@dataclass(frozen=True)
class Session:
    """One BGP session this node should hold, as confd would render it for BIRD."""

    name: str  # BIRD protocol name: Mesh_10_0_0_2, Global_<ip>, Node_<ip>[_port_<n>]
    kind: SessionKind
    family: int  # 4 or 6
    peer_address: str
    peer_port: int
    peer_as: int
    local_as: int
    # The source address of the TCP connection; None when the BGPPeer says sourceAddress: None.
    local_address: str | None
    # Wait for the peer to connect. Mesh pairs (and global peerings with another Calico node)
    # have exactly one active side, so a restarting side's graceful restart is not aborted by
    # the other side's connection racing it.
    passive: bool = False
    password: SecretRef | None = None
    restart_time: int = DEFAULT_RESTART_TIME  # seconds
    keepalive_time: int | None = None  # seconds; None keeps the speaker's default
    # This node reflects routes to the peer (RFC 4456) within cluster `cluster_id`.
    route_reflector_client: bool = False
    cluster_id: str | None = None
    ttl_security: int | None = None  # GTSM hops (RFC 5082); None: plain multihop
    keep_next_hop: bool = False
    next_hop_self: bool = False
    # The percale node at the other end, for mesh and node-derived (peerSelector) sessions.
    peer_node: str | None = None
    # BIRD's `allow local as N`: the peer's routes may hold our AS this many times in their
    # AS_PATH (BGPPeer numAllowedLocalASNumbers); the RIB applies it.
    allow_local_as: int = 0
    # The BGPFilters the BGPPeer names, in order (bgpd/filters.py); mesh sessions have none.
    filters: tuple[str, ...] = ()
    # BGPPeer reachableBy: the gateway the peer's address is routed through, as a host route
    # of its own (bgpd/peer_routes.py), so that the route to it is never one learned over BGP.
    reachable_by: str | None = None
    # The BGPPeer the session comes from (None for the mesh). Where it came from, not a setting
    # of the session: left out of comparisons, so renaming a BGPPeer changes no session.
    bgp_peer: str | None = field(default=None, compare=False)

    @property
    def origin(self) -> str:
        """Where the session comes from, in words a user can look up."""
        if self.bgp_peer is not None:
            return f"BGPPeer {self.bgp_peer}"
        return f"the node-to-node mesh (node {self.peer_node})"


class Clash(NamedTuple):
    """A session left out because `kept` has its peer address: ExaBGP holds one neighbour per
    peer address."""

    dropped: Session
    kept: Session

    def __str__(self) -> str:
        dropped, kept = self.dropped, self.kept
        return (f"BGP session {dropped.name} ({dropped.origin}, port {dropped.peer_port}) is left "
                f"out: {dropped.peer_address} already has session {kept.name} ({kept.origin}, "
                f"port {kept.peer_port}), and ExaBGP holds one session per peer address")


@dataclass(frozen=True)
class LocalSpeaker:
    """This node's own side of every session."""

    node: str
    router_id: str | None  # None: no IPv4 address and no explicit router ID to use instead
    ipv4_address: str | None
    ipv6_address: str | None
    as_number: int
    listen_port: int
    cluster_id: str | None  # set: this node is a route reflector


def node_addresses(node: Node) -> dict[int, str]:
    """The node's BGP addresses by family, without their prefix lengths ({4: "10.0.0.5"})."""
    bgp = node.spec.bgp
    if bgp is None:
        return {}
    found = ((4, bgp.ipv4_address), (6, bgp.ipv6_address))
    return {family: str(ipaddress.ip_interface(iface).ip) for family, iface in found if iface}


def router_id(node: Node, setting: str | None = None) -> str | None:
    """The BGP router ID, as CALICO_ROUTER_ID sets it: unset, the node's IPv4 address; `hash`, an
    address derived from the node name (for IPv6-only nodes); anything else, used as given.

    The router ID is four bytes even for IPv6 sessions (RFC 6286), so an IPv6-only node without a
    setting has none (None).
    """
    if setting == "hash":
        return _hashed_router_id(node.metadata.name)
    if setting:
        return setting
    return node_addresses(node).get(4)


def _hashed_router_id(name: str) -> str:
    # confd's HashToIPv4: the first four bytes of SHA-256, moved out of class D/E (224.0.0.0 and
    # up), which are not valid router IDs.
    first, *rest = hashlib.sha256(name.encode()).digest()[:4]
    return ".".join(str(b) for b in (first - 32 if first > 223 else first, *rest))


def local_speaker(
    node_name: str, nodes: Iterable[Node], configs: Iterable[BGPConfiguration],
    router_id_setting: str | None = None,
) -> LocalSpeaker | None:
    """This node's router ID, addresses, AS and listen port; None when the node is unknown."""
    node = next((n for n in nodes if n.metadata.name == node_name), None)
    if node is None:
        return None
    cluster = _Cluster.build([node], configs)
    host = cluster.hosts[node_name]
    return LocalSpeaker(
        node=node_name,
        router_id=router_id(node, router_id_setting),
        ipv4_address=host.addresses.get(4),
        ipv6_address=host.addresses.get(6),
        as_number=cluster.as_of(host),
        listen_port=cluster.port_of(host) or DEFAULT_LISTEN_PORT,
        cluster_id=host.cluster_id,
    )


def sessions_for(
    node_name: str, nodes: Iterable[Node], peers: Iterable[BGPPeer],
    configs: Iterable[BGPConfiguration],
) -> list[Session]:
    """Every BGP session `node_name` should hold, IPv4 and IPv6, sorted by family then peer
    address: at most one per peer address. A node that is unknown or has no BGP address has
    none."""
    return sessions_with_clashes(node_name, nodes, peers, configs)[0]


def sessions_with_clashes(
    node_name: str, nodes: Iterable[Node], peers: Iterable[BGPPeer],
    configs: Iterable[BGPConfiguration],
) -> tuple[list[Session], list[Clash]]:
    """`sessions_for`'s sessions, and the sessions left out because another has their peer
    address (one per peer address: ExaBGP keys its neighbours by it; two made its whole
    configuration invalid, and every session of the node went down with it)."""
    cluster = _Cluster.build(nodes, configs)
    me = cluster.hosts.get(node_name)
    if me is None or not me.addresses:
        return [], []
    global_peerings, node_peerings = _peerings(me, list(peers), cluster)
    candidates: list[Session] = []
    # An address of a family this node has no address in is skipped: it runs no speaker there.
    for family in sorted(me.addresses):
        candidates += _mesh(me, family, cluster)
    for kind, peerings in ((GLOBAL, global_peerings), (NODE, node_peerings)):
        for peering in peerings.values():
            if peering.family in me.addresses and (session := _render(peering, kind, me, cluster)):
                candidates.append(session)
    # Stable: the mesh keeps its node order where two nodes share an address.
    candidates.sort(key=lambda s: (_PRECEDENCE[s.kind], s.bgp_peer or "", s.name))
    chosen: dict[str, Session] = {}
    clashes = []
    for session in candidates:
        kept = chosen.setdefault(session.peer_address, session)
        if kept is not session:
            clashes.append(Clash(session, kept))
    return sorted(chosen.values(), key=_session_order), clashes


def _session_order(s: Session) -> tuple[int, int, int, str]:
    return s.family, int(ipaddress.ip_address(s.peer_address)), s.peer_port, s.name


# ---------------------------------------------------------------------------------------------
# The cluster as confd's key tree sees it (calico.md §2.4: /calico/bgp/v1/global, /host/<node>)


@dataclass(frozen=True)
class _Host:
    name: str
    labels: dict[str, str]
    addresses: dict[int, str]
    as_number: int | None  # None: the global AS
    cluster_id: str | None
    listen_port: int | None  # from its node.<name> BGPConfiguration


@dataclass(frozen=True)
class _Cluster:
    hosts: dict[str, _Host]  # in name order
    as_number: int
    mesh_enabled: bool
    # Unset stays None (confd's 0): a peerSelector port then gets no `_port_` in the session name,
    # while an explicit 179 does.
    listen_port: int | None
    mesh_password: SecretRef | None
    mesh_restart_time: int | None

    @classmethod
    def build(cls, nodes: Iterable[Node], configs: Iterable[BGPConfiguration]) -> _Cluster:
        configs = list(configs)
        default = next((c.spec for c in configs if c.is_global), BGPConfigurationSpec())
        node_ports = {c.node: c.spec.listen_port for c in configs if not c.is_global}
        hosts = {}
        for node in sorted(nodes, key=lambda n: n.metadata.name):
            bgp, name = node.spec.bgp, node.metadata.name
            hosts[name] = _Host(
                name=name,
                labels=node.metadata.labels,
                addresses=node_addresses(node),
                as_number=bgp.as_number if bgp else None,
                cluster_id=bgp.route_reflector_cluster_id if bgp else None,
                listen_port=node_ports.get(name),
            )
        restart = default.node_mesh_max_restart_time
        return cls(
            hosts=hosts,
            as_number=default.effective_as_number,
            mesh_enabled=default.effective_node_to_node_mesh_enabled,
            listen_port=default.listen_port,
            mesh_password=_secret(default.node_mesh_password),
            mesh_restart_time=None if restart is None else _seconds(restart),
        )

    def as_of(self, host: _Host) -> int:
        return self.as_number if host.as_number is None else host.as_number

    def port_of(self, host: _Host) -> int | None:
        """Where `host` listens, if configured: its own override, else the global listenPort."""
        return self.listen_port if host.listen_port is None else host.listen_port

    def matching(self, selector_text: str) -> list[_Host]:
        return [h for h in self.hosts.values() if selector.matches(selector_text, h.labels)]

    def local_hosts(self, spec: BGPPeerSpec) -> list[_Host]:
        """The nodes a BGPPeer's node / nodeSelector picks; every node when it sets neither."""
        if spec.node_selector:
            return self.matching(spec.node_selector)
        if spec.node:
            return [self.hosts[spec.node]] if spec.node in self.hosts else []
        return list(self.hosts.values())

    def hosts_at(self, address: str, as_number: int, port: int | None) -> list[_Host]:
        """The nodes a peerIP/asNumber (and port, when given) describes (confd nodesWithIPPortAndAS)."""
        return [
            h for h in self.hosts.values()
            if address in h.addresses.values()
            and self.as_of(h) == as_number
            and (port is None or (self.port_of(h) or DEFAULT_LISTEN_PORT) == port)
        ]

    def is_node_address(self, address: str) -> bool:
        return any(address in h.addresses.values() for h in self.hosts.values())


def _secret(password: BGPPassword | None) -> SecretRef | None:
    if password is None:
        return None
    return SecretRef(password.secret_key_ref.name, password.secret_key_ref.key)


def _seconds(duration: str) -> int:
    # Go's math.Round, as confd uses: halves round away from zero (Python's round() goes to even).
    return math.floor(duration_seconds(duration) + 0.5)


# ---------------------------------------------------------------------------------------------
# Stage 1: BGPPeers → peerings


@dataclass(frozen=True)
class _Peering:
    """One peering as confd stores it under .../peer_v4/<ip>[-<port>] (its bgpPeer JSON)."""

    address: str
    port: int | None
    as_number: int
    local_as: int | None = None
    cluster_id: str | None = None  # the remote node's, for node-derived peerings
    calico_node: bool = False  # a peerIP that is some node's address
    peer_node: str | None = None
    password: SecretRef | None = None
    use_node_ip: bool = True
    restart_time: int | None = None
    keepalive_time: int | None = None
    ttl_security: int | None = None
    keep_original_next_hop: bool = False
    next_hop_mode: str | None = None
    allow_local_as: int = 0
    filters: tuple[str, ...] = ()
    reachable_by: str | None = None  # peerIP peerings only, as confd's
    bgp_peer: str | None = None  # the BGPPeer's name, which the log names in a clash

    @property
    def key(self) -> tuple[str, int | None]:
        return self.address, self.port

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


def _settings(peer: BGPPeer) -> dict:
    """What every peering a BGPPeer makes carries, forward or reverse (confd
    setPeerConfigFieldsFromV3Resource, plus the TTL and next-hop fields nodeAsBGPPeers copies)."""
    spec = peer.spec
    return {
        "bgp_peer": peer.metadata.name,
        "password": _secret(spec.password),
        "use_node_ip": spec.source_address == "UseNodeIP",
        "restart_time": None if spec.max_restart_time is None else _seconds(spec.max_restart_time),
        "keepalive_time": None if spec.keepalive_time is None else _seconds(spec.keepalive_time),
        "ttl_security": spec.ttl_security,
        # nextHopMode supersedes the deprecated flag (validation forbids setting both).
        "keep_original_next_hop": spec.next_hop_mode is None and spec.keep_original_next_hop,
        "next_hop_mode": spec.next_hop_mode,
        # Named BGPFilters, in order; confd carries them on every peering a BGPPeer makes.
        "filters": tuple(spec.filters or ()),
    }


def _node_peerings(
    host: _Host, families: Iterable[int], cluster: _Cluster, peer: BGPPeer,
) -> list[_Peering]:
    """Peerings with a percale node, one per family it has an address in (confd nodeAsBGPPeers)."""
    return [
        _Peering(
            address=host.addresses[family],
            port=cluster.port_of(host),
            as_number=cluster.as_of(host),
            cluster_id=host.cluster_id,
            peer_node=host.name,
            **_settings(peer),
        )
        for family in families if family in host.addresses
    ]


def _forward(peer: BGPPeer, cluster: _Cluster) -> list[_Peering]:
    spec = peer.spec
    if spec.local_workload_selector:
        return []
    if spec.peer_selector:
        return [
            p for host in cluster.matching(spec.peer_selector)
            for p in _node_peerings(host, (4, 6), cluster, peer)
        ]
    ip, port = split_peer_ip(spec.peer_ip)
    address = str(ip)
    if port is None:
        # A peerIP that is a Calico node (same address and AS) is dialled on that node's port.
        same = cluster.hosts_at(address, spec.as_number, None)
        port = cluster.port_of(same[0]) if same else None
    return [_Peering(
        address=address,
        port=port,
        as_number=spec.as_number,
        local_as=spec.local_as_number,
        calico_node=cluster.is_node_address(address),
        # confd copies numAllowedLocalASNumbers onto peerIP peerings only: peerSelector and
        # reverse peerings (between percale nodes) never carry it.
        allow_local_as=spec.num_allowed_local_as_numbers or 0,
        reachable_by=spec.reachable_by and str(spec.reachable_by),
        **_settings(peer),
    )]


def _reverse(peer: BGPPeer, me: _Host, cluster: _Cluster) -> list[_Peering]:
    """The peerings `me` gets because a BGPPeer names it as the remote side: without them a
    peering between two percale nodes would be configured at one end only."""
    spec = peer.spec
    if spec.reverse_peering == "Manual" or spec.local_workload_selector:
        return []
    if spec.peer_selector:
        remote_ends, families = cluster.matching(spec.peer_selector), (4, 6)
    else:
        ip, port = split_peer_ip(spec.peer_ip)
        remote_ends, families = cluster.hosts_at(str(ip), spec.as_number, port), (ip.version,)
    if me.name not in {h.name for h in remote_ends}:
        return []
    return [
        p for host in cluster.local_hosts(spec)
        for p in _node_peerings(host, families, cluster, peer)
    ]


def _peerings(
    me: _Host, peers: list[BGPPeer], cluster: _Cluster,
) -> tuple[dict[tuple[str, int | None], _Peering], dict[tuple[str, int | None], _Peering]]:
    """This node's global and node-specific peerings, each keyed by (address, port)."""
    peers = sorted(peers, key=lambda p: p.metadata.name)
    global_peerings: dict[tuple[str, int | None], _Peering] = {}
    node_peerings: dict[tuple[str, int | None], _Peering] = {}

    def add_node_peering(peering: _Peering) -> None:
        # A global peering to the same address and port makes a node-specific one redundant.
        if peering.key not in global_peerings:
            node_peerings.setdefault(peering.key, peering)

    for peer in peers:
        if peer.spec.scope == "global":
            for peering in _forward(peer, cluster):
                global_peerings.setdefault(peering.key, peering)
    for peer in peers:
        if peer.spec.scope != "global" and me.name in {h.name for h in cluster.local_hosts(peer.spec)}:
            for peering in _forward(peer, cluster):
                add_node_peering(peering)
    for peer in peers:
        for peering in _reverse(peer, me, cluster):
            add_node_peering(peering)
    return global_peerings, node_peerings


# ---------------------------------------------------------------------------------------------
# Stage 2: mesh and peerings → sessions


def _name(kind: SessionKind, address: str, port: int | None) -> str:
    name = f"{_NAME_PREFIX[kind]}_{address.replace('.', '_').replace(':', '_')}"
    return f"{name}_port_{port}" if port else name


def _mesh(me: _Host, family: int, cluster: _Cluster) -> Iterator[Session]:
    # A route reflector stays out of the mesh, and nobody meshes with one: its sessions come
    # from BGPPeers (calico.md §2.8).
    if me.cluster_id or not cluster.mesh_enabled:
        return
    own = me.addresses[family]
    restart_time = cluster.mesh_restart_time
    for host in cluster.hosts.values():
        address = host.addresses.get(family)
        if address is None or address == own or host.cluster_id:
            continue
        yield Session(
            name=_name(MESH, address, None),  # mesh names never carry the port
            kind=MESH,
            family=family,
            peer_address=address,
            peer_port=cluster.port_of(host) or DEFAULT_LISTEN_PORT,
            peer_as=cluster.as_of(host),
            local_as=cluster.as_of(me),
            local_address=own,
            # Calico compares the address text, not the numbers: 10.0.0.9 > 10.0.0.10. Both ends
            # apply the same rule, so exactly one of them connects.
            passive=address > own,
            password=cluster.mesh_password,
            restart_time=DEFAULT_RESTART_TIME if restart_time is None else restart_time,
            peer_node=host.name,
        )


def _render(peering: _Peering, kind: SessionKind, me: _Host, cluster: _Cluster) -> Session | None:
    own = me.addresses[peering.family]
    if peering.address == own:
        return None  # a selector or a reverse peering that reached this node itself
    local_as = cluster.as_of(me) if peering.local_as is None else peering.local_as
    ibgp = peering.as_number == local_as
    # RFC 4456: a reflector's iBGP peers outside its own cluster are its clients.
    reflect = bool(me.cluster_id) and ibgp and peering.cluster_id != me.cluster_id
    return Session(
        name=_name(kind, peering.address, peering.port),
        kind=kind,
        family=peering.family,
        peer_address=peering.address,
        peer_port=peering.port or DEFAULT_LISTEN_PORT,
        peer_as=peering.as_number,
        local_as=local_as,
        local_address=own if peering.use_node_ip else None,
        # Not without a source address: ExaBGP listens for a neighbour only on its
        # local-address, so such a session could neither connect nor be connected to.
        passive=(kind == GLOBAL and peering.calico_node and peering.address > own
                 and peering.use_node_ip),
        password=peering.password,
        restart_time=DEFAULT_RESTART_TIME if peering.restart_time is None else peering.restart_time,
        keepalive_time=peering.keepalive_time,
        route_reflector_client=reflect,
        cluster_id=me.cluster_id if reflect else None,
        ttl_security=peering.ttl_security or None,
        # The deprecated keepOriginalNextHop only ever applied to eBGP (calico.md §2.2).
        keep_next_hop=peering.next_hop_mode == "Keep" or (peering.keep_original_next_hop and not ibgp),
        next_hop_self=peering.next_hop_mode == "Self",
        peer_node=peering.peer_node,
        allow_local_as=peering.allow_local_as,
        filters=peering.filters,
        reachable_by=peering.reachable_by,
        bgp_peer=peering.bgp_peer,
    )
