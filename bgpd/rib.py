"""The RIB: the routes percale-node learns over BGP, and the routes it wants in the kernel.

Where it sits: `bgpd.exabgp_json` turns ExaBGP's JSON events into calls here; the FIB layer
reads `Rib.changes()` and applies them to the kernel; a route-reflector node asks `reflect()` what
to send to its clients. Nothing here does I/O or reads a clock: time is passed in, so every
behaviour, graceful restart included, is tested without sleeping.

The names are RFC 4271's, as in GoBGP's table package: a `Path` is one route from one peer, the
Adj-RIB-In holds each peer's paths unprocessed (RFC 4271 §3.2), import policy then decides which
of them are candidates, and the Decision Process (§9.1) picks, per prefix, the best path and the
paths equal to it for ECMP. The result is the desired FIB: prefix -> frozenset of next hops.

Import policy is Calico's (reference/calico.md §2.6, §2.9) plus the loop checks BGP itself asks
for: a path is not a candidate when it is our own route coming back (its ORIGINATOR_ID is our
router id, its next hop is one of our addresses, its prefix is one of our own blocks, or its
CLUSTER_LIST or AS_PATH already holds us), when its prefix is outside every IP pool, or when it
lies inside a service CIDR (every node announces those and kube-proxy serves them locally;
Calico's kernel filter rejects them, `/rejectcidrs`). How often the AS_PATH may hold our AS is
per peer, BIRD's `allow local as N` (BGPPeer numAllowedLocalASNumbers). Policy is applied between
the Adj-RIB-In and the decision, not by dropping paths on arrival, so a pool added, or an
allowance raised, later takes effect at once, without asking every peer for a route refresh.

Each peer's BGPFilters (bgpd/filters.py) judge its paths first: Reject refuses a path. Accept
overrides one rule only, "outside every IP pool": Calico's BIRD installs whatever a peer sends
outside the pools (a top-of-rack router's default route, external networks), percale only what
a filter accepts (DESIGN.md item 4 keeps the refusal as the default). Own routes, loops, service
CIDRs and own blocks stay refused whatever a filter says. Only the peers whose filters have an
import Accept are asked about prefixes outside the pools, so for the others such a prefix costs
what it did: its cached verdict, and no look at its paths.

Graceful restart (RFC 4724 §4.2, the Receiving Speaker): ExaBGP 5.0 does nothing when a peer
restarts (reference/exabgp.md §0 finding 3), so the RIB keeps the peer's paths as stale until the
peer's End-of-RIB or until its restart time runs out.

Storage, as BIRD and GoBGP keep a large table: one `Destination` per prefix holds the paths from
every peer (the peers' Adj-RIBs-In are those paths, found per peer through the destinations, not
a second dict keyed by NLRI); a prefix with one path holds that path alone, without a dict; the
attributes other than the next hop are one `PathAttributes` shared by every path of an UPDATE;
prefixes with the same next hops share one frozenset, which is also what the FIB layer caches
its messages by. 100k routes from one peer cost about 38 MB here (was ~150 MB), half of it the
ipaddress prefix objects, which the FIB layer keys the kernel's routes by too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, ItemsView, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import NamedTuple

from percale.bgpd.prefixes import Prefix, parse_prefix

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)
_PREFIX_TYPES = (ipaddress.IPv4Network, ipaddress.IPv6Network)

# RFC 4271 §5.1.5 leaves the default to local policy; 100 is what BIRD, GoBGP and FRR use.
DEFAULT_LOCAL_PREF = 100

AS_SEQUENCE = "as-sequence"
AS_SET = "as-set"


class Origin(IntEnum):
    """ORIGIN (RFC 4271 §5.1.1); a lower value is preferred (§9.1.2.2 b)."""

    IGP = 0
    EGP = 1
    INCOMPLETE = 2


class AsPathSegment(NamedTuple):
    """One AS_PATH segment: `as-sequence` or `as-set`, ExaBGP's JSON element names."""

    type: str
    asns: tuple[int, ...]


class NLRI(NamedTuple):
    """What a path is a route to: the prefix, and the ADD-PATH path identifier (RFC 7911 §3),
    0 when the peer sends one path per prefix. A peer's Adj-RIB-In is keyed by it."""

    prefix: Prefix
    path_id: int = 0


def as_address(value: str | Address) -> Address:
    return value if isinstance(value, _ADDRESS_TYPES) else ipaddress.ip_address(value)


def as_prefix(value: str | Prefix) -> Prefix:
    """A network; host bits set is a ValueError, as it would be on the wire."""
    return value if isinstance(value, _PREFIX_TYPES) else parse_prefix(value)


def as_nlri(value: NLRI | tuple | str | Prefix) -> NLRI:
    if isinstance(value, NLRI):
        return value
    if isinstance(value, tuple):
        return NLRI(as_prefix(value[0]), value[1])
    return NLRI(as_prefix(value))


@dataclass(frozen=True, slots=True)
class Peer:
    """A BGP neighbour as the decision process sees it (GoBGP's PeerInfo)."""

    address: Address
    asn: int
    local_asn: int
    # BGP Identifier from the peer's OPEN; None until one was seen.
    router_id: ipaddress.IPv4Address | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", as_address(self.address))
        if self.router_id is not None:
            object.__setattr__(self, "router_id", ipaddress.IPv4Address(self.router_id))

    @property
    def ibgp(self) -> bool:
        return self.asn == self.local_asn


