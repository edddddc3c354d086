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
CLUSTER_LIST or AS_PATH already holds us), or when its prefix is outside every IP pool. Policy is
applied between the Adj-RIB-In and the decision, not by dropping paths on arrival, so a pool added
later takes effect at once, without asking every peer for a route refresh.

Graceful restart (RFC 4724 §4.2, the Receiving Speaker): ExaBGP 5.0 does nothing when a peer
restarts (reference/exabgp.md §0 finding 3), so the RIB keeps the peer's paths as stale until the
peer's End-of-RIB or until its restart time runs out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from types import MappingProxyType
from typing import NamedTuple

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
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
    return value if isinstance(value, _PREFIX_TYPES) else ipaddress.ip_network(value)


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


@dataclass(frozen=True, slots=True)
class Path:
    """One route from one peer: an NLRI with its next hop and path attributes (RFC 4271 §5).

    Strings are accepted and normalised (`prefix="10.244.1.0/26"`, `next_hop="10.0.0.2"`), and a
    plain tuple of AS numbers is taken as one AS_SEQUENCE.
    """

    prefix: Prefix
    next_hop: Address
    peer: Peer
    path_id: int = 0
    origin: Origin = Origin.IGP
    as_path: tuple[AsPathSegment, ...] = ()
    med: int | None = None
    local_pref: int | None = None
    originator_id: ipaddress.IPv4Address | None = None
    cluster_list: tuple[ipaddress.IPv4Address, ...] = ()
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.prefix, _PREFIX_TYPES):
            set_(self, "prefix", ipaddress.ip_network(self.prefix))
        if not isinstance(self.next_hop, _ADDRESS_TYPES):
            set_(self, "next_hop", ipaddress.ip_address(self.next_hop))
        if not isinstance(self.origin, Origin):
            origin = self.origin
            set_(self, "origin", Origin[origin.upper()] if isinstance(origin, str) else Origin(origin))
        if self.as_path and not isinstance(self.as_path[0], AsPathSegment):
            if isinstance(self.as_path[0], int):
                set_(self, "as_path", (AsPathSegment(AS_SEQUENCE, tuple(self.as_path)),))
            else:
                set_(self, "as_path", tuple(AsPathSegment(t, tuple(a)) for t, a in self.as_path))
        if self.originator_id is not None and not isinstance(self.originator_id, ipaddress.IPv4Address):
            set_(self, "originator_id", ipaddress.IPv4Address(self.originator_id))
        if self.cluster_list and not isinstance(self.cluster_list[0], ipaddress.IPv4Address):
            set_(self, "cluster_list", tuple(ipaddress.IPv4Address(c) for c in self.cluster_list))

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
        if self.as_path and self.as_path[0].type == AS_SEQUENCE and self.as_path[0].asns:
            return self.as_path[0].asns[0]
        return self.peer.local_asn

    @property
    def degree_of_preference(self) -> int:
        """RFC 4271 §9.1.1: LOCAL_PREF for a route from an internal peer. §5.1.5: a LOCAL_PREF
        received from an external peer MUST be ignored, so eBGP routes get the default."""
        if self.peer.ibgp and self.local_pref is not None:
            return self.local_pref
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
    source = path.peer
    if not source.ibgp or not to.ibgp or to.address == source.address:
        return None
    if source.address not in clients and to.address not in clients:
        return None
    cluster = ipaddress.IPv4Address(cluster_id)
    if cluster in path.cluster_list:
        return None
    originator = path.originator_id or source.router_id
    if originator is None:
        raise ValueError(f"cannot reflect {path.prefix}: the BGP Identifier of {source.address} is unknown")
    if to.router_id == originator:
        return None
    return replace(path, originator_id=originator, cluster_list=(cluster, *path.cluster_list))


def _key(peer: Peer | str | Address) -> Address:
    return peer.address if isinstance(peer, Peer) else as_address(peer)


_UNJUDGED = object()
_CLEAN = object()


