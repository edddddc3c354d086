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
import os
import socket
import struct
from collections.abc import Iterable

from percale.dataplane.fib import FIB

ROUTE_PROTOCOL_BLACKHOLE = 203

# Netlink, by hand, as bgpd/fib.py does: pyroute2 would add ~20 MB to the agent's resident size
# for two message types (the agent's own netlink work needs nothing else from it).
_RTM_NEWROUTE, _RTM_DELROUTE, _NLMSG_ERROR = 24, 25, 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_RT_TABLE_MAIN, _RT_SCOPE_UNIVERSE, _RTN_BLACKHOLE, _RTA_DST = 254, 0, 6, 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")


class Blackholes:
    """Blocking; the agent calls it from a worker thread. Each sync opens its own netlink socket
    there (about a millisecond, for a handful of routes).

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
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           socket.NETLINK_ROUTE) as sock:
            sock.settimeout(5)
            sock.bind((0, 0))
            for seq, prefix in enumerate(sorted(have - want), 1):
                _route(sock, _RTM_DELROUTE, seq, prefix)
            for seq, prefix in enumerate(sorted(want - have), 1_000_000):
                _route(sock, _RTM_NEWROUTE, seq, prefix)
        self._installed = want


def _route(sock: socket.socket, kind: int, seq: int, prefix: str) -> None:
    """Add or delete one blackhole and wait for the kernel's answer."""
    net = ipaddress.ip_network(prefix)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    dst = net.network_address.packed
    flags = _NLM_F_REQUEST | _NLM_F_ACK
    if kind == _RTM_NEWROUTE:
        flags |= _NLM_F_CREATE | _NLM_F_EXCL
    body = (_RTMSG.pack(family, net.prefixlen, 0, 0, _RT_TABLE_MAIN, ROUTE_PROTOCOL_BLACKHOLE,
                        _RT_SCOPE_UNIVERSE, _RTN_BLACKHOLE, 0)
            + _RTA.pack(4 + len(dst), _RTA_DST) + dst)
    sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body)
    while True:
        answer = sock.recv(65536)
        length, mtype, _, answered, _ = _HEADER.unpack_from(answer)
        if mtype != _NLMSG_ERROR or answered != seq:
            continue
        code = -struct.unpack_from("=i", answer, _HEADER.size)[0]
        # Gone already, or there already: the state we wanted.
        if code in (0, errno.ESRCH, errno.EEXIST, errno.ENOENT):
            return
        raise OSError(code, f"{'adding' if kind == _RTM_NEWROUTE else 'deleting'} blackhole "
                            f"{prefix}: {os.strerror(code)}")