class PathAttributes(NamedTuple):
    """A path's attributes apart from its next hop (RFC 4271 §5): one object for every prefix of
    an UPDATE, and for every UPDATE that carries the same ones, as BIRD's rta and GoBGP's
    PathAttribute lists are shared. A 100k-route table from one peer holds a handful of these,
    not 100k."""

    origin: Origin = Origin.IGP
    as_path: tuple[AsPathSegment, ...] = ()
    med: int | None = None
    local_pref: int | None = None
    originator_id: ipaddress.IPv4Address | None = None
    cluster_list: tuple[ipaddress.IPv4Address, ...] = ()
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def of(cls, origin: Origin | str | int = Origin.IGP, as_path: tuple = (),
           med: int | None = None, local_pref: int | None = None,
           originator_id: str | ipaddress.IPv4Address | None = None,
           cluster_list: Iterable[str | ipaddress.IPv4Address] = (),
           communities: Iterable[tuple[int, int]] = (),
           large_communities: Iterable[tuple[int, int, int]] = ()) -> PathAttributes:
        """Attributes from friendlier forms: strings for addresses and ORIGIN, a plain tuple of
        AS numbers taken as one AS_SEQUENCE."""
        if not isinstance(origin, Origin):
            origin = Origin[origin.upper()] if isinstance(origin, str) else Origin(origin)
        as_path = tuple(as_path)
        if as_path and not isinstance(as_path[0], AsPathSegment):
            if isinstance(as_path[0], int):
                as_path = (AsPathSegment(AS_SEQUENCE, as_path),)
            else:
                as_path = tuple(AsPathSegment(t, tuple(a)) for t, a in as_path)
        if originator_id is not None and not isinstance(originator_id, ipaddress.IPv4Address):
            originator_id = ipaddress.IPv4Address(originator_id)
        cluster_list = tuple(cluster_list)
        if cluster_list and not isinstance(cluster_list[0], ipaddress.IPv4Address):
            cluster_list = tuple(ipaddress.IPv4Address(c) for c in cluster_list)
        return cls(origin, as_path, med, local_pref, originator_id, cluster_list,
                   tuple(communities), tuple(large_communities))


_NO_ATTRIBUTES = PathAttributes()
_PATH_FIELDS = ("prefix", "next_hop", "peer", "path_id", *PathAttributes._fields)


class Path:
    """One route from one peer: an NLRI with its next hop and path attributes (RFC 4271 §5).

    Strings are accepted and normalised (`prefix="10.244.1.0/26"`, `next_hop="10.0.0.2"`), and a
    plain tuple of AS numbers is taken as one AS_SEQUENCE. Immutable; the attributes other than
    the next hop live in a shared PathAttributes (`attributes`), each readable here by name.
    """

    __slots__ = ("prefix", "next_hop", "peer", "path_id", "attributes")

    prefix: Prefix
    next_hop: Address
    peer: Peer
    path_id: int
    attributes: PathAttributes

    def __init__(self, prefix: str | Prefix, next_hop: str | Address, peer: Peer,
                 path_id: int = 0, origin: Origin | str | int = Origin.IGP, as_path: tuple = (),
                 med: int | None = None, local_pref: int | None = None,
                 originator_id: str | ipaddress.IPv4Address | None = None,
                 cluster_list: Iterable[str | ipaddress.IPv4Address] = (),
                 communities: Iterable[tuple[int, int]] = (),
                 large_communities: Iterable[tuple[int, int, int]] = ()) -> None:
        set_ = object.__setattr__
        set_(self, "prefix", prefix if isinstance(prefix, _PREFIX_TYPES) else parse_prefix(prefix))
        set_(self, "next_hop",
             next_hop if isinstance(next_hop, _ADDRESS_TYPES) else ipaddress.ip_address(next_hop))
        set_(self, "peer", peer)
        set_(self, "path_id", path_id)
        set_(self, "attributes", PathAttributes.of(origin, as_path, med, local_pref, originator_id,
                                                   cluster_list, communities, large_communities))

    @classmethod
    def with_attributes(cls, prefix: Prefix, next_hop: Address, peer: Peer, path_id: int = 0,
                        attributes: PathAttributes = _NO_ATTRIBUTES) -> Path:
        """A path from parts already in their final types (a decoder's), the attributes shared
        as they are: nothing is converted or checked."""
        self = object.__new__(cls)
        set_ = object.__setattr__
        set_(self, "prefix", prefix)
        set_(self, "next_hop", next_hop)
        set_(self, "peer", peer)
        set_(self, "path_id", path_id)
        set_(self, "attributes", attributes)
        return self

    def replace(self, **changes) -> Path:
        """This path with some fields changed (any of `Path`'s arguments)."""
        values = {name: getattr(self, name) for name in _PATH_FIELDS}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"Path has no field {sorted(unknown)[0]!r}")
        values.update(changes)
        return Path(**values)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a Path is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a Path is immutable")

    def _key(self) -> tuple:
        return (self.prefix, self.next_hop, self.peer, self.path_id, self.attributes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Path):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _PATH_FIELDS)
        return f"Path({fields})"

    def __reduce__(self) -> tuple:
        return (Path.with_attributes, (self.prefix, self.next_hop, self.peer, self.path_id,
                                       self.attributes))

    origin = property(lambda self: self.attributes.origin)
    as_path = property(lambda self: self.attributes.as_path)
    med = property(lambda self: self.attributes.med)
    local_pref = property(lambda self: self.attributes.local_pref)
    originator_id = property(lambda self: self.attributes.originator_id)
    cluster_list = property(lambda self: self.attributes.cluster_list)
    communities = property(lambda self: self.attributes.communities)
    large_communities = property(lambda self: self.attributes.large_communities)

    @property
    def nlri(self) -> NLRI:
        return NLRI(self.prefix, self.path_id)

    @property
    def as_path_length(self) -> int:
        """RFC 4271 §9.1.2.2 a: an AS_SET counts as 1, whatever its size."""
        return sum(1 if seg.type == AS_SET else len(seg.asns) for seg in self.as_path)

    @property
    def neighbour_as(self) -> int:
        """RFC 4271 §9.1.2.2 c, neighborAS(): the first AS of the path; the local AS when the path
        is empty or begins with an AS_SET (the route originated, or was aggregated, in our AS)."""
        as_path = self.as_path
        if as_path and as_path[0].type == AS_SEQUENCE and as_path[0].asns:
            return as_path[0].asns[0]
        return self.peer.local_asn

    @property
    def degree_of_preference(self) -> int:
        """RFC 4271 §9.1.1: LOCAL_PREF for a route from an internal peer. §5.1.5: a LOCAL_PREF
        received from an external peer MUST be ignored, so eBGP routes get the default."""
        local_pref = self.attributes.local_pref
        if local_pref is not None and self.peer.ibgp:
            return local_pref
        return DEFAULT_LOCAL_PREF


