"""Blackhole routes for the node's own blocks (calico.md §2.5).

A node announces its whole /26; traffic for an address of the block that no pod holds should
stop here rather than follow the default route back out (and loop). Pods' /32 routes
(pod_network, protocol 201) and borrowed /32s learned over BGP (fib, protocol 202) are more
specific, so they still win.

Owner: this module owns kernel routes of type blackhole with protocol 203 in the main table, and
nothing else; `sync` makes them exactly the node's confirmed blocks.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

ROUTE_PROTOCOL_BLACKHOLE = 203
_RTN_BLACKHOLE = 6


class Blackholes:
    """Blocking; the agent calls it from a worker thread. pyroute2's IPRoute cannot be made on a
    thread that runs an asyncio loop, so each sync opens its own socket there (about a
    millisecond, for a handful of routes)."""

    def current(self) -> set[str]:
        with IPRoute() as ipr:
            return self._current(ipr)

    def _current(self, ipr: IPRoute) -> set[str]:
        found = set()
        for family in (2, 10):
            for route in ipr.get_routes(family=family, proto=ROUTE_PROTOCOL_BLACKHOLE):
                if route["type"] == _RTN_BLACKHOLE:
                    found.add(f"{route.get_attr('RTA_DST')}/{route['dst_len']}")
        return {str(ipaddress.ip_network(p)) for p in found}

    def sync(self, blocks: Iterable[str]) -> None:
        want = {str(ipaddress.ip_network(b)) for b in blocks}
        with IPRoute() as ipr:
            have = self._current(ipr)
            for prefix in sorted(have - want):
                self._route(ipr, "del", prefix)
            for prefix in sorted(want - have):
                self._route(ipr, "add", prefix)

    @staticmethod
    def _route(ipr: IPRoute, verb: str, prefix: str) -> None:
        net = ipaddress.ip_network(prefix)
        try:
            ipr.route(verb, dst=str(net.network_address), dst_len=net.prefixlen,
                            family=2 if net.version == 4 else 10, type=_RTN_BLACKHOLE,
                            proto=ROUTE_PROTOCOL_BLACKHOLE)
        except NetlinkError as err:
            # Gone already, or there already: the state we wanted.
            if err.code not in (errno.ESRCH, errno.EEXIST, errno.ENOENT):
                raise
