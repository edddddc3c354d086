"""rtnetlink, packed by hand: the one place percale talks to the kernel's routing socket.

Users: dataplane.fib (BGP routes, in large batches; the routes their next hops resolve through,
and `RouteEvents` to follow those), dataplane.blackholes, dataplane.pod_network (a pod's veth
pair, addresses and routes) and dataplane.host (the node's addresses, the source address towards
a destination, the underlay's MTU).

    with Netlink() as nl:                      # NETLINK_ROUTE in the calling thread's namespace
        nl.add_route(route_message(...))       # one request, one ACK; NetlinkError(errno)
        for route in nl.routes(AF_INET, protocol=202):   # a dump the kernel filters
            ...
        errors = nl.send_batch(buf, first, last, last_offset)   # many messages, one ACK

Why by hand rather than pyroute2: pyroute2 spends about 400 µs building one message
(reference/performance.md §3) and adds about 20 MB to a process, and its dumps filter in Python
after parsing every route — seconds, holding the GIL, on a node that learned 100k routes. Here a
message is a few struct.pack calls, and every dump asks the kernel to filter
(NETLINK_GET_STRICT_CHK): by table, protocol and output interface for routes, by interface for
addresses.

Errors: a request the kernel refuses raises NetlinkError, an OSError carrying the kernel's errno
and, when it gives one (NETLINK_EXT_ACK), its own words. A batch reports refusals per message
instead of raising, so one bad route does not hide the outcome of the others.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Self

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# linux/netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_ACK_TLVS = 0x200  # in an error answer: extended-ACK attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_DROP_MEMBERSHIP = 1, 2
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
SO_SNDBUFFORCE, SO_RCVBUFFORCE, SO_ATTACH_FILTER = 32, 33, 26

# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = (
    1, 4, 5, 6, 7, 9, 15)
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4
RTM_F_FIB_MATCH = 0x2000  # in a GET's rtm_flags: answer with the table's route, not a lookup's
RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE = 1, 5, 7
RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE = 9, 11

# linux/if_link.h, linux/if_addr.h, linux/veth.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 5, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 3, 4, 7, 15
IFLA_VXLAN_LOCAL6 = 17
VETH_INFO_PEER = 1
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02

NLMSGHDR = struct.Struct("=IHHII")       # length, type, flags, seq, port id
RTMSG = struct.Struct("=BBBBBBBBI")       # family, dst_len, src_len, tos, table, protocol, scope, type, flags
IFINFOMSG = struct.Struct("=BxHiII")      # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")       # family, prefixlen, flags, scope, index
NDMSG = struct.Struct("=BxxxiHBB")        # family, (3 pad), ifindex, state, flags, type
RTA = struct.Struct("=HH")                # attribute length, type
RTA_U32 = struct.Struct("=HHI")
RTNH = struct.Struct("=HBBi")             # rtnexthop: length, flags, hops, ifindex
ERRNO = struct.Struct("=i")
U32 = struct.Struct("=I")
FLAGS_AT = 6                              # nlmsg_flags inside nlmsghdr
BODY_AT = NLMSGHDR.size

_TIMEOUT = 30.0


class NetlinkError(OSError):
    """The kernel refused a request: `errno` is its answer, the message its words if it gave
    any. ENOENT, ESRCH, ENODEV and EEXIST often mean the goal is already reached; callers that
    want the state rather than the action check for them."""


# -- attributes ----------------------------------------------------------------------------------


def attr(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to four bytes."""
    return RTA.pack(4 + len(value), kind) + value + bytes(-len(value) % 4)


def attr_u32(kind: int, value: int) -> bytes:
    return RTA_U32.pack(8, kind, value)


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def attributes(buf: bytes | bytearray | memoryview, start: int, end: int) -> dict[int, bytes]:
    """The attributes between `start` and `end`, by type (nesting and byte-order flags cleared)."""
    found: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = RTA.unpack_from(buf, start)
        if length < 4:
            break
        found[kind & 0x3FFF] = bytes(buf[start + 4:start + length])
        start += (length + 3) & ~3
    return found


