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

from percale.bgpd.fib import FIB

ROUTE_PROTOCOL_BLACKHOLE = 203
_RTN_BLACKHOLE = 6


class Blackholes:
    """Blocking; the agent calls it from a worker thread. pyroute2's IPRoute cannot be made on a
    thread that runs an asyncio loop, so each sync opens its own socket there (about a
    millisecond, for a handful of routes).

    It remembers what it installed, so a block claimed or released costs one route change; the
    kernel is read only on the first sync and when the caller asks for a check. The read is a
    dump the kernel filters by protocol: pyroute2 filters in Python after parsing every route,
    which took seconds, holding the GIL, on a node that had learned 100k routes."""

    def __init__(self) -> None:
        self._installed: set[str] | None = None

    def current(self) -> set[str]:
        with FIB(protocol=ROUTE_PROTOCOL_BLACKHOLE) as dump:
            return {str(prefix) for prefix in dump.kernel_prefixes()}

    def sync(self, blocks: Iterable[str], *, check: bool = False) -> None:
        """Make the blackholes exactly `blocks`; `check` reads the kernel first instead of
        trusting what this object installed (someone may have deleted one)."""
        want = {str(ipaddress.ip_network(b)) for b in blocks}
        have = self.current() if check or self._installed is None else self._installed
        if have == want:
            self._installed = want
            return
        self._installed = None  # unknown until every change below has landed
        with IPRoute() as ipr:
            for prefix in sorted(have - want):
                self._route(ipr, "del", prefix)
            for prefix in sorted(want - have):
                self._route(ipr, "add", prefix)
        self._installed = want

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