class Destination:
    """One prefix: its paths from every peer and what the decision made of them (GoBGP's
    Destination). The RIB's per-prefix state lives here, so one lookup serves a whole update."""

    __slots__ = ("prefix", "paths", "best", "next_hops", "verdict", "reported")

    def __init__(self, prefix: Prefix) -> None:
        self.prefix = prefix
        self.paths: dict[tuple[Address, int], Path] = {}
        self.best: Path | None = None
        self.next_hops: frozenset[Address] | None = None  # its FIB entry
        self.verdict: object = _UNJUDGED  # import policy on the prefix: None or why not
        # the FIB entry at the last Rib.changes(), or _CLEAN when unchanged since
        self.reported: object = _CLEAN


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
    ) -> None:
        self._router_id = ipaddress.IPv4Address(router_id)
        self._pools = tuple(as_prefix(p) for p in pools)
        self._own_blocks = frozenset(as_prefix(p) for p in own_blocks)
        self._own_addresses = frozenset(as_address(a) for a in own_addresses)
        self._cluster_id = ipaddress.IPv4Address(cluster_id) if cluster_id is not None else None
        # Calico's BGPPeer.numAllowedLocalASNumbers: designs with one AS per rack need it.
        self._allow_own_as = allow_own_as

        self._adj_in: dict[Address, dict[NLRI, Path]] = {}
        self._destinations: dict[Prefix, Destination] = {}
        self._stale: dict[Address, set[NLRI]] = {}
        self._stale_deadline: dict[Address, float] = {}
        self._fib: dict[Prefix, frozenset[Address]] = {}
        # destinations whose FIB entry may have changed since the last changes()
        self._dirty: list[Destination] = []

    # ---------------------------------------------------------------- configuration

    def set_pools(self, pools: Iterable[str | Prefix]) -> None:
        """The IP pool CIDRs; a prefix inside none of them is never installed."""
        self._pools = tuple(as_prefix(p) for p in pools)
        for destination in self._destinations.values():
            destination.verdict = _UNJUDGED
        self._decide_all()

    def set_own_blocks(self, blocks: Iterable[str | Prefix]) -> None:
        """This node's blocks. Only the exact prefix is ours: a /32 inside our block is an
        address another node borrowed from it (Calico IPAM), and must be routed to that node."""
        new = frozenset(as_prefix(b) for b in blocks)
        touched = new ^ self._own_blocks
        self._own_blocks = new
        for prefix in touched:
            destination = self._destinations.get(prefix)
            if destination is not None:
                destination.verdict = _UNJUDGED
                self._decide(destination)

    def set_own_addresses(self, addresses: Iterable[str | Address]) -> None:
        """This node's addresses: a path with one of them as next hop is our own route."""
        self._own_addresses = frozenset(as_address(a) for a in addresses)
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
        adj_in = self._adj_in.setdefault(key, {})
        destinations = self._destinations
        stale = self._stale.get(key)
        touched: dict[Destination, None] = {}  # an ordered set: FIB changes in arrival order
        for item in withdrawn:
            nlri = as_nlri(item)
            if adj_in.pop(nlri, None) is not None:
                destination = destinations[nlri.prefix]
                del destination.paths[(key, nlri.path_id)]
                touched[destination] = None
                if stale:
                    stale.discard(nlri)
        for path in announced:
            if path.peer.address != key:
                raise ValueError(f"path {path.prefix} is from {path.peer.address}, not from {key}")
            prefix = path.prefix
            nlri = NLRI(prefix, path.path_id)
            adj_in[nlri] = path
            destination = destinations.get(prefix)
            if destination is None:
                destination = destinations[prefix] = Destination(prefix)
            destination.paths[(key, path.path_id)] = path
            touched[destination] = None
            if stale:
                stale.discard(nlri)
        if stale is not None and not stale:
            self._forget_stale(key)
        for destination in touched:
            self._decide(destination)

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
            self._remove(key, list(self._adj_in.get(key, ())))
            self._adj_in.pop(key, None)
            self._forget_stale(key)
            return
        self._remove(key, list(self._stale.get(key, ())))
        adj_in = self._adj_in.get(key, {})
        if families is not None:
            self._remove(key, [n for n in adj_in if n.prefix.version not in families])
        if adj_in:
            self._stale[key] = set(adj_in)
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
            self._sweep(key, lambda nlri: nlri.prefix.version not in preserved)
        if key in self._stale_deadline and stale_time is not None:
            self._stale_deadline[key] = now + stale_time

    def end_of_rib(self, peer: Peer | str | Address, ip_version: int | None = None) -> None:
        """The peer's End-of-RIB for unicast of `ip_version` (None: every family). RFC 4724
        §4.2: "it MUST immediately remove any routes from the peer that are still marked as stale
        for that address family"."""
        self._sweep(_key(peer), lambda nlri: ip_version is None or nlri.prefix.version == ip_version)

    def expire(self, now: float) -> list[Address]:
        """Sweep the stale paths of every peer whose restart time has run out (RFC 4724 §4.2:
        not re-established within the Restart Time -> "MUST delete all the stale routes").
        Returns the peers swept."""
        due = [key for key, deadline in self._stale_deadline.items() if deadline <= now]
        for key in due:
            self._sweep(key, lambda nlri: True)
        return due

    def next_expiry(self) -> float | None:
        """When `expire()` next has work to do, for the caller's timer."""
        return min(self._stale_deadline.values(), default=None)

    # ---------------------------------------------------------------- output

    @property
    def fib(self) -> Mapping[Prefix, frozenset[Address]]:
        """The desired FIB: every installable prefix and the next hops of its multipath set."""
        return MappingProxyType(self._fib)

    def changes(self) -> FibChanges:
        """The FIB's net changes since the previous call; a prefix that changed and changed
        back is not reported."""
        added: dict[Prefix, frozenset[Address]] = {}
        changed: dict[Prefix, frozenset[Address]] = {}
        removed: set[Prefix] = set()
        for destination in self._dirty:
            old, new = destination.reported, destination.next_hops
            destination.reported = _CLEAN
            if not destination.paths and self._destinations.get(destination.prefix) is destination:
                del self._destinations[destination.prefix]
            if new == old:
                continue
            if new is None:
                removed.add(destination.prefix)
            elif old is None:
                added[destination.prefix] = new
            else:
                changed[destination.prefix] = new
        self._dirty = []
        return FibChanges(added, changed, frozenset(removed))

    def best(self, prefix: str | Prefix) -> Path | None:
        destination = self._destinations.get(as_prefix(prefix))
        return destination.best if destination is not None else None

    def candidates(self, prefix: str | Prefix) -> list[Path]:
        """Every path for `prefix` that import policy accepts."""
        destination = self._destinations.get(as_prefix(prefix))
        paths = destination.paths.values() if destination is not None else ()
        return [p for p in paths if self.rejection(p) is None]

    def adj_rib_in(self, peer: Peer | str | Address) -> Mapping[NLRI, Path]:
        return MappingProxyType(self._adj_in.get(_key(peer), {}))

    def stale(self, peer: Peer | str | Address) -> frozenset[NLRI]:
        return frozenset(self._stale.get(_key(peer), ()))

    def rejection(self, path: Path) -> str | None:
        """Why import policy refuses `path`, or None if it is a candidate."""
        destination = self._destinations.get(path.prefix)
        if destination is None:
            verdict = self._judge_prefix(path.prefix)
        else:
            if destination.verdict is _UNJUDGED:
                destination.verdict = self._judge_prefix(path.prefix)
            verdict = destination.verdict
        return verdict or self._path_rejection(path)

    def _path_rejection(self, path: Path) -> str | None:
        if path.originator_id == self._router_id:
            # a reflector sent our own route back (FRR does: reference/exabgp.md §2.3)
            return "own route: ORIGINATOR_ID is our router id"
        if path.next_hop in self._own_addresses:
            return "own route: the next hop is one of our addresses"
        if self._cluster_id is not None and self._cluster_id in path.cluster_list:
            return "loop: our CLUSTER_ID is in the CLUSTER_LIST (RFC 4456 §8)"
        if path.as_path and self._own_as_count(path) > self._allow_own_as:
            return "loop: our AS is in the AS_PATH (RFC 4271 §9.1.2)"
        return None

    # ---------------------------------------------------------------- internals

    def _judge_prefix(self, prefix: Prefix) -> str | None:
        if prefix in self._own_blocks:
            return "own route: one of our blocks"
        if not any(prefix.version == pool.version and prefix.subnet_of(pool) for pool in self._pools):
            return "outside every IP pool"
        return None

    @staticmethod
    def _own_as_count(path: Path) -> int:
        own = path.peer.local_asn
        return sum(seg.asns.count(own) for seg in path.as_path)

    def _remove(self, key: Address, nlris: Iterable[NLRI]) -> None:
        adj_in = self._adj_in.get(key, {})
        stale = self._stale.get(key)
        touched: dict[Destination, None] = {}  # an ordered set: FIB changes in arrival order
        for nlri in nlris:
            if adj_in.pop(nlri, None) is not None:
                destination = self._destinations[nlri.prefix]
                del destination.paths[(key, nlri.path_id)]
                touched[destination] = None
            if stale:
                stale.discard(nlri)
        for destination in touched:
            self._decide(destination)

    def _sweep(self, key: Address, which) -> None:
        stale = self._stale.get(key)
        if stale:
            self._remove(key, [nlri for nlri in stale if which(nlri)])
        if not self._stale.get(key):
            self._forget_stale(key)

    def _forget_stale(self, key: Address) -> None:
        self._stale.pop(key, None)
        self._stale_deadline.pop(key, None)

    def _decide_all(self) -> None:
        for destination in list(self._destinations.values()):
            self._decide(destination)

    def _decide(self, destination: Destination) -> None:
        if destination.verdict is _UNJUDGED:
            destination.verdict = self._judge_prefix(destination.prefix)
        if destination.verdict is None:
            candidates = [p for p in destination.paths.values() if self._path_rejection(p) is None]
        else:
            candidates = []
        if not candidates:
            best, next_hops = None, None
        elif len(candidates) == 1:
            best = candidates[0]
            next_hops = frozenset((best.next_hop,))
        else:
            best, multipath = select(candidates)
            # a set: two reflectors passing on the same route are one next hop, not two
            next_hops = frozenset(p.next_hop for p in multipath)
        destination.best = best
        if next_hops != destination.next_hops:
            if destination.reported is _CLEAN:
                destination.reported = destination.next_hops
                self._dirty.append(destination)
            destination.next_hops = next_hops
            if next_hops is None:
                del self._fib[destination.prefix]
            else:
                self._fib[destination.prefix] = next_hops
        if not destination.paths and destination.reported is _CLEAN:
            # no path left and nothing to report: forget the prefix (changes() forgets the rest)
            del self._destinations[destination.prefix]