def mac_bytes(mac: str) -> bytes:
    return bytes(int(octet, 16) for octet in mac.split(":"))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{octet:02x}" for octet in raw)


def family_of(address: Address | ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


# -- messages --------------------------------------------------------------------------------------


def message(kind: int, flags: int, body: bytes, seq: int = 0) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def route_message(kind: int, flags: int, destination: ipaddress.IPv4Network | ipaddress.IPv6Network,
                  *, protocol: int = 0, scope: int = RT_SCOPE_UNIVERSE, route_type: int = RTN_UNICAST,
                  table: int = RT_TABLE_MAIN, oif: int = 0, gateway: Address | None = None,
                  onlink: bool = False) -> bytes:
    """RTM_NEWROUTE or RTM_DELROUTE for one route with at most one next hop."""
    family = family_of(destination)
    attrs = attr(RTA_DST, destination.network_address.packed)
    if table >= 256:
        attrs += attr_u32(RTA_TABLE, table)
    if oif:
        attrs += attr_u32(RTA_OIF, oif)
    if gateway is not None:
        attrs += attr(RTA_GATEWAY, gateway.packed)
    body = RTMSG.pack(family, destination.prefixlen, 0, 0, table if table < 256 else 0, protocol,
                      scope, route_type, RTNH_F_ONLINK if onlink else 0)
    return message(kind, flags, body + attrs)


def _link_body(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


# -- what dumps return -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    family: int
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    table: int
    protocol: int
    scope: int
    type: int
    flags: int
    oif: int
    gateway: Address | None
    priority: int
    preferred_source: Address | None
    multipath: bytes | None  # RTA_MULTIPATH as the kernel sent it (dataplane.fib reads it)


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    flags: int
    mtu: int
    mac: str | None
    peer_index: int  # IFLA_LINK: a veth's other end, 0 if none
    kind: str = ""  # IFLA_INFO_KIND: "veth", "vxlan", ... ("" for a plain device)
    info: dict[int, bytes] | None = None  # IFLA_INFO_DATA's attributes (a vxlan's VNI, port...)


@dataclass(frozen=True)
class Neighbour:
    """An ARP/NDP entry (family AF_INET/AF_INET6) or a bridge FDB entry (AF_BRIDGE)."""

    family: int
    index: int
    state: int
    flags: int
    destination: Address | None  # NDA_DST: the neighbour's address; for FDB, the remote VTEP
    mac: str | None


@dataclass(frozen=True)
class InterfaceAddress:
    index: int
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    scope: int


def _address(raw: bytes | None) -> Address | None:
    return ipaddress.ip_address(raw) if raw else None


def parse_route(buf: bytes | bytearray | memoryview, start: int, end: int) -> Route:
    family, dst_len, _, _, table, protocol, scope, rtype, flags = RTMSG.unpack_from(buf, start + BODY_AT)
    found = attributes(buf, start + BODY_AT + RTMSG.size, end)
    size = 4 if family == socket.AF_INET else 16
    destination = ipaddress.ip_network((found.get(RTA_DST, bytes(size)), dst_len), strict=False)
    if RTA_TABLE in found:
        table = U32.unpack(found[RTA_TABLE])[0]
    return Route(family, destination, table, protocol, scope, rtype, flags,
                 U32.unpack(found[RTA_OIF])[0] if RTA_OIF in found else 0,
                 _address(found.get(RTA_GATEWAY)),
                 U32.unpack(found[RTA_PRIORITY])[0] if RTA_PRIORITY in found else 0,
                 _address(found.get(RTA_PREFSRC)), found.get(RTA_MULTIPATH))


def parse_link(buf: bytes | bytearray | memoryview, start: int, end: int) -> Link:
    _, _, index, flags, _ = IFINFOMSG.unpack_from(buf, start + BODY_AT)
    found = attributes(buf, start + BODY_AT + IFINFOMSG.size, end)
    kind, info = "", None
    if IFLA_LINKINFO in found:
        linkinfo = found[IFLA_LINKINFO]
        nested_attrs = attributes(linkinfo, 0, len(linkinfo))
        kind = nested_attrs.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode(errors="replace")
        data = nested_attrs.get(IFLA_INFO_DATA)
        info = attributes(data, 0, len(data)) if data is not None else {}
    return Link(index, found.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"), flags,
                U32.unpack(found[IFLA_MTU])[0] if IFLA_MTU in found else 0,
                mac_text(found[IFLA_ADDRESS]) if IFLA_ADDRESS in found else None,
                ERRNO.unpack(found[IFLA_LINK])[0] if IFLA_LINK in found else 0, kind, info)


def parse_neighbour(buf: bytes | bytearray | memoryview, start: int, end: int) -> Neighbour:
    family, index, state, flags, _ = NDMSG.unpack_from(buf, start + BODY_AT)
    found = attributes(buf, start + BODY_AT + NDMSG.size, end)
    raw = found.get(NDA_LLADDR)
    return Neighbour(family, index, state, flags, _address(found.get(NDA_DST)),
                     mac_text(raw) if raw and len(raw) == 6 else None)


def parse_address(buf: bytes | bytearray | memoryview, start: int, end: int) -> InterfaceAddress:
    _, prefixlen, _, scope, index = IFADDRMSG.unpack_from(buf, start + BODY_AT)
    found = attributes(buf, start + BODY_AT + IFADDRMSG.size, end)
    raw = found.get(IFA_LOCAL) or found[IFA_ADDRESS]
    return InterfaceAddress(index, ipaddress.ip_interface((ipaddress.ip_address(raw), prefixlen)),
                            scope)


def ext_ack_message(buf: bytes | bytearray | memoryview, offset: int, length: int, flags: int) -> str:
    """The kernel's own words for a refusal (NETLINK_EXT_ACK), if it gave any."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # nlmsghdr, error, then the request's nlmsghdr alone (NETLINK_CAP_ACK), then the TLVs.
    found = attributes(buf, offset + 16 + 4 + 16, offset + length)
    text = found.get(NLMSGERR_ATTR_MSG)
    return text.rstrip(b"\0").decode(errors="replace") if text else ""


# -- the socket ------------------------------------------------------------------------------------


class Netlink:
    """One NETLINK_ROUTE socket in the network namespace of the thread that opens it. Blocking;
    not for two threads at once (dataplane.fib puts a lock around its own)."""

    def __init__(self, *, send_buffer: int = 0, receive_buffer: int = 0,
                 timeout: float = _TIMEOUT) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        try:
            for force, plain, size in ((SO_SNDBUFFORCE, socket.SO_SNDBUF, send_buffer),
                                       (SO_RCVBUFFORCE, socket.SO_RCVBUF, receive_buffer)):
                if size:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, force, size)
                    except PermissionError:
                        sock.setsockopt(socket.SOL_SOCKET, plain, size)
            # Short error answers (no copy of our message) with the kernel's reason attached, and
            # dumps the kernel filters. Older kernels lack the last two; nothing breaks without.
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            for option in (NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:
                    pass
            sock.settimeout(timeout)
            sock.bind((0, 0))
            sock.connect((0, 0))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.seq = 0
        self.rbuf = bytearray(1 << 16)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self, count: int = 1) -> int:
        """The first of `count` fresh sequence numbers (32 bits: wrapped before they overflow)."""
        if self.seq + count > 0x7FFFFFFF:
            self.seq = 0
        first = self.seq + 1
        self.seq += count
        return first

    # -- one request at a time ------------------------------------------------------------------

    def request(self, msg: bytes) -> None:
        """Send one request (its seq is set here, NLM_F_ACK added) and wait for the kernel's
        verdict. Raises NetlinkError if it refused."""
        self._exchange(msg, ack=True)

    def ask(self, msg: bytes) -> tuple[bytes, int, int] | None:
        """Send a non-dump GET and return its single answer (buffer, start, end); None when the
        kernel says there is no such object (ENODEV, ENOENT, ESRCH, ENETUNREACH)."""
        try:
            return self._exchange(msg, ack=False)
        except NetlinkError as err:
            if err.errno in (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.ENETUNREACH,
                             errno.EHOSTUNREACH):
                return None
            raise

    def _exchange(self, msg: bytes, *, ack: bool) -> tuple[bytes, int, int] | None:
        """A request asking an ACK (its answer: nothing, or NetlinkError), or a GET (its
        answer: the one object, which comes without an ACK)."""
        data = bytearray(msg)
        flags = struct.unpack_from("=H", data, FLAGS_AT)[0] | (NLM_F_ACK if ack else 0)
        seq = self.next_seq()
        struct.pack_into("=HI", data, FLAGS_AT, flags, seq)
        self.sock.send(data)
        for mtype, mflags, mseq, offset, length in self._answers():
            if mseq != seq:
                continue
            if mtype == NLMSG_ERROR:
                code = -ERRNO.unpack_from(self.rbuf, offset + 16)[0]
                if code:
                    text = ext_ack_message(self.rbuf, offset, length, mflags)
                    raise NetlinkError(code, os.strerror(code) + (f": {text}" if text else ""))
                return None
            if not ack:
                return bytes(self.rbuf[offset:offset + length]), 0, length
        raise AssertionError("unreachable: _answers reads until the socket fails")

    def _answers(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(type, flags, seq, offset, length) of each message the kernel sends, as they are read
        into self.rbuf (valid until the next is read); the one receive loop of this module."""
        rbuf, sock = self.rbuf, self.sock
        while True:
            n = sock.recv_into(rbuf)
            offset = 0
            while offset + 16 <= n:
                length, mtype, mflags, seq, _ = NLMSGHDR.unpack_from(rbuf, offset)
                if length < 16:
                    raise NetlinkError(errno.EPROTO, "malformed netlink message")
                yield mtype, mflags, seq, offset, length
                offset += (length + 3) & ~3

    # -- dumps -------------------------------------------------------------------------------

    def dump(self, msg: bytes, visit: Callable[[bytearray, int, int], None]) -> bool:
        """Send a dump request and call `visit(buffer, start, end)` for each message of the
        answer, in place (the buffer is reused: copy what you keep). True when the kernel flagged
        the dump as interrupted by a change meanwhile (NLM_F_DUMP_INTR): dump again for a
        consistent view."""
        data = bytearray(msg)
        seq = self.next_seq()
        flags = struct.unpack_from("=H", data, FLAGS_AT)[0] | NLM_F_REQUEST | NLM_F_DUMP
        struct.pack_into("=HI", data, FLAGS_AT, flags, seq)
        self.sock.send(data)
        interrupted = False
        rbuf = self.rbuf
        for mtype, mflags, mseq, offset, length in self._answers():
            if mseq != seq:
                continue
            if mflags & NLM_F_DUMP_INTR:
                interrupted = True
            if mtype == NLMSG_DONE:
                return interrupted
            if mtype == NLMSG_ERROR:
                code = -ERRNO.unpack_from(rbuf, offset + 16)[0]
                if code == errno.ENOENT:  # e.g. a table that does not exist (yet): empty
                    return interrupted
                raise NetlinkError(code, os.strerror(code))
            visit(rbuf, offset, offset + length)
        raise AssertionError("unreachable: _answers reads until the socket fails")

    def _collect(self, msg: bytes, parse: Callable[[bytearray, int, int], object],
                 keep: Callable[[bytearray, int, int], bool] = lambda *_: True) -> list:
        for _ in range(5):
            found: list = []
            interrupted = self.dump(msg, lambda b, s, e: found.append(parse(b, s, e)) if keep(b, s, e) else None)
            if not interrupted:
                break
        return found

    def routes(self, family: int, *, protocol: int = 0, table: int = RT_TABLE_MAIN, oif: int = 0,
               default_only: bool = False) -> list[Route]:
        """Routes of one family in `table`, with `protocol` and through `oif` when given: the
        kernel filters (strict checking); the same filters are applied here too, for kernels
        that ignore them. `default_only` keeps the /0 routes."""
        body = RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, protocol, 0, 0, 0)
        body += attr_u32(RTA_TABLE, table)
        if oif:
            body += attr_u32(RTA_OIF, oif)
        request = message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, body)

        def keep(buf: bytearray, start: int, end: int) -> bool:
            rfamily, dst_len, _, _, _, rprotocol, _, _, _ = RTMSG.unpack_from(buf, start + BODY_AT)
            return (NLMSGHDR.unpack_from(buf, start)[1] == RTM_NEWROUTE and rfamily == family
                    and (not protocol or rprotocol == protocol) and (not default_only or dst_len == 0))

        found = self._collect(request, parse_route, keep)
        return [r for r in found if r.table == table and (not oif or r.oif == oif)]

    def links(self) -> list[Link]:
        return self._collect(message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, _link_body()),
                             parse_link, lambda b, s, e: NLMSGHDR.unpack_from(b, s)[1] == RTM_NEWLINK)

    def addresses(self, family: int = socket.AF_UNSPEC, index: int = 0) -> list[InterfaceAddress]:
        request = message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP,
                          IFADDRMSG.pack(family, 0, 0, 0, index))
        found = self._collect(request, parse_address,
                              lambda b, s, e: NLMSGHDR.unpack_from(b, s)[1] == RTM_NEWADDR)
        return [a for a in found if (not index or a.index == index)
                and (family == socket.AF_UNSPEC or family_of(a.interface) == family)]

    # -- links -------------------------------------------------------------------------------

    def link(self, *, name: str | None = None, index: int = 0) -> Link | None:
        """One link by name or index; None if there is none."""
        body = _link_body(index) + (attr_str(IFLA_IFNAME, name) if name else b"")
        answer = self.ask(message(RTM_GETLINK, NLM_F_REQUEST, body))
        return parse_link(*answer) if answer else None

    def add_veth(self, name: str, mac: str, mtu: int, *, peer: str, peer_mac: str,
                 peer_netns_fd: int, up: bool = False) -> None:
        """A veth pair: `name` here, `peer` born inside the namespace `peer_netns_fd` under its
        final name (never visible in this namespace). EEXIST if `name` is taken here. With `up`
        this end is created up (as `ip link add ... up`), sparing a lookup of its index and a
        request. Not the peer: the kernel refuses a peer created up (ENOTCONN)."""
        flags = IFF_UP if up else 0
        peer_info = (_link_body() + attr_str(IFLA_IFNAME, peer) + attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
                     + attr_u32(IFLA_MTU, mtu) + attr(IFLA_ADDRESS, mac_bytes(peer_mac)))
        body = (_link_body(0, flags, flags) + attr_str(IFLA_IFNAME, name)
                + attr(IFLA_ADDRESS, mac_bytes(mac)) + attr_u32(IFLA_MTU, mtu)
                + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth"),
                         nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_info))))
        self.request(message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, body))

    def add_vxlan(self, name: str, *, vni: int, port: int, local: Address,
                  parent: int, mac: str, mtu: int) -> None:
        """A VXLAN device that learns nothing (every remote end is written in by percale),
        over IPv4 or IPv6 as `local` is."""
        local_attr = IFLA_VXLAN_LOCAL if local.version == 4 else IFLA_VXLAN_LOCAL6
        data = (attr_u32(IFLA_VXLAN_ID, vni) + attr_u32(IFLA_VXLAN_LINK, parent)
                + attr(local_attr, local.packed) + attr(IFLA_VXLAN_LEARNING, b"\0")
                + attr(IFLA_VXLAN_PORT, struct.pack("!H", port)))
        body = (_link_body() + attr_str(IFLA_IFNAME, name) + attr(IFLA_ADDRESS, mac_bytes(mac))
                + attr_u32(IFLA_MTU, mtu)
                + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "vxlan"), nested(IFLA_INFO_DATA, data)))
        self.request(message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, body))

    def set_link(self, index: int, *, mtu: int | None = None, mac: str | None = None) -> None:
        body = _link_body(index)
        if mtu is not None:
            body += attr_u32(IFLA_MTU, mtu)
        if mac is not None:
            body += attr(IFLA_ADDRESS, mac_bytes(mac))
        self.request(message(RTM_NEWLINK, NLM_F_REQUEST, body))

    def set_link_up(self, index: int, up: bool = True) -> None:
        body = _link_body(index, IFF_UP if up else 0, IFF_UP)
        self.request(message(RTM_NEWLINK, NLM_F_REQUEST, body))

    def delete_link(self, index: int) -> bool:
        """False if the link was gone already."""
        try:
            self.request(message(RTM_DELLINK, NLM_F_REQUEST, _link_body(index)))
            return True
        except NetlinkError as err:
            if err.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise

    # -- addresses and routes ----------------------------------------------------------------

    def add_address(self, index: int, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                    *, nodad: bool = False) -> None:
        family = family_of(interface)
        packed = interface.ip.packed
        body = (IFADDRMSG.pack(family, interface.network.prefixlen, IFA_F_NODAD if nodad else 0,
                               RT_SCOPE_UNIVERSE, index)
                + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed))
        self.request(message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, body))

    def add_route(self, destination: ipaddress.IPv4Network | ipaddress.IPv6Network, **how: object) -> None:
        """A new route (EEXIST if one holds the destination already); `how` as route_message."""
        self.request(route_message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
                                   destination, **how))  # type: ignore[arg-type]

    def delete_route(self, destination: ipaddress.IPv4Network | ipaddress.IPv6Network, **how: object) -> bool:
        """False if no such route was there. With `protocol`, the kernel deletes only a route
        of that protocol (fib_table_delete and ip6_route_del match on it)."""
        how.setdefault("scope", RT_SCOPE_NOWHERE)
        how.setdefault("route_type", 0)
        try:
            self.request(route_message(RTM_DELROUTE, NLM_F_REQUEST, destination, **how))  # type: ignore[arg-type]
            return True
        except NetlinkError as err:
            if err.errno == errno.ESRCH:
                return False
            raise

    def neighbours(self, family: int, index: int) -> list[Neighbour]:
        """The ARP/NDP entries (AF_INET, AF_INET6) or FDB entries (AF_BRIDGE) of one device."""
        # The device goes in NDA_IFINDEX: a strict neighbour dump refuses it in the header.
        request = message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP,
                          NDMSG.pack(family, 0, 0, 0, 0) + attr_u32(NDA_IFINDEX, index))
        found = self._collect(request, parse_neighbour,
                              lambda b, s, e: NLMSGHDR.unpack_from(b, s)[1] == RTM_NEWNEIGH)
        return [n for n in found if n.index == index and n.family == family]

    def set_neighbour(self, family: int, index: int, destination: Address, mac: str, *,
                      flags: int = 0) -> None:
        """A permanent entry, replacing whatever was there for that key: for AF_INET, the MAC
        of a neighbour address; for AF_BRIDGE (FDB, with NTF_SELF), the VTEP behind a MAC."""
        body = (NDMSG.pack(family, index, NUD_PERMANENT, flags, 0)
                + attr(NDA_LLADDR, mac_bytes(mac)) + attr(NDA_DST, destination.packed))
        self.request(message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, body))

    def delete_neighbour(self, family: int, index: int, destination: Address | None, mac: str | None,
                         *, flags: int = 0) -> bool:
        """False if it was gone already."""
        body = NDMSG.pack(family, index, 0, flags, 0)
        if mac is not None:
            body += attr(NDA_LLADDR, mac_bytes(mac))
        if destination is not None:
            body += attr(NDA_DST, destination.packed)
        try:
            self.request(message(RTM_DELNEIGH, NLM_F_REQUEST, body))
            return True
        except NetlinkError as err:
            if err.errno in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                return False
            raise

    def delete_address(self, index: int, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bool:
        family = family_of(interface)
        body = (IFADDRMSG.pack(family, interface.network.prefixlen, 0, 0, index)
                + attr(IFA_LOCAL, interface.ip.packed) + attr(IFA_ADDRESS, interface.ip.packed))
        try:
            self.request(message(RTM_DELADDR, NLM_F_REQUEST, body))
            return True
        except NetlinkError as err:
            if err.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return False
            raise

    def route_to(self, destination: Address) -> Route | None:
        """The route the kernel would use to reach `destination` (`ip route get`)."""
        family = family_of(destination)
        body = (RTMSG.pack(family, destination.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
                + attr(RTA_DST, destination.packed))
        answer = self.ask(message(RTM_GETROUTE, NLM_F_REQUEST, body))
        return parse_route(*answer) if answer else None

    def route_match(self, destination: Address, *, skip_protocols: Collection[int] = (),
                    table: int = RT_TABLE_MAIN) -> Route | None:
        """The route `destination` matches, as its table holds it (`ip route get fibmatch`:
        its protocol, and every next hop of a multipath route), leaving out the routes of
        `skip_protocols`; None when no other route leads there.

        The kernel's lookup cannot leave a protocol out: when the route it matches is one of
        those, the next best comes from a dump of `table` (longest prefix, then lowest metric),
        which costs a walk of the whole table and so is only for that case."""
        family = family_of(destination)
        body = (RTMSG.pack(family, destination.max_prefixlen, 0, 0, 0, 0, 0, 0, RTM_F_FIB_MATCH)
                + attr(RTA_DST, destination.packed))
        answer = self.ask(message(RTM_GETROUTE, NLM_F_REQUEST, body))
        if answer is None:
            return None  # no route in any table: nor one among the others
        route = parse_route(*answer)
        if route.protocol not in skip_protocols:
            return route
        return self._longest_match(destination, skip_protocols, table)

    def _longest_match(self, destination: Address, skip_protocols: Collection[int],
                       table: int) -> Route | None:
        family, width = family_of(destination), destination.max_prefixlen
        wanted = int(destination)
        body = RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, 0, 0, 0, 0)
        request = message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP,
                          body + attr_u32(RTA_TABLE, table))
        best: list = []  # [(prefix length, -metric), the route's message]

        def visit(buf: bytearray, start: int, end: int) -> None:
            if NLMSGHDR.unpack_from(buf, start)[1] != RTM_NEWROUTE:
                return
            rfamily, dst_len, _, _, rtable, protocol, _, _, _ = RTMSG.unpack_from(
                buf, start + BODY_AT)
            # the header first: a node's table is mostly the skipped protocols' routes
            if rfamily != family or protocol in skip_protocols or (best and dst_len < best[0][0]):
                return
            found = attributes(buf, start + BODY_AT + RTMSG.size, end)
            if RTA_TABLE in found:
                rtable = U32.unpack(found[RTA_TABLE])[0]
            mask = ((1 << dst_len) - 1) << (width - dst_len)
            network = int.from_bytes(found.get(RTA_DST, bytes(width // 8)))
            if rtable != table or (network ^ wanted) & mask:
                return
            rank = (dst_len, -U32.unpack(found[RTA_PRIORITY])[0] if RTA_PRIORITY in found else 0)
            if not best or rank > best[0]:
                best[:] = [rank, bytes(buf[start:end])]

        for _ in range(5):
            best.clear()
            if not self.dump(request, visit):
                break
        return parse_route(best[1], 0, len(best[1])) if best else None

    # -- batches -----------------------------------------------------------------------------

    def send_batch(self, buf: bytearray, first: int, last: int, last_offset: int) -> dict[int, tuple[int, str]]:
        """Send messages numbered first..last, already packed into `buf` (the last one starting
        at `last_offset`), asking an ACK of the last only, and return the refusals by sequence
        number: {seq: (errno, the kernel's words)}.

        No message but the last asks for an ACK: the kernel always answers a failed request
        with an error, and handles a batch in order inside send(), so the ACK of the last,
        read after any errors, proves every other message went in. One ACK read per batch
        instead of per message, and every message's outcome still known. Raises OSError if the
        socket fails; then which messages went in is unknown."""
        flags = struct.unpack_from("=H", buf, last_offset + FLAGS_AT)[0]
        struct.pack_into("=H", buf, last_offset + FLAGS_AT, flags | NLM_F_ACK)
        self.sock.send(buf)
        errors: dict[int, tuple[int, str]] = {}
        for mtype, mflags, seq, offset, length in self._answers():
            if mtype == NLMSG_ERROR and first <= seq <= last:
                code = -ERRNO.unpack_from(self.rbuf, offset + 16)[0]
                if code:
                    errors[seq] = (code, ext_ack_message(self.rbuf, offset, length, mflags))
                if seq == last:
                    return errors
        raise AssertionError("unreachable: _answers reads until the socket fails")


# -- notifications --------------------------------------------------------------------------------


class RouteEvents:
    """The kernel's notifications of routes, addresses and links changing (both families), on a
    socket of their own: for following what other routes resolve through.

    The socket joins those groups only while `follow(True)` says so: a member is sent a copy of
    every change, and a node with nothing to follow should pay nothing for it. Route changes of
    `quiet_protocols` are dropped in the kernel by a socket filter, before they reach the
    socket: a 100k-route load of percale's own routes would otherwise wake the reader 100k
    times. Nothing is parsed: the reader wants to know that something changed, and then looks.

    Non-blocking: `drain()` reads what waits and says how much; select on `fileno()`."""

    GROUPS = (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_IFADDR,
              RTNLGRP_IPV6_ROUTE)

    def __init__(self, quiet_protocols: Collection[int] = (), *,
                 receive_buffer: int = 1 << 20) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            if quiet_protocols:
                _attach_filter(sock, _quiet_routes_filter(quiet_protocols))
            sock.setblocking(False)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.following = False
        self._rbuf = bytearray(1 << 16)

    def fileno(self) -> int:
        return self.sock.fileno()

    def follow(self, on: bool) -> None:
        """Join the groups (or leave them); what waits from before stays to be drained."""
        if on == self.following:
            return
        option = NETLINK_ADD_MEMBERSHIP if on else NETLINK_DROP_MEMBERSHIP
        for group in self.GROUPS:
            self.sock.setsockopt(SOL_NETLINK, option, group)
        self.following = on

    def drain(self) -> int:
        """Read every notification waiting; how many reads found something. An overflowed
        socket (ENOBUFS: notifications were lost) counts as a change."""
        reads = 0
        while True:
            try:
                if not self.sock.recv_into(self._rbuf):
                    return reads
            except BlockingIOError:
                return reads
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
            reads += 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# linux/filter.h: classic BPF, as SO_ATTACH_FILTER takes it
_BPF_LD_B_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x30, 0x15, 0x06
_BPF_INSTRUCTION = struct.Struct("=HBBI")  # code, jump if true, jump if false, k
_SOCK_FPROG = struct.Struct("@HP")  # length, the instructions' address


def _quiet_routes_filter(protocols: Collection[int]) -> list[tuple[int, int, int, int]]:
    """A program that drops RTM_NEWROUTE / RTM_DELROUTE of `protocols` and keeps the rest.
    One notification is one message, so its header is at offset 0."""
    protocols = sorted(set(protocols))
    # nlmsg_type is host-endian and below 256 here: one byte of it tells
    type_byte = 4 if sys.byteorder == "little" else 5
    protocol_byte = NLMSGHDR.size + 5  # rtmsg's rtm_protocol
    count = len(protocols)
    program = [(_BPF_LD_B_ABS, 0, 0, type_byte),
               (_BPF_JEQ_K, 1, 0, RTM_NEWROUTE),
               (_BPF_JEQ_K, 0, count + 1, RTM_DELROUTE),
               (_BPF_LD_B_ABS, 0, 0, protocol_byte)]
    for index, protocol in enumerate(protocols):
        program.append((_BPF_JEQ_K, count - index, 0, protocol))
    program += [(_BPF_RET_K, 0, 0, 0xFFFFFFFF), (_BPF_RET_K, 0, 0, 0)]
    return program


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = ctypes.create_string_buffer(b"".join(_BPF_INSTRUCTION.pack(*i) for i in program))
    # the kernel copies the program during the call
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    _SOCK_FPROG.pack(len(program), ctypes.addressof(code)))
