"""Which learned routes a node passes on to its other peers, and as what (pure).

Calico ends the export filter of every BIRD session with calico_export_to_bgp_peers, which
accepts any route inside an enabled pool, whoever it came from. BIRD then sends each peer its
best route to such a prefix, so a node that alone peers with an outside router announces there
the blocks it learned from the mesh, and a route from an eBGP peer reaches the mesh. What BIRD
itself holds back:

- a route is never sent back to the peer it was learned from;
- a route learned over iBGP goes to no iBGP peer (RFC 4271 §9.1.1), unless this node is a route
  reflector (RFC 4456, which ExaBGP cannot do): then `rib.reflects` says which iBGP peers get it,
  with ORIGINATOR_ID and CLUSTER_LIST set and the next hop unchanged, unless the session says
  `nextHopMode: Self` (BIRD's `next hop self`), so that clients send through the reflector;
- a pool with disableBGPExport is rejected by the filter (the caller leaves those prefixes out,
  and more-specifics of the node's own blocks, which calico_aggr() rejects, and routes outside
  every pool, which a BGPFilter import Accept let into the RIB: the filter accepts pool routes
  only; an export Accept sends any of them all the same, bgpd/relay.py);
- the well-known communities (RFC 1997): NO_ADVERTISE goes to no peer, NO_EXPORT and
  NO_EXPORT_SUBCONFED to no eBGP peer.

What the peer receives is what BIRD sends on Calico's sessions, all `multihop`:
- over eBGP, our AS prepended to the AS_PATH (ExaBGP prepends nothing to a path it is given,
  reference/exabgp.md §1), ORIGIN and communities kept, no LOCAL_PREF, MED, ORIGINATOR_ID or
  CLUSTER_LIST; our own address as next hop (BIRD's choice on a multihop eBGP session), the
  original next hop when the BGPPeer asks to keep it (keepOriginalNextHop, nextHopMode Keep:
  BIRD's `next hop keep`);
- over iBGP, a route learned over eBGP with its attributes as learned but LOCAL_PREF (which an
  eBGP peer's is not trusted for: BIRD drops it on import, RFC 4271 §5.1.5), the next hop
  unchanged (BIRD's iBGP default) unless the BGPPeer says nextHopMode Self.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from percale.bgpd.communities import Large, Standard, community_text
from percale.bgpd.peering import Session
from percale.bgpd.prefixes import Prefix, inside
from percale.bgpd.rib import AS_SET, Address, Path, Peer, reflected, reflects


@dataclass(frozen=True)
class Reflection:
    """This node reflects routes (its Node has a routeReflectorClusterID)."""

    cluster_id: ipaddress.IPv4Address
    clients: Collection[Address]  # the addresses of its clients' sessions


NO_COMMUNITIES: tuple[tuple[Standard, ...], tuple[Large, ...]] = ((), ())


def pass_on(best: Path, to: Session, *, reflection: Reflection | None = None,
            to_peer: Peer | None = None,
            adding: tuple[tuple[Standard, ...], tuple[Large, ...]] = NO_COMMUNITIES) -> str | None:
    """The ExaBGP `announce route` that passes `best` (the RIB's best path to its prefix) on
    over `to`, or None when BIRD would send it nothing. A reflector also gives `to_peer`, the
    session's peer as the RIB knows it (with its BGP Identifier once its OPEN was seen).
    `adding`: the communities this node's prefixAdvertisements add to the route
    (bgpd/communities.py), besides those it carries. For one path and many sessions, an
    `Outgoing` builds each text once.

    Raises ValueError when reflection needs the BGP Identifier of the path's sender, not known
    yet."""
    return Outgoing(best, reflection, adding).to(to, to_peer)


class Outgoing:
    """One best path on its way to a node's sessions. Whether a session gets it depends on the
    session, but what it gets only on a few of its settings (eBGP or iBGP, our AS, the next-hop
    mode), so each such text is built once: a reflector sends each client's block to hundreds
    of others, and building the reflected path and its text for each was most of the work."""

    __slots__ = ("best", "reflection", "adding", "_source", "_kept_home", "_texts")

    def __init__(self, best: Path, reflection: Reflection | None = None,
                 adding: tuple[tuple[Standard, ...], tuple[Large, ...]] = NO_COMMUNITIES) -> None:
        self.best, self.reflection, self.adding = best, reflection, adding
        self._source = str(best.peer.address)
        communities = best.communities
        # (to iBGP, to eBGP): held back by a well-known community
        self._kept_home = ((False, False) if not communities else
                           (_kept_home(communities, False), _kept_home(communities, True)))
        self._texts: dict[tuple, str | None] = {}

    def to(self, session: Session, peer: Peer | None = None) -> str | None:
        """What `session` gets (see `pass_on`); `peer` as `pass_on`'s `to_peer`."""
        best = self.best
        if best.prefix.version != session.family or self._source == session.peer_address:
            return None
        ebgp_to = session.peer_as != session.local_as
        if self._kept_home[ebgp_to]:
            return None
        if best.peer.ibgp and not ebgp_to:
            reflection = self.reflection
            if reflection is None:
                return None
            peer = peer or Peer(session.peer_address, session.peer_as, session.local_as)
            if not reflects(best, peer, cluster_id=reflection.cluster_id,
                            clients=reflection.clients):
                return None
            form: tuple = ("reflected", session.next_hop_self)
        elif not ebgp_to:
            form = ("ibgp", session.next_hop_self)
        else:
            form = ("ebgp", session.local_as, session.keep_next_hop)
        try:
            return self._texts[form]
        except KeyError:
            text = self._texts[form] = self._text(form)
            return text

    def _text(self, form: tuple) -> str:
        best, adding = self.best, self.adding
        if form[0] == "reflected":
            assert self.reflection is not None
            return _reflected(reflected(best, self.reflection.cluster_id), form[1], adding)
        if form[0] == "ibgp":
            # An eBGP peer's LOCAL_PREF is not passed on: BIRD drops it on import.
            return _as_learned(best, "self" if form[1] else str(best.next_hop),
                               local_pref=False, adding=adding)
        _, local_as, keep_next_hop = form
        next_hop = str(best.next_hop) if keep_next_hop else "self"
        return _joined([f"announce route {best.prefix} next-hop {next_hop}",
                        f"origin {best.origin.name.lower()}",
                        f"as-path {_as_path_text(best, prepend=local_as)}"], best, adding)


NO_EXPORT, NO_ADVERTISE, NO_EXPORT_SUBCONFED = (65535, 65281), (65535, 65282), (65535, 65283)


def _kept_home(communities: tuple[tuple[int, int], ...], ebgp_to: bool) -> bool:
    if NO_ADVERTISE in communities:
        return True
    return ebgp_to and (NO_EXPORT in communities or NO_EXPORT_SUBCONFED in communities)


def may_pass_on(sessions: list[Session], reflecting: bool = False) -> bool:
    """Whether any route can be passed on over these sessions at all: it takes two sessions (a
    route never goes back to its source), one of them eBGP unless this node reflects. A node
    with one peer, or only iBGP ones and no cluster ID (every mesh-only node), looks at no
    prefix."""
    return len(sessions) > 1 and (reflecting or any(s.peer_as != s.local_as for s in sessions))


def _reflected(path: Path, next_hop_self: bool,
               adding: tuple[tuple[Standard, ...], tuple[Large, ...]]) -> str:
    """A reflected path's `announce route`: its attributes as learned, ORIGINATOR_ID and
    CLUSTER_LIST as reflection set them; with `next_hop_self`, ExaBGP puts the session's local
    address in the next hop."""
    return _as_learned(path, "self" if next_hop_self else str(path.next_hop), local_pref=True,
                       adding=adding, then=[
                           f"originator-id {path.originator_id}",
                           f"cluster-list [ {' '.join(map(str, path.cluster_list))} ]"])


def _as_learned(path: Path, next_hop: str, *, local_pref: bool,
                adding: tuple[tuple[Standard, ...], tuple[Large, ...]],
                then: list[str] | None = None) -> str:
    """An iBGP `announce route` carrying the path's attributes as learned (LOCAL_PREF only
    with `local_pref`), then `then`, then the communities."""
    parts = [f"announce route {path.prefix} next-hop {next_hop}",
             f"origin {path.origin.name.lower()}"]
    as_path = _as_path_text(path)
    if as_path:
        parts.append(f"as-path {as_path}")
    if local_pref and path.local_pref is not None:
        parts.append(f"local-preference {path.local_pref}")
    if path.med is not None:
        parts.append(f"med {path.med}")
    return _joined([*parts, *(then or [])], path, adding)


def _joined(parts: list[str], path: Path,
            adding: tuple[tuple[Standard, ...], tuple[Large, ...]]) -> str:
    """The announcement with the communities BIRD sends with the route: those it carries, and
    those apply_communities() adds, each once."""
    standard = dict.fromkeys((*path.communities, *adding[0]))
    large = dict.fromkeys((*path.large_communities, *adding[1]))
    communities = community_text(standard, large)
    return " ".join([*parts, communities]) if communities else " ".join(parts)


def _as_path_text(path: Path, prepend: int | None = None) -> str:
    """ExaBGP's AS_PATH text, segment after segment: an AS_SEQUENCE in brackets, an AS_SET in
    parentheses (`[ 64512 65000 ] ( 1 2 )`); '' for an empty path."""
    segments: list[tuple[str, list[int]]] = [("seq", [prepend])] if prepend is not None else []
    for segment in path.as_path:
        kind = "set" if segment.type == AS_SET else "seq"
        if kind == "seq" and segments and segments[-1][0] == "seq":
            segments[-1][1].extend(segment.asns)  # one sequence, as on the wire
        elif segment.asns:
            segments.append((kind, list(segment.asns)))
    return " ".join(f"[ {' '.join(map(str, asns))} ]" if kind == "seq"
                    else f"( {' '.join(map(str, asns))} )" for kind, asns in segments)


def held_back(prefix: Prefix, pools: Sequence[Prefix]) -> bool:
    """Whether `prefix` lies inside one of `pools` (those with disableBGPExport, or own blocks)."""
    return any(inside(prefix, pool) for pool in pools)
