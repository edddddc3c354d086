"""Host routes to BGP peers reached through a gateway: BGPPeer `reachableBy` (pure).

Calico's BIRD config gives each such peer `route <peerIP>/32 via <reachableBy>` in its static
protocol, which reaches the kernel with every other route BIRD holds. A router peering from its
loopback is then reached through the gateway the BGPPeer names, whatever the session itself
announces: were the route to the peer's address learned over that session, losing the session
would lose the route it needs to come back (and a more specific route learned over it would
carry its own TCP connection). percale installs them as their own owner (RouteProtocol.PEER,
bgpd/programmer.py), so neither the RIB's routes nor a flush touch them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from percale.bgpd.peering import Session


def peer_routes(sessions: Iterable[Session]) -> dict[str, str]:
    """prefix (the peer's address as a /32 or /128) -> gateway, for each session whose BGPPeer
    has reachableBy. Two sessions to one address (two ports) that name different gateways: the
    first by session name wins, as the first of two static routes for one prefix does in BIRD.
    An IPv6 link-local gateway names no interface, so the kernel could not use it: left out
    (the API refuses one; a value stored before it did may remain)."""
    routes: dict[str, str] = {}
    for session in sorted(sessions, key=lambda s: s.name):
        gateway = session.reachable_by
        if not gateway or ipaddress.ip_address(gateway).is_link_local and session.family == 6:
            continue
        routes.setdefault(f"{session.peer_address}/{32 if session.family == 4 else 128}", gateway)
    return routes