@dataclass(frozen=True)
class FibChanges:
    """What changed in the desired FIB since the last `Rib.changes()`: the FIB layer's to-do."""

    added: Mapping[Prefix, frozenset[Address]] = field(default_factory=dict)
    changed: Mapping[Prefix, frozenset[Address]] = field(default_factory=dict)
    removed: frozenset[Prefix] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def select(paths: Iterable[Path]) -> tuple[Path, tuple[Path, ...]]:
    """RFC 4271 §9.1.2.2 over the candidate paths of one prefix: (best path, multipath set).

    Written as the RFC writes it, as a series of eliminations: MED (step c) compares only paths
    from the same neighbour AS, so it is not a total order and cannot be a sort key.

    The multipath set is every path still in the running after step (e), the last step that
    says anything about the route itself; steps (f) and (g) only break the tie, so the paths
    they separate are equally good and all of them carry traffic (BIRD's `merge paths`). Step (e),
    interior cost to the next hop, is equal for all: percale runs no IGP.
    """
    candidates = list(paths)
    if not candidates:
        raise ValueError("select() needs at least one path")
    if len(candidates) > 1:
        # §9.1.1: the highest degree of preference
        top = max(p.degree_of_preference for p in candidates)
        candidates = [p for p in candidates if p.degree_of_preference == top]
    if len(candidates) > 1:
        # §9.1.2.2 a: the fewest AS numbers
        shortest = min(p.as_path_length for p in candidates)
        candidates = [p for p in candidates if p.as_path_length == shortest]
    if len(candidates) > 1:
        # §9.1.2.2 b: the lowest ORIGIN
        lowest = min(p.origin for p in candidates)
        candidates = [p for p in candidates if p.origin == lowest]
    if len(candidates) > 1:
        # §9.1.2.2 c: the lowest MED among paths from the same neighbour AS; a missing MED is
        # the lowest possible value
        best_med: dict[int, int] = {}
        for p in candidates:
            med = p.med or 0
            if best_med.get(p.neighbour_as, med) >= med:
                best_med[p.neighbour_as] = med
        candidates = [p for p in candidates if (p.med or 0) == best_med[p.neighbour_as]]
    if len(candidates) > 1 and any(not p.peer.ibgp for p in candidates):
        # §9.1.2.2 d: routes from external peers over routes from internal peers
        candidates = [p for p in candidates if not p.peer.ibgp]
    return min(candidates, key=_tie_break), tuple(candidates)


def _tie_break(path: Path) -> tuple:
    """RFC 4271 §9.1.2.2 f (lowest BGP Identifier) and g (lowest peer address), with RFC 4456 §9:
    the ORIGINATOR_ID stands in for the BGP Identifier, and the shorter CLUSTER_LIST wins between
    f and g. A peer whose Identifier is unknown sorts after every known one. Paths from one
    peer under ADD-PATH tie on all of these; the lowest path identifier, then next hop, decides,
    so the choice never depends on the order paths arrived in."""
    identifier = path.originator_id or path.peer.router_id
    return (
        (0, int(identifier)) if identifier is not None else (1, 0),
        len(path.cluster_list),
        (path.peer.address.version, int(path.peer.address)),
        path.path_id,
        (path.next_hop.version, int(path.next_hop)),
    )


def reflect(path: Path, to: Peer, *, cluster_id: str | ipaddress.IPv4Address,
            clients: Collection[Address]) -> Path | None:
    """What a route reflector sends to `to` for `path`, or None when it sends nothing.

    RFC 4456 §8: a route from a client is reflected to every other iBGP peer; a route from a
    non-client only to the clients (`clients` holds their addresses); never back to the peer it
    came from. The reflector sets ORIGINATOR_ID to the sender's BGP Identifier if it is absent,
    prepends its CLUSTER_ID to the CLUSTER_LIST, and changes nothing else, the next hop included.
    A path whose CLUSTER_LIST already holds our CLUSTER_ID has looped and is not reflected; nor is
    one back to the peer whose Identifier is its ORIGINATOR_ID, which would ignore it anyway.
    Routes learned over eBGP are not reflected: sending them to iBGP peers is ordinary
    advertisement, not reflection.
    """
    cluster = _cluster(cluster_id)
    if not reflects(path, to, cluster_id=cluster, clients=clients):
        return None
    return reflected(path, cluster)


def reflects(path: Path, to: Peer, *, cluster_id: str | ipaddress.IPv4Address,
             clients: Collection[Address]) -> bool:
    """Whether `reflect` sends `to` anything for `path`, without building what it would send:
    whatever the peer, what is reflected is the same (`reflected`), so a reflector with
    hundreds of clients builds it once per path. Raises ValueError as `reflect` does."""
    source = path.peer
    if not source.ibgp or not to.ibgp or to.address == source.address:
        return False
    if source.address not in clients and to.address not in clients:
        return False
    if _cluster(cluster_id) in path.cluster_list:
        return False
    originator = path.originator_id or source.router_id
    if originator is None:
        raise ValueError(f"cannot reflect {path.prefix}: the BGP Identifier of {source.address} is unknown")
    return to.router_id != originator


def reflected(path: Path, cluster_id: str | ipaddress.IPv4Address) -> Path:
    """`path` as a reflector sends it to any peer `reflects` allows: ORIGINATOR_ID set to the
    sender's BGP Identifier if absent, the CLUSTER_ID prepended to the CLUSTER_LIST."""
    return path.replace(originator_id=path.originator_id or path.peer.router_id,
                        cluster_list=(_cluster(cluster_id), *path.cluster_list))


