"""The FIB: the routes percale-node learned over BGP, kept in the kernel.

Where it sits: the RIB (pure, no I/O) picks best paths; the agent hands each change to this module
from a worker thread; this module is the only part of percale that writes BGP-learned routes to
the kernel. It follows kube-router's route syncer: a desired-state map (prefix → set of next hops,
more than one next hop being an ECMP multipath route), applied at once when it changes and
re-applied in full on a timer by `reconcile()`, which heals whatever was changed behind its back.

    fib = FIB()                    # in the namespace the process is in; adopts what is there
    fib.apply({prefix: {NextHop("192.0.2.7")}, other: None})   # as the RIB changes; None withdraws
    fib.replace_all(rib_routes)    # every peer's end-of-RIB is in: what was not relearned goes
    fib.reconcile()                # every few seconds, from the agent's timer

Everything blocks (netlink); one FIB is one NETLINK_ROUTE socket, and calls are serialised by a
lock, so a timer thread and the RIB's worker may share one.

One owner per class of kernel state
-----------------------------------
Every route percale programs carries a route protocol number, and each class of route has its own
number and exactly one owner, which reconciles only routes carrying that number:

    protocol 201  pod host routes (/32, /128 dev <pod veth>)   percale.dataplane.pod_network
    protocol 202  BGP-learned routes (via a peer's next hop)   this module (ROUTE_PROTOCOL_BGP)

Why a second number rather than sharing 201 and telling routes apart by prefix or by shape: a
node learns borrowed /32s over BGP, so prefix length proves nothing, and a restarted agent must
know which routes are its own before the RIB has relearned anything (to adopt them, below). A
number is the one tag the kernel keeps, lets a dump filter on, and checks on delete. So this module:

* dumps only routes with protocol 202 in its table, and never adds to, replaces or deletes any
  other route;
* deletes with rtm_protocol = 202, so the kernel itself refuses to remove a route of another
  protocol for the same prefix (fib_table_delete and ip6_route_del match on the protocol);
* adds a prefix it does not already own with NLM_F_EXCL, never NLM_F_REPLACE: if a pod route (or
  anything else) already holds that prefix, the kernel answers EEXIST, the pod route stays, and
  the prefix is reported in `Outcome.failed` until its owner lets it go. Only a route this module
  knows to be its own (from a dump or its own acknowledged write) is replaced, atomically, so
  changing a next hop never takes the route away. That knowledge is as fresh as the last
  reconcile: the one case a replace could hit another owner's route is a route of ours deleted by
  hand and its prefix taken by another owner before the next reconcile looks.

Adoption. A FIB starts by reading its routes from the kernel and, by default, takes them as its
desired state: a restarted agent leaves the routes it installed before in place (no delete and
re-add, so pod traffic does not notice), BGP graceful restart keeps them while the sessions come
back, and `replace_all()` removes whatever the RIB did not relearn.

Speed. Messages are packed by hand (struct, no pyroute2: it spends about 400 µs building one
message, reference/performance.md §3) and sent many to a send(). They carry no NLM_F_ACK except the
last of each batch: the kernel always answers a failed request with an error, and it handles a
batch in order inside send(), so the ACK of the last message, read after any errors, proves every
other message went in. That is one ACK read per batch instead of per route, with every route's
outcome still checked.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Self

ROUTE_PROTOCOL_BGP = 202
RT_TABLE_MAIN = 254

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
_PREFIX_TYPES = (ipaddress.IPv4Network, ipaddress.IPv6Network)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# linux/netlink.h, linux/rtnetlink.h
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 24, 25, 26
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP_INTR, _NLM_F_DUMP = 0x1, 0x4, 0x10, 0x300
_NLM_F_REPLACE, _NLM_F_EXCL, _NLM_F_CREATE = 0x100, 0x200, 0x400
_NLM_F_ACK_TLVS = 0x200
_NLMSGERR_ATTR_MSG = 1
_SOL_NETLINK = 270
_NETLINK_CAP_ACK, _NETLINK_EXT_ACK, _NETLINK_GET_STRICT_CHK = 10, 11, 12
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY, _RTA_MULTIPATH, _RTA_TABLE = 1, 4, 5, 6, 9, 15
_RTN_UNICAST = 1
_RT_SCOPE_UNIVERSE, _RT_SCOPE_NOWHERE = 0, 255
_RTNH_F_ONLINK = 4
# The metric the kernel gives a route added without one (IPv6: IP6_RT_PRIO_USER). Routes are keyed
# by (prefix, metric); ours always have the default, so any other metric is a stray.
_DEFAULT_METRIC = {socket.AF_INET: 0, socket.AF_INET6: 1024}

_NLMSGHDR = struct.Struct("=IHHII")
_ERRNO = struct.Struct("=i")
_U32 = struct.Struct("=I")
_RTA = struct.Struct("=HH")
_RTA_U32 = struct.Struct("=HHI")
_RTNH = struct.Struct("=HBBi")
# nlmsghdr + rtmsg + RTA_DST, for each family: the part of a message that differs per route.
_HEAD = {
    socket.AF_INET: struct.Struct("=IHHIIBBBBBBBBIHH4s"),
    socket.AF_INET6: struct.Struct("=IHHIIBBBBBBBBIHH16s"),
}
_DST_ATTR_LEN = {socket.AF_INET: 8, socket.AF_INET6: 20}
_FLAGS = struct.Struct("=H")
_FLAGS_AT = 6  # nlmsg_flags inside nlmsghdr
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTMSG_AT = _NLMSGHDR.size
_ATTRS_AT = _NLMSGHDR.size + 12

# One send() carries at most this much. The kernel answers inside send(), so a batch also bounds
# how many error messages can wait in the receive buffer (sized below for a batch of failures).
BATCH_BYTES = 128 * 1024
_SNDBUF = 1 << 20
_RCVBUF = 8 << 20
_TIMEOUT = 30.0


class FIBError(Exception):
    """Base of this module's errors.

    FIBError
    ├── InvalidRoute      (also a ValueError) the input is wrong; nothing was applied: fix it
    └── NetlinkFailure    the socket failed or the kernel's answers were lost; which routes
                          went in is unknown: call reconcile(), which dumps and repairs
    Routes the kernel refused one by one are no exception: see Outcome.failed.
    """


class InvalidRoute(FIBError, ValueError):
    pass


class NetlinkFailure(FIBError):
    pass


@dataclass(frozen=True)
class NextHop:
    """One next hop: a gateway, optionally pinned to an interface (needed for `onlink`, for IPv6
    link-local gateways, and for a gateway the kernel cannot resolve through a connected route)."""

    gateway: Address
    ifindex: int = 0
    onlink: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.gateway, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            object.__setattr__(self, "gateway", ipaddress.ip_address(self.gateway))
        if self.onlink and not self.ifindex:
            raise InvalidRoute(f"next hop {self.gateway} onlink needs an interface (ifindex)")
        if self.gateway.is_link_local and self.gateway.version == 6 and not self.ifindex:
            raise InvalidRoute(f"link-local next hop {self.gateway} needs an interface (ifindex)")

    def __str__(self) -> str:
        return (f"via {self.gateway}" + (f" ifindex {self.ifindex}" if self.ifindex else "")
                + (" onlink" if self.onlink else ""))


Hops = frozenset[NextHop]


@dataclass
class Outcome:
    """What one call did to the kernel. `failed` maps each prefix the kernel refused to its
    reason; the desired state keeps it, so the next reconcile() tries again."""

    added: int = 0
    replaced: int = 0
    deleted: int = 0
    adopted: int = 0
    failed: dict[Prefix, str] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return self.added + self.replaced + self.deleted


class FIB:
    """The kernel's BGP-learned routes in one routing table of the current network namespace.

    `adopt=True` (the default) makes the routes already in the kernel with this protocol the
    desired state, so nothing moves until the caller says otherwise; `adopt=False` starts from an
    empty desired state, and the first reconcile() deletes them.
    """

    def __init__(self, *, table: int = RT_TABLE_MAIN, protocol: int = ROUTE_PROTOCOL_BGP,
                 adopt: bool = True) -> None:
        self.table = table
        self.protocol = protocol
        self._lock = threading.Lock()
        self._desired: dict[Prefix, Hops] = {}
        # What this module believes the kernel holds of its own: from the last dump, updated by
        # every acknowledged write. It decides between NLM_F_EXCL (new) and NLM_F_REPLACE (ours).
        self._kernel: dict[Prefix, Hops] = {}
        self._hops: dict[object, tuple[Hops, int]] = {}  # input → (canonical hops, family)
        self._dumped_hops: dict[object, Hops] = {}  # wire form → hops, during one dump
        self._tails: dict[Hops, tuple[int, bytes]] = {}  # hops → (rtm_flags, attributes)
        self._table_attr = _RTA_U32.pack(8, _RTA_TABLE, table)
        self._rtm_table = table if table < 256 else 0
        self._stale = False  # a batch's answers were lost: read the kernel before the next apply
        self._seq = 0
        self._rbuf = bytearray(1 << 16)
        self._sock = self._open()
        try:
            self._kernel, _ = self._dump()
        except BaseException:
            self._sock.close()
            raise
        if adopt:
            self._desired = {p: h for p, h in self._kernel.items() if h}

    # -- public API -------------------------------------------------------------------------

    @property
    def desired(self) -> Mapping[Prefix, Hops]:
        """The desired state, read-only (a live view)."""
        return MappingProxyType(self._desired)

    @property
    def programmed(self) -> Mapping[Prefix, Hops]:
        """The routes this FIB believes are in the kernel, read-only (a live view)."""
        return MappingProxyType(self._kernel)

    def apply(self, changes: Mapping[object, Iterable[object] | None]) -> Outcome:
        """Change the desired state for these prefixes and program them now, in batches.

        A value is the prefix's full set of next hops (several: an ECMP route); None or an empty
        set withdraws the prefix. Prefixes and next hops may be ipaddress objects, NextHop or
        strings. A route already in the kernel as desired is not sent again. Raises InvalidRoute
        before touching anything if any entry is malformed."""
        normal = self._normalise(changes)
        with self._lock:
            if self._stale:
                self._kernel, _ = self._dump()
                self._stale = False
            return self._program(self._plan_apply(normal))

    def replace_all(self, routes: Mapping[object, Iterable[object]]) -> Outcome:
        """Make `routes` the whole desired state and reconcile: what is not in it goes."""
        normal = self._normalise(routes)
        with self._lock:
            self._desired = {p: h for p, h in normal if h}
            return self._reconcile()

    def reconcile(self) -> Outcome:
        """Dump the kernel's routes with our protocol in our table, then add what is missing,
        replace what differs, and delete what is not desired (and strays: a second route of ours
        for a prefix, or one with another metric). Routes already right are not touched."""
        with self._lock:
            return self._reconcile()

    def adopt(self) -> Outcome:
        """Take the kernel's routes with our protocol as the desired state (as at start)."""
        with self._lock:
            self._kernel, _ = self._dump()
            self._stale = False
            self._desired = {p: h for p, h in self._kernel.items() if h}
            return Outcome(adopted=len(self._desired))

    def kernel_prefixes(self) -> set[Prefix]:
        """The prefixes of the kernel's routes with our protocol in our table, whatever their
        type: one dump the kernel filters, so a large table of other routes costs nothing."""
        with self._lock:
            routes, strays = self._dump()
            return set(routes) | {prefix for prefix, _ in strays}

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- desired state ----------------------------------------------------------------------

    def _normalise(self, changes: Mapping[object, Iterable[object] | None]
                   ) -> list[tuple[Prefix, Hops | None]]:
        out = []
        hop_cache = self._hops
        for prefix, hops in changes.items():
            if type(prefix) not in _PREFIX_TYPES:
                try:
                    prefix = ipaddress.ip_network(prefix)
                except (ValueError, TypeError) as err:
                    raise InvalidRoute(f"{prefix!r}: {err}") from None
            if hops is None:
                out.append((prefix, None))
                continue
            try:
                canonical, version = hop_cache[hops]
            except (KeyError, TypeError):
                canonical, version = self._canonical_hops(prefix, hops)
            if canonical and version != prefix.version:
                gateways = sorted(str(h.gateway) for h in canonical)
                raise InvalidRoute(f"{prefix}: next hops {gateways} are IPv{version}")
            out.append((prefix, canonical or None))
        return out

    def _canonical_hops(self, prefix: Prefix, hops: Iterable[object]) -> tuple[Hops, int]:
        if isinstance(hops, (str, bytes, NextHop)) or not isinstance(hops, Iterable):
            raise InvalidRoute(f"{prefix}: next hops must be a set of addresses or NextHop, "
                               f"not {hops!r}")
        try:
            canonical = frozenset(h if isinstance(h, NextHop) else NextHop(h) for h in hops)
        except (ValueError, TypeError) as err:
            raise InvalidRoute(f"{prefix}: {err}") from None
        versions = {h.gateway.version for h in canonical}
        if len(versions) > 1:
            raise InvalidRoute(f"{prefix}: next hops mix IPv4 and IPv6")
        version = versions.pop() if versions else prefix.version
        if isinstance(hops, frozenset) and len(self._hops) < 65536:
            self._hops[hops] = (canonical, version)
        return canonical, version

    def _plan_apply(self, normal: list[tuple[Prefix, Hops | None]]) -> list[tuple]:
        desired, kernel = self._desired, self._kernel
        same = _Same()
        plan = []
        for prefix, hops in normal:
            if hops:
                desired[prefix] = hops
                current = kernel.get(prefix)
                if current is None:
                    plan.append((_ADD, prefix, hops))
                elif not same(hops, current):
                    plan.append((_REPLACE, prefix, hops))
            else:
                desired.pop(prefix, None)
                if prefix in kernel:
                    plan.append((_DELETE, prefix, None))
        return plan

    def _reconcile(self) -> Outcome:
        kernel, strays = self._dump()
        self._kernel = kernel
        self._stale = False
        plan: list[tuple] = [(_DELETE_STRAY, prefix, stray) for prefix, stray in strays]
        same = _Same()
        for prefix, hops in self._desired.items():
            current = kernel.get(prefix)
            if current is None:
                plan.append((_ADD, prefix, hops))
            elif not same(hops, current):
                plan.append((_REPLACE, prefix, hops))
        plan.extend((_DELETE, prefix, None) for prefix in kernel if prefix not in self._desired)
        return self._program(plan)

    # -- messages ---------------------------------------------------------------------------

    def _tail(self, hops: Hops) -> tuple[int, bytes]:
        """rtm_flags and the attributes after RTA_DST for a set of next hops (cached: a mesh
        has one set per node, shared by all its blocks)."""
        found = self._tails.get(hops)
        if found is not None:
            return found
        ordered = sorted(hops, key=lambda h: (h.gateway, h.ifindex, h.onlink))
        if len(ordered) == 1:
            hop = ordered[0]
            body = _attr(_RTA_GATEWAY, hop.gateway.packed)
            if hop.ifindex:
                body += _RTA_U32.pack(8, _RTA_OIF, hop.ifindex)
            flags = _RTNH_F_ONLINK if hop.onlink else 0
        else:
            nexthops = b""
            for hop in ordered:
                gateway = _attr(_RTA_GATEWAY, hop.gateway.packed)
                hop_flags = _RTNH_F_ONLINK if hop.onlink else 0
                nexthops += _RTNH.pack(_RTNH.size + len(gateway), hop_flags, 0, hop.ifindex)
                nexthops += gateway
            flags = 0  # onlink travels in each rtnexthop
            body = _attr(_RTA_MULTIPATH, nexthops)
        found = (flags, self._table_attr + body)
        if len(self._tails) < 65536:
            self._tails[hops] = found
        return found

    def _program(self, plan: list[tuple]) -> Outcome:
        """Send the plan in batches; update what we believe the kernel holds as answers come."""
        outcome = Outcome()
        if not plan:
            return outcome
        self._wrap_seq()
        kernel = self._kernel
        new_flags = {_ADD: _NLM_F_REQUEST | _NLM_F_CREATE | _NLM_F_EXCL,
                     _REPLACE: _NLM_F_REQUEST | _NLM_F_CREATE | _NLM_F_REPLACE}
        heads = _HEAD
        rtm_table, protocol, table_attr = self._rtm_table, self.protocol, self._table_attr
        buf = bytearray()
        batch: list[tuple] = []  # (kind, prefix, what the kernel held before)
        last = 0  # offset of the batch's last message, which asks for the ACK
        seq = self._seq
        for kind, prefix, hops in plan:
            family = socket.AF_INET if prefix.version == 4 else socket.AF_INET6
            if kind is _ADD or kind is _REPLACE:
                rflags, tail = self._tail(hops)
                head = heads[family]
                last = len(buf)
                seq += 1
                buf += head.pack(head.size + len(tail), _RTM_NEWROUTE, new_flags[kind], seq, 0,
                                 family, prefix.prefixlen, 0, 0, rtm_table, protocol,
                                 _RT_SCOPE_UNIVERSE, _RTN_UNICAST, rflags,
                                 _DST_ATTR_LEN[family], _RTA_DST, prefix.network_address.packed)
                buf += tail
                batch.append((kind, prefix, kernel.get(prefix)))
                kernel[prefix] = hops
            else:
                tail = table_attr
                if kind is _DELETE_STRAY:
                    metric, stray_hops = hops
                    tail += _RTA_U32.pack(8, _RTA_PRIORITY, metric)
                    if stray_hops:
                        tail += self._tail(stray_hops)[1][len(table_attr):]
                head = heads[family]
                last = len(buf)
                seq += 1
                buf += head.pack(head.size + len(tail), _RTM_DELROUTE, _NLM_F_REQUEST, seq, 0,
                                 family, prefix.prefixlen, 0, 0, rtm_table, protocol,
                                 _RT_SCOPE_NOWHERE, 0, 0,
                                 _DST_ATTR_LEN[family], _RTA_DST, prefix.network_address.packed)
                buf += tail
                if kind is _DELETE:
                    batch.append((kind, prefix, kernel.pop(prefix, None)))
                else:
                    batch.append((kind, prefix, None))
            if len(buf) >= BATCH_BYTES:
                self._seq = seq
                self._flush(buf, last, batch, outcome)
                buf, batch = bytearray(), []
        self._seq = seq
        if batch:
            self._flush(buf, last, batch, outcome)
        return outcome

    def _wrap_seq(self) -> None:
        # nlmsg_seq is 32 bits; a batch's numbers must not wrap inside it.
        if self._seq > 0x7FFFFFFF:
            self._seq = 0

    def _flush(self, buf: bytearray, last: int, batch: list[tuple], outcome: Outcome) -> None:
        flags = _FLAGS.unpack_from(buf, last + _FLAGS_AT)[0]
        _FLAGS.pack_into(buf, last + _FLAGS_AT, flags | _NLM_F_ACK)
        first_seq = self._seq - len(batch) + 1
        try:
            self._sock.send(buf)
            errors = self._collect_errors(first_seq, self._seq)
        except OSError as err:
            self._stale = True
            raise NetlinkFailure(f"netlink: {err}; routes in this batch may or may not be in the "
                                 f"kernel, call reconcile()") from err
        kernel = self._kernel
        for index, (kind, prefix, before) in enumerate(batch):
            failure = errors.get(first_seq + index)
            if failure is None:
                if kind is _ADD:
                    outcome.added += 1
                elif kind is _REPLACE:
                    outcome.replaced += 1
                else:
                    outcome.deleted += 1
                continue
            code, text = failure
            if kind is _DELETE or kind is _DELETE_STRAY:
                if code == errno.ESRCH:  # already gone: the delete's goal holds
                    outcome.deleted += 1
                    continue
                if kind is _DELETE and before is not None:
                    kernel[prefix] = before
            elif before is None:
                kernel.pop(prefix, None)
            else:
                kernel[prefix] = before
            reason = f"{os.strerror(code)}" + (f": {text}" if text else "")
            if kind is _ADD and code == errno.EEXIST:
                reason = ("the kernel already holds a route to this prefix that the FIB does not "
                          "know as its own (another protocol's); left alone")
            outcome.failed[prefix] = reason

    def _collect_errors(self, first: int, last: int) -> dict[int, tuple[int, str]]:
        """Read the kernel's answers to messages first..last until the ACK of `last`."""
        errors: dict[int, tuple[int, str]] = {}
        rbuf, sock = self._rbuf, self._sock
        while True:
            n = sock.recv_into(rbuf)
            offset = 0
            while offset + 16 <= n:
                length, mtype, mflags, seq, _ = _NLMSGHDR.unpack_from(rbuf, offset)
                if length < 16:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if mtype == _NLMSG_ERROR and first <= seq <= last:
                    code = -_ERRNO.unpack_from(rbuf, offset + 16)[0]
                    if code:
                        errors[seq] = (code, _ext_ack_message(rbuf, offset, length, mflags))
                    if seq == last:
                        return errors
                offset += (length + 3) & ~3

    # -- dump -------------------------------------------------------------------------------

    def _dump(self) -> tuple[dict[Prefix, Hops], list[tuple[Prefix, tuple[int, Hops]]]]:
        """Our routes in our table: prefix → next hops (empty when a route of ours has none we
        could express, e.g. a blackhole: it is then always 'wrong'), and the strays."""
        self._dumped_hops = {}
        for _ in range(5):
            routes: dict[Prefix, Hops] = {}
            strays: list[tuple[Prefix, tuple[int, Hops]]] = []
            interrupted = False
            for family in (socket.AF_INET, socket.AF_INET6):
                interrupted |= self._dump_family(family, routes, strays)
            if not interrupted:
                return routes, strays
        return routes, strays  # still changing under us; the next reconcile looks again

    def _dump_family(self, family: int, routes: dict, strays: list) -> bool:
        self._wrap_seq()
        self._seq += 1
        seq = self._seq
        request = (_NLMSGHDR.pack(16 + 12 + 8, _RTM_GETROUTE, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
                   + _RTMSG.pack(family, 0, 0, 0, self._rtm_table, self.protocol, 0, 0, 0)
                   + self._table_attr)
        interrupted = False
        try:
            self._sock.send(request)
            rbuf, sock = self._rbuf, self._sock
            while True:
                n = sock.recv_into(rbuf)
                offset = 0
                while offset + 16 <= n:
                    length, mtype, mflags, mseq, _ = _NLMSGHDR.unpack_from(rbuf, offset)
                    if length < 16:
                        raise OSError(errno.EPROTO, "malformed netlink message")
                    if mseq == seq:
                        if mflags & _NLM_F_DUMP_INTR:
                            interrupted = True
                        if mtype == _NLMSG_DONE:
                            return interrupted
                        if mtype == _NLMSG_ERROR:
                            code = -_ERRNO.unpack_from(rbuf, offset + 16)[0]
                            if code == errno.ENOENT:  # the table does not exist (yet): empty
                                return interrupted
                            raise OSError(code, os.strerror(code))
                        if mtype == _RTM_NEWROUTE:
                            self._take(rbuf, offset, offset + length, family, routes, strays)
                    offset += (length + 3) & ~3
        except OSError as err:
            raise NetlinkFailure(f"netlink dump: {err}; try again") from err

    def _take(self, buf: bytearray, start: int, end: int, family: int, routes: dict,
              strays: list) -> None:
        rfamily, dst_len, _, _, table, protocol, _, rtype, rflags = _RTMSG.unpack_from(
            buf, start + _RTMSG_AT)
        if rfamily != family or protocol != self.protocol:
            return
        dst, metric, gateway, oif, multipath = None, 0, None, 0, None
        offset = start + _ATTRS_AT
        while offset + 4 <= end:
            alen, atype = _RTA.unpack_from(buf, offset)
            if alen < 4:
                break
            atype &= 0x3FFF
            if atype == _RTA_DST:
                dst = bytes(buf[offset + 4:offset + alen])
            elif atype == _RTA_GATEWAY:
                gateway = bytes(buf[offset + 4:offset + alen])
            elif atype == _RTA_OIF:
                oif = _U32.unpack_from(buf, offset + 4)[0]
            elif atype == _RTA_TABLE:
                table = _U32.unpack_from(buf, offset + 4)[0]
            elif atype == _RTA_PRIORITY:
                metric = _U32.unpack_from(buf, offset + 4)[0]
            elif atype == _RTA_MULTIPATH:
                multipath = bytes(buf[offset + 4:offset + alen])
            offset += (alen + 3) & ~3
        if table != self.table:
            return
        if family == socket.AF_INET:
            network = ipaddress.IPv4Network((dst or bytes(4), dst_len), strict=False)
        else:
            network = ipaddress.IPv6Network((dst or bytes(16), dst_len), strict=False)
        hops: Hops = frozenset()
        if rtype == _RTN_UNICAST and (multipath is not None or gateway is not None):
            # A mesh has one next hop per node: parse each distinct one once per dump.
            key = multipath if multipath is not None else (gateway, oif, rflags & _RTNH_F_ONLINK)
            hops = self._dumped_hops.get(key)
            if hops is None:
                if multipath is not None:
                    hops = _parse_multipath(multipath)
                else:
                    hops = frozenset((NextHop(ipaddress.ip_address(gateway), oif,
                                              bool(rflags & _RTNH_F_ONLINK)),))
                self._dumped_hops[key] = hops
        known = len(routes)
        if metric != _DEFAULT_METRIC[family] or routes.setdefault(network, hops) is not hops \
                or len(routes) == known:
            strays.append((network, (metric, hops)))

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        try:
            for force, plain, size in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF, _SNDBUF),
                                       (_SO_RCVBUFFORCE, socket.SO_RCVBUF, _RCVBUF)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, size)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, size)
            # Short error answers (no copy of our message) with the kernel's reason attached, and
            # dumps the kernel filters by protocol and table. Older kernels lack the last two.
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            for option in (_NETLINK_EXT_ACK, _NETLINK_GET_STRICT_CHK):
                try:
                    sock.setsockopt(_SOL_NETLINK, option, 1)
                except OSError:
                    pass
            sock.settimeout(_TIMEOUT)
            sock.bind((0, 0))
            sock.connect((0, 0))
        except OSError as err:
            sock.close()
            raise NetlinkFailure(f"opening a netlink socket: {err}") from err
        return sock


