"""Blackhole routes for the node's own blocks (calico.md §2.5).

A node announces its whole /26; traffic for an address of the block that no pod holds should
stop here rather than follow the default route back out (and loop). Pods' /32 routes
(pod_network) and borrowed /32s learned over BGP (fib) are more specific, so they still win.

Owner: this module owns kernel routes with RouteProtocol.BLACKHOLE (203) in the main table, and
nothing else; `sync` makes them exactly the node's confirmed blocks.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable

from percale.dataplane.netlink import RT_SCOPE_UNIVERSE, RTN_BLACKHOLE, Netlink
from percale.dataplane.route_owners import RouteProtocol

PROTOCOL = RouteProtocol.BLACKHOLE


class Blackholes:
    """Blocking; the agent calls it from a worker thread. Each sync opens its own netlink socket
    there (about a millisecond, for a handful of routes).

    It remembers what it installed, so a block claimed or released costs one route change; the
    kernel is read only on the first sync and when the caller asks for a check, with a dump the
    kernel filters by protocol (a node that learned 100k routes over BGP pays nothing for them)."""

    def __init__(self) -> None:
        self._installed: set[str] | None = None

    def current(self) -> set[str]:
        with Netlink() as nl:
            return _current(nl)

    def sync(self, blocks: Iterable[str], *, check: bool = False) -> None:
        """Make the blackholes exactly `blocks`; `check` reads the kernel first instead of
        trusting what this object installed (someone may have deleted one)."""
        # Not for a block of one address (blockSize 32 or 128), as Calico skips them: that
        # route is the pod's own, which the blackhole would take.
        want = {str(network) for network in map(ipaddress.ip_network, blocks)
                if network.prefixlen != network.max_prefixlen}
        with Netlink() as nl:
            have = _current(nl) if check or self._installed is None else self._installed
            if have == want:
                self._installed = want
                return
            self._installed = None  # unknown until every change below has landed
            for prefix in sorted(have - want):
                nl.delete_route(ipaddress.ip_network(prefix), protocol=PROTOCOL)  # gone already: fine
            for prefix in sorted(want - have):
                try:
                    nl.add_route(ipaddress.ip_network(prefix), protocol=PROTOCOL,
                                 scope=RT_SCOPE_UNIVERSE, route_type=RTN_BLACKHOLE)
                except OSError as err:
                    if err.errno != errno.EEXIST:  # there already: the state we wanted
                        raise OSError(err.errno, f"adding blackhole {prefix}: {err.strerror}") from None
        self._installed = want


def _current(nl: Netlink) -> set[str]:
    return {str(route.destination)
            for family in (socket.AF_INET, socket.AF_INET6)
            for route in nl.routes(family, protocol=PROTOCOL)}