def _cluster(cluster_id: str | ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    return cluster_id if isinstance(cluster_id, ipaddress.IPv4Address) else ipaddress.IPv4Address(cluster_id)


def _ranges(networks: Iterable[Prefix]) -> tuple[tuple[int, int, int, int], ...]:
    """(version, network as an int, mask, length) of each network: "inside" as integer
    arithmetic, not ipaddress's subnet_of, which caches two more addresses on every prefix it is
    asked about."""
    return tuple((n.version, int(n.network_address), int(n.netmask), n.prefixlen) for n in networks)


def _key(peer: Peer | str | Address) -> Address:
    return peer.address if isinstance(peer, Peer) else as_address(peer)


# A peer's Adj-RIB-In is keyed by NLRI; for the usual path identifier 0 the key is the prefix
# itself, which the destination already holds, rather than a new NLRI per route. A prefix and an
# NLRI never compare equal, so the two kinds of key cannot collide.
def _adj_key(prefix: Prefix, path_id: int) -> Prefix | NLRI:
    return NLRI(prefix, path_id) if path_id else prefix


def _adj_nlri(key: Prefix | NLRI) -> NLRI:
    return key if isinstance(key, NLRI) else NLRI(key)


def _adj_prefix(key: Prefix | NLRI) -> Prefix:
    return key.prefix if isinstance(key, NLRI) else key


def _same_peer(a: Address, b: Address) -> bool:
    # Paths from one peer usually share its address object; the comparison is the slow part.
    return a is b or a == b


_UNJUDGED = object()
_CLEAN = object()
# The prefix verdict a BGPFilter import Accept overrides (Rib.set_import_filters); known by
# identity in the hot path.
OUTSIDE_POOLS = "outside every IP pool"


class Destination:
    """One prefix: its paths from every peer and what the decision made of them (GoBGP's
    Destination). The RIB's per-prefix state lives here, so one lookup serves a whole update."""

    __slots__ = ("prefix", "paths", "best", "next_hops", "verdict", "reported")

    def __init__(self, prefix: Prefix) -> None:
        self.prefix = prefix
        # None, the one path, or {(peer address, path id): path} when there are several: most
        # prefixes have a single path, and a dict for it would weigh more than the route itself
        self.paths: Path | dict[tuple[Address, int], Path] | None = None
        self.best: Path | None = None
        self.next_hops: frozenset[Address] | None = None  # its FIB entry
        self.verdict: object = _UNJUDGED  # import policy on the prefix: None or why not
        # the FIB entry at the last Rib.changes(), or _CLEAN when unchanged since
        self.reported: object = _CLEAN

    def add(self, path: Path) -> bool:
        """Add `path`, replacing the one from its peer under its path identifier; whether
        there was one."""
        paths = self.paths
        if paths is None:
            self.paths = path
            return False
        if isinstance(paths, Path):
            if paths.path_id == path.path_id and _same_peer(paths.peer.address, path.peer.address):
                self.paths = path
                return True
            self.paths = {(paths.peer.address, paths.path_id): paths,
                          (path.peer.address, path.path_id): path}
            return False
        key = (path.peer.address, path.path_id)
        replaced = key in paths
        paths[key] = path
        return replaced

    def remove(self, address: Address, path_id: int) -> Path | None:
        """Remove the path from `address` under `path_id`; the path, or None if there was none."""
        paths = self.paths
        if paths is None:
            return None
        if isinstance(paths, Path):
            if paths.path_id != path_id or not _same_peer(paths.peer.address, address):
                return None
            self.paths = None
            return paths
        path = paths.pop((address, path_id), None)
        if path is not None and len(paths) == 1:
            self.paths = next(iter(paths.values()))
        return path

    def of(self, address: Address) -> list[Path]:
        """The paths from the peer at `address` (several under ADD-PATH)."""
        paths = self.paths
        if paths is None:
            return []
        if isinstance(paths, Path):
            return [paths] if _same_peer(paths.peer.address, address) else []
        return [p for (a, _), p in paths.items() if _same_peer(a, address)]

    def all(self) -> Iterable[Path]:
        paths = self.paths
        if paths is None:
            return ()
        if isinstance(paths, Path):
            return (paths,)
        return paths.values()


class _FibView(Mapping):
    """The desired FIB, read-only and live, read from the destinations themselves: a second
    dict of every installed prefix would cost as much as a route's own state."""

    __slots__ = ("_rib",)

    def __init__(self, rib: Rib) -> None:
        self._rib = rib

    def __getitem__(self, prefix: Prefix) -> frozenset[Address]:
        destination = self._rib._destinations.get(prefix)
        if destination is None or destination.next_hops is None:
            raise KeyError(prefix)
        return destination.next_hops

    def __iter__(self):
        return (d.prefix for d in self._rib._destinations.values() if d.next_hops is not None)

    def __len__(self) -> int:
        return self._rib._installed

    def items(self):
        return _FibItems(self, self._rib)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{p!r}: {h!r}' for p, h in self.items())}}}"


class _FibItems(ItemsView):
    """Pairs straight from the destinations, not a lookup per prefix."""

    def __init__(self, view: _FibView, rib: Rib) -> None:
        super().__init__(view)
        self._rib = rib

    def __iter__(self):
        return ((d.prefix, d.next_hops) for d in self._rib._destinations.values()
                if d.next_hops is not None)


# How many distinct next-hop sets the RIB remembers to share between prefixes (one per node in a
# mesh, a few per node with ECMP); beyond that it starts again rather than grow.
_HOP_SETS_KEPT = 4096



_NOT_KNOWN = object()  # _hop_sets holds None for a next hop no route can use


def _needs_an_interface(next_hop: Address) -> bool:
    """An IPv6 link-local next hop (a peer that sends only one: BGP over a link-local session,
    or a global next hop ExaBGP left out) names no interface, which the kernel needs with it,
    and the RIB does not know the session's: the path stays the best one, to pass on, but is
    not installed. Refused by the FIB, it took every route of its batch with it."""
    return next_hop.version == 6 and next_hop.is_link_local


class Rib:
    """Adj-RIB-In per peer, the decision per prefix, and the desired FIB.

    Every method that changes paths re-decides only the prefixes it touched, and records what
    the FIB had for them before, so `changes()` reports each prefix once with its net effect.
    """

    def __init__(
        self,
        *,
        router_id: str | ipaddress.IPv4Address,
        pools: Iterable[str | Prefix],
        own_blocks: Iterable[str | Prefix] = (),
        own_addresses: Iterable[str | Address] = (),
        cluster_id: str | ipaddress.IPv4Address | None = None,
        allow_own_as: int = 0,
        service_cidrs: Iterable[str | Prefix] = (),
    ) -> None:
        self._router_id = ipaddress.IPv4Address(router_id)
        self._cluster_id = ipaddress.IPv4Address(cluster_id) if cluster_id is not None else None
        # Calico's BGPPeer.numAllowedLocalASNumbers: designs with one AS per rack need it. The
        # default for every peer, and per peer address what set_allow_own_as says.
        self._allow_own_as = allow_own_as
        self._allow_own_as_of: dict[Address, int] = {}
        # Per peer address, its BGPFilters' import verdict on a path (bgpd/filters.py): "Accept",
        # "Reject" or None (no rule matched); and those of the peers whose filters can accept,
        # the only ones asked about a prefix outside every pool.
        self._import_filters: dict[Address, Callable[[Path], str | None]] = {}
        self._import_accepts: dict[Address, Callable[[Path], str | None]] = {}
        # attributes object, peer -> _attributes_rejection's answer, for the last asked: a
        # change of the router id, cluster id or allowance (per peer) resets it
        self._attributes_memo: tuple[object, object, tuple] = (None, None, (None, None))
        self._set_pools(pools)
        self._set_service_cidrs(service_cidrs)
        self._set_own_blocks(own_blocks)
        self._set_own_addresses(own_addresses)

        # Each peer's Adj-RIB-In is the paths from it in the destinations (BIRD's one table with
        # a route per source): a second dict per peer, keyed by NLRI, cost as much memory as the
        # destinations' own. Per peer, how many paths it holds, so a peer with none costs no scan.
        self._destinations: dict[Prefix, Destination] = {}
        self._path_counts: dict[Address, int] = {}
        self._stale: dict[Address, set[Prefix | NLRI]] = {}
        self._stale_deadline: dict[Address, float] = {}
        self._installed = 0  # destinations with a FIB entry
        # destinations whose FIB entry may have changed since the last changes()
        self._dirty: list[Destination] = []
        # One frozenset per distinct set of next hops, shared by every prefix that has it.
        self._hop_sets: dict[object, frozenset[Address] | None] = {}
        self._last_hop: tuple[object, frozenset[Address]] = (None, frozenset())
        # Prefixes whose best path changed since the last take_best_changes(), kept only while
        # someone passes routes on (watch_best): the FIB's changes miss a new best path with the
        # same next hops, which a peer it is passed on to must still hear of.
        self._best_changed: dict[Prefix, None] | None = None

    # ---------------------------------------------------------------- configuration

    def _set_pools(self, pools: Iterable[str | Prefix]) -> None:
        self._pools = tuple(as_prefix(p) for p in pools)
        self._pool_ranges = _ranges(self._pools)

    def _set_service_cidrs(self, cidrs: Iterable[str | Prefix]) -> None:
        self._service_ranges = _ranges(as_prefix(c) for c in cidrs)

    def _set_own_blocks(self, blocks: Iterable[str | Prefix]) -> None:
        self._own_blocks = frozenset(as_prefix(b) for b in blocks)
        self._own_block_keys = frozenset(
            (b.version, int(b.network_address), b.prefixlen) for b in self._own_blocks)

    def _set_own_addresses(self, addresses: Iterable[str | Address]) -> None:
        self._own_addresses = frozenset(as_address(a) for a in addresses)
        # next hop -> whether it is one of ours, for the last next hop asked about: a decoder
        # hands every path of an UPDATE the same next hop object
        self._own_memo: tuple[object, bool] = (None, False)

    def set_pools(self, pools: Iterable[str | Prefix]) -> None:
        """The IP pool CIDRs; a prefix inside none of them is installed only as a BGPFilter
        import Accept lets it in."""
        # A path a filter let in outside the pools keeps being the best one when a pool comes to
        # cover its prefix (or stops covering it); whoever passes routes on must still look
        # again: only pool routes go on without an export Accept.
        outside_before = self._best_outside() if self._import_accepts else ()
        self._set_pools(pools)
        for destination in self._destinations.values():
            destination.verdict = _UNJUDGED
        self._decide_all()
        if self._import_accepts and self._best_changed is not None:
            self._best_changed.update(dict.fromkeys((*outside_before, *self._best_outside())))

    def set_service_cidrs(self, cidrs: Iterable[str | Prefix]) -> None:
        """The service CIDRs of the global BGPConfiguration: a prefix inside one is never
        installed, whoever sends it (other nodes announce the same ranges)."""
        self._set_service_cidrs(cidrs)
        for destination in self._destinations.values():
            destination.verdict = _UNJUDGED
        self._decide_all()

    def set_allow_own_as(self, allowed: Mapping[str | Address, int]) -> None:
        """How many times each peer's paths may hold our AS in their AS_PATH (BIRD's `allow
        local as N`); a peer left out gets the RIB's default. Refused paths stay in the
        Adj-RIB-In and every path is judged again, so no route refresh is needed."""
        self._allow_own_as_of = {as_address(a): n for a, n in allowed.items()}
        self._attributes_memo = (None, None, (None, None))
        self._decide_all()

    def set_identity(self, router_id: str | ipaddress.IPv4Address,
                     cluster_id: str | ipaddress.IPv4Address | None) -> None:
        """This node's router ID and route reflector cluster ID, when its Node's BGP address or
        routeReflectorClusterID changed: the own-route (ORIGINATOR_ID) and CLUSTER_LIST loop
        checks use them, and every path held is judged again."""
        self._router_id = ipaddress.IPv4Address(router_id)
        self._cluster_id = ipaddress.IPv4Address(cluster_id) if cluster_id is not None else None
        self._attributes_memo = (None, None, (None, None))
        self._decide_all()

    @property
    def identity(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address | None]:
        return self._router_id, self._cluster_id

    def set_import_filters(self, verdicts: Mapping[str | Address, Callable[[Path], str | None]],
                           accepting: Iterable[str | Address] = ()) -> None:
        """Each peer's import filter (its BGPPeer's BGPFilters): a function giving its verdict
        on a path, "Accept", "Reject" or None (no rule matched). Reject refuses the path; Accept,
        from a peer in `accepting` (those whose filters have an import Accept rule), makes a path
        outside every IP pool a candidate. Refused paths stay in the Adj-RIB-In and every path is
        judged again, so a filter changed or removed takes effect at once, without a route
        refresh."""
        self._import_filters = {as_address(a): f for a, f in verdicts.items()}
        accepting = {as_address(a) for a in accepting}
        self._import_accepts = {a: f for a, f in self._import_filters.items() if a in accepting}
        self._decide_all()

    def set_own_blocks(self, blocks: Iterable[str | Prefix]) -> None:
        """This node's blocks. Only the exact prefix is ours: a /32 inside our block is an
        address another node borrowed from it (Calico IPAM), and must be routed to that node."""
        old = self._own_blocks
        self._set_own_blocks(blocks)
        for prefix in self._own_blocks ^ old:
            destination = self._destinations.get(prefix)
            if destination is not None:
                destination.verdict = _UNJUDGED
                self._decide(destination)

    def set_own_addresses(self, addresses: Iterable[str | Address]) -> None:
        """This node's addresses: a path with one of them as next hop is our own route."""
        self._set_own_addresses(addresses)
        self._decide_all()

    # ---------------------------------------------------------------- input

    def update(self, peer: Peer, announced: Iterable[Path] = (),
               withdrawn: Iterable[NLRI | tuple | str | Prefix] = ()) -> None:
        """One UPDATE from `peer`.

        RFC 4271 §9: a prefix both withdrawn and announced in one UPDATE counts as announced,
        so withdrawals go first. An announcement replaces the peer's previous path for that NLRI
        (implicit withdraw, §3.1) and, if that path was stale, is fresh again (RFC 4724 §4.2).
        """
        key = _key(peer)
        destinations = self._destinations
        stale = self._stale.get(key)
        held = 0  # the change in the peer's path count
        touched: dict[Destination, None] = {}  # an ordered set: FIB changes in arrival order
        for item in withdrawn:
            nlri = item if isinstance(item, NLRI) else as_nlri(item)
            destination = destinations.get(nlri.prefix)
            if destination is not None and destination.remove(key, nlri.path_id) is not None:
                held -= 1
                touched[destination] = None
                if stale:
                    stale.discard(_adj_key(nlri.prefix, nlri.path_id))
        spare: Destination | None = None
        for path in announced:
            source = path.peer
            if source is not peer and source.address != key:
                raise ValueError(f"path {path.prefix} is from {source.address}, not from {key}")
            prefix = path.prefix
            # One lookup for a new prefix as for a known one: the spare is only used up when
            # the prefix is new.
            if spare is None:
                spare = Destination(prefix)
            else:
                spare.prefix = prefix
            destination = destinations.setdefault(prefix, spare)
            if destination is spare:
                spare = None
            if not destination.add(path):
                held += 1
            touched[destination] = None
            if stale:
                stale.discard(_adj_key(prefix, path.path_id))
        if held:
            self._count(key, held)
        if stale is not None and not stale:
            self._forget_stale(key)
        decide = self._decide
        for destination in touched:
            decide(destination)

    def peer_down(self, peer: Peer | str | Address, now: float, *, graceful: bool,
                  restart_time: float = 0.0, families: Collection[int] | None = None) -> None:
        """The session with `peer` ended.

        Without graceful restart its paths go at once. With it (RFC 4724 §4.2) the paths stay
        and are marked stale, for the address families (IP versions 4, 6) the peer listed in its
        Graceful Restart Capability (`families`; None means all), until `end_of_rib()`, or until
        `restart_time` seconds pass (`expire()`). Paths still stale from an earlier restart go
        now: "To deal with possible consecutive restarts, a route (from the peer) previously
        marked as stale MUST be deleted."
        """
        key = _key(peer)
        if not graceful:
            self._drop(key)
            self._forget_stale(key)
            return
        self._remove(key, list(self._stale.get(key, ())))
        if families is not None:
            self._drop(key, lambda prefix: prefix.version not in families)
        held = [_adj_key(path.prefix, path.path_id) for path in self._paths_of(key)]
        if held:
            self._stale[key] = set(held)
            self._stale_deadline[key] = now + restart_time
        else:
            self._forget_stale(key)

    def peer_up(self, peer: Peer | str | Address, now: float, *,
                preserved: Collection[int] | None = None, stale_time: float | None = None) -> None:
        """The session with `peer` is established again.

        RFC 4724 §4.2: stale paths of every family whose Forwarding State bit is not set in the
        new Graceful Restart Capability (or which it leaves out, or with no capability at all)
        go at once; `preserved` lists the IP versions whose bit is set (None: not known, keep).
        The restart timer stops here; `stale_time`, the optional upper bound the RFC allows,
        replaces it, so a peer that never sends End-of-RIB cannot keep stale paths forever
        (None keeps the restart deadline).
        """
        key = _key(peer)
        stale = self._stale.get(key)
        if not stale:
            return
        if preserved is not None:
            self._sweep(key, lambda prefix: prefix.version not in preserved)
        if key in self._stale_deadline and stale_time is not None:
            self._stale_deadline[key] = now + stale_time

    def end_of_rib(self, peer: Peer | str | Address, ip_version: int | None = None) -> None:
        """The peer's End-of-RIB for unicast of `ip_version` (None: every family). RFC 4724
        §4.2: "it MUST immediately remove any routes from the peer that are still marked as stale
        for that address family"."""
        self._sweep(_key(peer), lambda prefix: ip_version is None or prefix.version == ip_version)

    def expire(self, now: float) -> list[Address]:
        """Sweep the stale paths of every peer whose restart time has run out (RFC 4724 §4.2:
        not re-established within the Restart Time -> "MUST delete all the stale routes").
        Returns the peers swept."""
        due = [key for key, deadline in self._stale_deadline.items() if deadline <= now]
        for key in due:
            self._sweep(key, lambda prefix: True)
        return due

    def next_expiry(self) -> float | None:
        """When `expire()` next has work to do, for the caller's timer."""
        return min(self._stale_deadline.values(), default=None)

    # ---------------------------------------------------------------- output

    @property
    def fib(self) -> Mapping[Prefix, frozenset[Address]]:
        """The desired FIB: every installable prefix and the next hops of its multipath set
        (a live, read-only view). Prefixes with the same next hops share one frozenset."""
        return _FibView(self)

    def changes(self, limit: int | None = None) -> FibChanges:
        """The FIB's net changes since the previous call; a prefix that changed and changed
        back is not reported. With `limit`, those of at most that many prefixes, in the order
        they changed: the rest stay `pending` for the next call."""
        added: dict[Prefix, frozenset[Address]] = {}
        changed: dict[Prefix, frozenset[Address]] = {}
        removed: set[Prefix] = set()
        destinations = self._destinations
        dirty = self._dirty
        if limit is not None and len(dirty) > limit:
            dirty, self._dirty = dirty[:limit], dirty[limit:]
        else:
            self._dirty = []
        for destination in dirty:
            old, new = destination.reported, destination.next_hops
            destination.reported = _CLEAN
            if destination.paths is None:
                forgotten = destinations.pop(destination.prefix, None)
                if forgotten is not None and forgotten is not destination:
                    destinations[destination.prefix] = forgotten  # a newer one for the prefix
            if new is old or new == old:
                continue
            if new is None:
                removed.add(destination.prefix)
            elif old is None:
                added[destination.prefix] = new
            else:
                changed[destination.prefix] = new
        return FibChanges(added, changed, frozenset(removed))

    @property
    def pending(self) -> bool:
        """Whether prefixes changed since the last `changes()` (what it reports may still be
        nothing: a prefix that changed back)."""
        return bool(self._dirty)

    def watch_best(self, on: bool) -> None:
        """Keep (or stop keeping) the prefixes whose best path changes, for take_best_changes."""
        if not on:
            self._best_changed = None
        elif self._best_changed is None:
            self._best_changed = {}

    def take_best_changes(self) -> list[Prefix]:
        """The prefixes whose best path changed (or may have: an UPDATE repeating a path counts)
        since the last call, in the order they changed; [] when not watching."""
        changed = self._best_changed
        if not changed:
            return []
        self._best_changed = {}
        return list(changed)

    def best(self, prefix: str | Prefix) -> Path | None:
        destination = self._destinations.get(as_prefix(prefix))
        return destination.best if destination is not None else None

    def candidates(self, prefix: str | Prefix) -> list[Path]:
        """Every path for `prefix` that import policy accepts."""
        destination = self._destinations.get(as_prefix(prefix))
        paths = destination.all() if destination is not None else ()
        return [p for p in paths if self.rejection(p) is None]

    def adj_rib_in(self, peer: Peer | str | Address) -> Mapping[NLRI, Path]:
        """The peer's paths as it sent them, before import policy (RFC 4271 §3.2); a copy."""
        return MappingProxyType({NLRI(p.prefix, p.path_id): p for p in self._paths_of(_key(peer))})

    def stale(self, peer: Peer | str | Address) -> frozenset[NLRI]:
        return frozenset(_adj_nlri(k) for k in self._stale.get(_key(peer), ()))

    def rejection(self, path: Path) -> str | None:
        """Why import policy refuses `path`, or None if it is a candidate."""
        destination = self._destinations.get(path.prefix)
        if destination is None:
            verdict = self._judge_prefix(path.prefix)
        else:
            if destination.verdict is _UNJUDGED:
                destination.verdict = self._judge_prefix(path.prefix)
            verdict = destination.verdict
        if verdict is OUTSIDE_POOLS and self._accepted(path):
            return self._path_rejection(path, filtered=True)
        return verdict or self._path_rejection(path)

    def outside_pools(self, prefix: str | Prefix) -> bool:
        """Whether `prefix` lies outside every IP pool (not a service CIDR, not an own block):
        a route to it is a candidate only as its peer's BGPFilter accepts it, and goes on to
        other peers only as an export Accept sends it (Calico's export filter passes on pool
        routes only)."""
        prefix = as_prefix(prefix)
        destination = self._destinations.get(prefix)
        if destination is None or destination.verdict is _UNJUDGED:
            return self._judge_prefix(prefix) is OUTSIDE_POOLS
        return destination.verdict is OUTSIDE_POOLS

    @property
    def accepts_outside_pools(self) -> bool:
        """Whether any peer's BGPFilters have an import Accept: without one, no route outside
        the pools is a candidate, and nobody needs to ask `outside_pools`."""
        return bool(self._import_accepts)

    def _accepted(self, path: Path) -> bool:
        """Whether the peer's BGPFilters accept `path` (Accept, not merely no rule matching)."""
        judge = self._import_accepts.get(path.peer.address)
        return judge is not None and judge(path) == "Accept"

    def _best_outside(self) -> list[Prefix]:
        return [d.prefix for d in self._destinations.values()
                if d.best is not None and d.verdict is OUTSIDE_POOLS]

    def _path_rejection(self, path: Path, filtered: bool = False) -> str | None:
        """What refuses `path` besides its prefix: the peer's BGPFilters (unless `filtered`:
        they accepted it already), an own route, a loop."""
        attributes, peer = path.attributes, path.peer
        if self._import_filters and not filtered:
            judge = self._import_filters.get(peer.address)
            if judge is not None and judge(path) == "Reject":
                return "rejected by the peer's BGPFilter"
        memo = self._attributes_memo
        # The paths of an UPDATE share both objects: one judgement serves them all.
        if memo[0] is attributes and memo[1] is peer:
            mine, loop = memo[2]
        else:
            allowed = self._allow_own_as_of.get(peer.address, self._allow_own_as) \
                if self._allow_own_as_of else self._allow_own_as
            mine, loop = self._attributes_rejection(attributes, peer.local_asn, allowed)
            self._attributes_memo = (attributes, peer, (mine, loop))
        if mine:
            return mine
        next_hop = path.next_hop
        memo = self._own_memo
        if memo[0] is next_hop:
            own = memo[1]
        else:
            own = next_hop in self._own_addresses
            self._own_memo = (next_hop, own)
        if own:
            return "own route: the next hop is one of our addresses"
        return loop

    def _attributes_rejection(self, attributes: PathAttributes, local_asn: int, allowed: int
                              ) -> tuple[str | None, str | None]:
        """What the attributes alone say against a path, as (own route, loop): the part of the
        judgement a decoder's paths share, since every prefix of an UPDATE has the same
        attributes object."""
        originator_id = attributes.originator_id
        if originator_id is not None and originator_id == self._router_id:
            # a reflector sent our own route back (FRR does: reference/exabgp.md §2.3)
            return "own route: ORIGINATOR_ID is our router id", None
        if self._cluster_id is not None and self._cluster_id in attributes.cluster_list:
            return None, "loop: our CLUSTER_ID is in the CLUSTER_LIST (RFC 4456 §8)"
        # BIRD counts every occurrence, in AS_SETs too, and refuses more than `allow local as N`.
        own_as_count = sum(segment.asns.count(local_asn) for segment in attributes.as_path)
        if own_as_count > allowed:
            return None, "loop: our AS is in the AS_PATH (RFC 4271 §9.1.2)"
        return None, None

    # ---------------------------------------------------------------- internals

    def _judge_prefix(self, prefix: Prefix) -> str | None:
        # ipaddress's own fields, not its properties: this runs for every new prefix
        version, address, length = prefix._version, prefix.network_address._ip, prefix._prefixlen
        if (version, address, length) in self._own_block_keys:
            return "own route: one of our blocks"
        for cidr_version, network, mask, cidr_length in self._service_ranges:
            if version == cidr_version and length >= cidr_length and address & mask == network:
                return "inside a service CIDR: kube-proxy serves it on every node"
        for pool_version, network, mask, pool_length in self._pool_ranges:
            if version == pool_version and length >= pool_length and address & mask == network:
                return None
        return OUTSIDE_POOLS

    def _count(self, key: Address, change: int) -> None:
        held = self._path_counts.get(key, 0) + change
        if held:
            self._path_counts[key] = held
        else:
            self._path_counts.pop(key, None)

    def _paths_of(self, key: Address) -> Iterable[Path]:
        """The peer's Adj-RIB-In: a scan of the destinations, unless it holds nothing."""
        if not self._path_counts.get(key):
            return []
        return [p for d in self._destinations.values() for p in d.of(key)]

    def _remove(self, key: Address, adj_keys: Iterable[Prefix | NLRI]) -> None:
        stale = self._stale.get(key)
        destinations = self._destinations
        removed = 0
        touched: dict[Destination, None] = {}  # an ordered set: FIB changes in arrival order
        for adj_key in adj_keys:
            nlri = _adj_nlri(adj_key)
            destination = destinations.get(nlri.prefix)
            if destination is not None and destination.remove(key, nlri.path_id) is not None:
                removed += 1
                touched[destination] = None
            if stale:
                stale.discard(adj_key)
        if removed:
            self._count(key, -removed)
        for destination in touched:
            self._decide(destination)

    def _drop(self, key: Address, which=None) -> None:
        """Every path of the peer (whose prefix `which` selects, if given), in one pass over
        the destinations: a session lost without graceful restart, or families it does not
        keep. Each destination is decided once."""
        if not self._path_counts.get(key):
            return
        removed = 0
        decide = self._decide
        # a copy: deciding forgets destinations left without paths
        for destination in list(self._destinations.values()):
            if which is not None and not which(destination.prefix):
                continue
            paths = destination.paths
            if isinstance(paths, Path):  # most prefixes: one path
                if not _same_peer(paths.peer.address, key):
                    continue
                destination.paths = None
                removed += 1
            else:
                held = destination.of(key)
                if not held:
                    continue
                for path in held:
                    destination.remove(key, path.path_id)
                removed += len(held)
            decide(destination)
        self._count(key, -removed)

    def _sweep(self, key: Address, which) -> None:
        """Remove the peer's stale paths whose prefix `which` selects."""
        stale = self._stale.get(key)
        if stale:
            self._remove(key, [k for k in stale if which(_adj_prefix(k))])
        if not self._stale.get(key):
            self._forget_stale(key)

    def _forget_stale(self, key: Address) -> None:
        self._stale.pop(key, None)
        self._stale_deadline.pop(key, None)

    def _decide_all(self) -> None:
        for destination in list(self._destinations.values()):
            self._decide(destination)

    def _one_hop(self, next_hop: Address) -> frozenset[Address] | None:
        last = self._last_hop
        if last[0] is next_hop:  # the usual case: the previous path's next hop, the same object
            return last[1]
        hop_sets = self._hop_sets
        found = hop_sets.get(next_hop, _NOT_KNOWN)
        if found is _NOT_KNOWN:
            if len(hop_sets) >= _HOP_SETS_KEPT:
                hop_sets.clear()
            found = hop_sets[next_hop] = (None if _needs_an_interface(next_hop)
                                          else frozenset((next_hop,)))
        self._last_hop = (next_hop, found)
        return found

    def _chosen(self, candidates: list[Path]) -> tuple[Path | None, frozenset[Address] | None]:
        """The best of a prefix's candidate paths and its FIB entry, the next hops of its
        multipath set (None, None: no candidate)."""
        if len(candidates) == 1:
            best = candidates[0]
            return best, self._one_hop(best.next_hop)
        if not candidates:
            return None, None
        best, multipath = select(candidates)
        # a set: two reflectors passing on the same route are one next hop, not two
        hops = frozenset(p.next_hop for p in multipath if not _needs_an_interface(p.next_hop))
        next_hops = self._hop_sets.get(hops) if hops else None
        if next_hops is None and hops:
            if len(self._hop_sets) >= _HOP_SETS_KEPT:
                self._hop_sets.clear()
            next_hops = self._hop_sets[hops] = hops
        return best, next_hops

    def _decide(self, destination: Destination) -> None:
        verdict = destination.verdict
        if verdict is _UNJUDGED:
            verdict = destination.verdict = self._judge_prefix(destination.prefix)
        paths = destination.paths
        best: Path | None = None
        next_hops: frozenset[Address] | None = None
        if verdict is not None or paths is None:
            if verdict is OUTSIDE_POOLS and self._import_accepts and paths is not None:
                # only what a BGPFilter accepts, and what the path's own checks let through
                best, next_hops = self._chosen([
                    p for p in ((paths,) if isinstance(paths, Path) else paths.values())
                    if self._accepted(p) and self._path_rejection(p, filtered=True) is None])
        elif isinstance(paths, Path):
            if self._path_rejection(paths) is None:
                best = paths
                next_hops = self._one_hop(paths.next_hop)
        else:
            best, next_hops = self._chosen(
                [p for p in paths.values() if self._path_rejection(p) is None])
        if self._best_changed is not None and best is not destination.best:
            self._best_changed[destination.prefix] = None
        destination.best = best
        before = destination.next_hops
        if next_hops is not before and next_hops != before:
            if destination.reported is _CLEAN:
                destination.reported = before
                self._dirty.append(destination)
            destination.next_hops = next_hops
            if before is None:
                self._installed += 1
            elif next_hops is None:
                self._installed -= 1
        if paths is None and destination.reported is _CLEAN:
            # no path left and nothing to report: forget the prefix (changes() forgets the rest)
            del self._destinations[destination.prefix]