_ADD, _REPLACE, _DELETE, _DELETE_STRAY = "add", "replace", "delete", "delete-stray"


def _attr(kind: int, value: bytes) -> bytes:
    return _RTA.pack(4 + len(value), kind) + value + bytes(-len(value) % 4)


class _Same:
    """_same, remembered for the pairs of hop sets one pass compares (all objects alive during
    it; a mesh has one set per node, so a pass over 100k routes compares a handful of pairs)."""

    def __init__(self) -> None:
        self.memo: dict[tuple[int, int], bool] = {}

    def __call__(self, want: Hops, have: Hops) -> bool:
        if want is have:
            return True
        key = (id(want), id(have))
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = _same(want, have)
        return found


def _same(want: Hops, have: Hops) -> bool:
    """Whether the kernel's next hops are the desired ones; a desired hop without an interface
    matches whatever interface the kernel resolved it to."""
    if want == have:
        return True
    if len(want) != len(have):
        return False
    left = list(have)
    for hop in want:
        for candidate in left:
            if (candidate.gateway == hop.gateway and candidate.onlink == hop.onlink
                    and hop.ifindex in (0, candidate.ifindex)):
                left.remove(candidate)
                break
        else:
            return False
    return True


def _parse_multipath(value: bytes) -> Hops:
    hops = []
    offset = 0
    while offset + _RTNH.size <= len(value):
        length, flags, _, ifindex = _RTNH.unpack_from(value, offset)
        if length < _RTNH.size:
            break
        inner = offset + _RTNH.size
        while inner + 4 <= offset + length:
            alen, atype = _RTA.unpack_from(value, inner)
            if alen < 4:
                break
            if atype == _RTA_GATEWAY:
                hops.append(NextHop(ipaddress.ip_address(value[inner + 4:inner + alen]), ifindex,
                                    bool(flags & _RTNH_F_ONLINK)))
            inner += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return frozenset(hops)


def _ext_ack_message(buf: bytearray, offset: int, length: int, flags: int) -> str:
    """The kernel's own words for a refusal (NETLINK_EXT_ACK), if it gave any."""
    if not flags & _NLM_F_ACK_TLVS:
        return ""
    # nlmsghdr, error, then the request's nlmsghdr alone (NETLINK_CAP_ACK), then the TLVs.
    inner = offset + 16 + 4 + 16
    end = offset + length
    while inner + 4 <= end:
        alen, atype = _RTA.unpack_from(buf, inner)
        if alen < 4:
            break
        if atype == _NLMSGERR_ATTR_MSG:
            return bytes(buf[inner + 4:inner + alen]).rstrip(b"\0").decode(errors="replace")
        inner += (alen + 3) & ~3
    return ""
