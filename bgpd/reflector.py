"""Route reflection in the agent (RFC 4456), since ExaBGP cannot reflect: on a node with a
routeReflectorClusterID, each best path learned from an iBGP peer goes to the other iBGP peers
its client status allows, with ORIGINATOR_ID and CLUSTER_LIST set and the next hop unchanged,
unless the session says `nextHopMode: Self` (BIRD's `next hop self`): then the reflector's own
address on that session, so the client sends through the reflector.

Which path goes where is decided by bgpd.rib.reflect (pure); this module remembers what it sent
to each peer and sends only the difference.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from percale.bgpd import peering
from percale.bgpd.exabgp_json import RibFeed
from percale.bgpd.rib import Path, Peer, Rib, reflect
from percale.bgpd.seams import Speaker


class Reflector:
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker
        self.sent: dict[str, dict[str, str]] = {}  # peer -> prefix -> the announcement sent

    def forget(self, peer: str) -> None:
        """What we reflected to `peer` went with its old session."""
        self.sent.pop(peer, None)

    async def reflect(self, rib: Rib, feed: RibFeed, sessions: Iterable[peering.Session],
                      up: set[str], cluster_id: str) -> None:
        ibgp = [s for s in sessions if s.peer_as == s.local_as]
        clients = {ipaddress.ip_address(s.peer_address) for s in ibgp if s.route_reflector_client}
        for session in ibgp:
            if session.peer_address not in up:
                continue
            to = feed.peer(session.peer_address) or Peer(
                session.peer_address, session.peer_as, session.local_as)
            want: dict[str, str] = {}
            for prefix in rib.fib:
                best = rib.best(prefix)
                if best is None:
                    continue
                try:
                    path = reflect(best, to, cluster_id=cluster_id, clients=clients)
                except ValueError:
                    continue  # the sender's identifier is not known yet (its OPEN is pending)
                if path is not None:
                    want[str(prefix)] = announcement(path, next_hop_self=session.next_hop_self)
            sent = self.sent.setdefault(session.peer_address, {})
            for prefix in sorted(set(sent) - set(want)):
                await self.speaker.send(f"neighbor {session.peer_address} withdraw route {prefix}")
                del sent[prefix]
            for prefix, text in sorted(want.items()):
                if sent.get(prefix) != text:
                    await self.speaker.send(f"neighbor {session.peer_address} {text}")
                    sent[prefix] = text


def announcement(path: Path, *, next_hop_self: bool = False) -> str:
    """An ExaBGP `announce route` carrying a reflected path's attributes; with `next_hop_self`,
    ExaBGP puts the session's local address in the next hop."""
    next_hop = "self" if next_hop_self else path.next_hop
    parts = [f"announce route {path.prefix} next-hop {next_hop}",
             f"origin {path.origin.name.lower()}"]
    asns = [asn for segment in path.as_path for asn in segment.asns]
    if asns:
        parts.append(f"as-path [ {' '.join(map(str, asns))} ]")
    if path.local_pref is not None:
        parts.append(f"local-preference {path.local_pref}")
    if path.med is not None:
        parts.append(f"med {path.med}")
    parts.append(f"originator-id {path.originator_id}")
    parts.append(f"cluster-list [ {' '.join(map(str, path.cluster_list))} ]")
    return " ".join(parts)
