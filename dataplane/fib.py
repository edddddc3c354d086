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
Every route percale programs carries a route protocol number, one per owner
(dataplane/route_owners.py); this module owns RouteProtocol.BGP (202) and reconciles only those.

Why a number of its own rather than sharing the pods' 201 and telling routes apart by shape: a
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

Speed. Messages are packed by hand here (the route's head is one struct.pack, the next hops'
attributes are packed once per set of hops) and sent many to a send() through
dataplane.netlink's batches: one ACK read per batch, every route's outcome still checked.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import Self

from percale.dataplane import netlink
from percale.dataplane.netlink import (
    BODY_AT,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSGHDR,
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA,
    RTA_DST,
    RTA_GATEWAY,
    RTA_MULTIPATH,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTA_U32,
    RTM_DELROUTE,
    RTM_GETROUTE,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RTNH,
    RTNH_F_ONLINK,
    U32,
    attr,
)
from percale.dataplane.route_owners import RouteProtocol

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
_PREFIX_TYPES = (ipaddress.IPv4Network, ipaddress.IPv6Network)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The metric the kernel gives a route added without one (IPv6: IP6_RT_PRIO_USER). Routes are keyed
# by (prefix, metric); ours always have the default, so any other metric is a stray.
_DEFAULT_METRIC = {socket.AF_INET: 0, socket.AF_INET6: 1024}

# nlmsghdr + rtmsg + RTA_DST, for each family: the part of a message that differs per route.
_HEAD = {
    socket.AF_INET: struct.Struct("=IHHIIBBBBBBBBIHH4s"),
    socket.AF_INET6: struct.Struct("=IHHIIBBBBBBBBIHH16s"),
}
_DST_ATTR_LEN = {socket.AF_INET: 8, socket.AF_INET6: 20}
# By a prefix's IP version: its family, head, RTA_DST length and address width. The plan reads
# ipaddress's own fields (_version, _prefixlen, the address's _ip) rather than its properties:
# a 100k-route load calls each of those once per route.
_BY_VERSION = {
    4: (socket.AF_INET, _HEAD[socket.AF_INET], _DST_ATTR_LEN[socket.AF_INET], 4),
    6: (socket.AF_INET6, _HEAD[socket.AF_INET6], _DST_ATTR_LEN[socket.AF_INET6], 16),
}
# One send() carries at most this much. The kernel answers inside send(), so a batch also bounds
# how many error messages can wait in the receive buffer (sized below for a batch of failures).
BATCH_BYTES = 128 * 1024
_SNDBUF = 1 << 20
_RCVBUF = 8 << 20


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

    def __init__(self, *, table: int = RT_TABLE_MAIN, protocol: int = RouteProtocol.BGP,
                 adopt: bool = True, takeover: bool = False) -> None:
        self.table = table
        self.protocol = protocol
        # takeover: a prefix held by another owner's route is replaced rather than left alone.
        # For the VXLAN routes (protocol 204), which take a block over from BGP when its pool's
        # mode changes; never for BGP's own FIB, which must not steal a pod's route.
        self._new = _REPLACE if takeover else _ADD
        self._lock = threading.Lock()
        self._desired: dict[Prefix, Hops] = {}
        # What this module believes the kernel holds of its own: from the last dump, updated by
        # every acknowledged write. It decides between NLM_F_EXCL (new) and NLM_F_REPLACE (ours).
        self._kernel: dict[Prefix, Hops] = {}
        self._hops: dict[object, tuple[Hops, int]] = {}  # input → (canonical hops, family)
        self._dumped_hops: dict[object, Hops] = {}  # wire form → hops, during one dump
        self._tails: dict[Hops, tuple[int, bytes]] = {}  # hops → (rtm_flags, attributes)
        self._table_attr = RTA_U32.pack(8, RTA_TABLE, table)
        self._rtm_table = table if table < 256 else 0
        self._stale = False  # a batch's answers were lost: read the kernel before the next apply
        try:
            self._netlink = netlink.Netlink(send_buffer=_SNDBUF, receive_buffer=_RCVBUF)
        except OSError as err:
            raise NetlinkFailure(f"opening a netlink socket: {err}") from err
        try:
            self._kernel, _ = self._dump()
        except BaseException:
            self._netlink.close()
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
        translate = self._translation(changes)
        pairs = changes.items() if translate is not None else self._normalised(changes)
        with self._lock:
            if self._stale:
                self._kernel, _ = self._dump()
                self._stale = False
            return self._program(self._plan_apply(pairs, translate), len(changes))

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

    def close(self) -> None:
        self._netlink.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- desired state ----------------------------------------------------------------------

    def _normalise(self, changes: Mapping[object, Iterable[object] | None]
                   ) -> Iterable[tuple[Prefix, Hops | None]]:
        """(prefix, canonical next hops or None) for each change; InvalidRoute, before anything
        is yielded, if any change is malformed."""
        translate = self._translation(changes)
        if translate is None:
            return self._normalised(changes)
        return ((p, h if h is None else translate[h]) for p, h in changes.items())

    def _translation(self, changes: Mapping[object, Iterable[object] | None]
                     ) -> dict[object, Hops | None] | None:
        """For changes that are canonical already, each of their next-hop sets -> its canonical
        set (None: a withdrawal); None if any change needs `_normalised`.

        What the RIB hands over is canonical: ipaddress prefixes, and a few next-hop sets shared
        by every prefix, each known to the cache after its first use. That is checked in one
        pass, and the plan then reads `changes` as it goes (so they must not change until
        `apply` returns): a 100k-route batch builds no list of pairs, nor one of its plan."""
        hop_cache = self._hops
        translate: dict[object, Hops | None] = {}
        last_hops: object = None
        needs = 0  # the IP version the last next-hop set needs of its prefixes (0: any)
        for prefix, hops in changes.items():
            if not isinstance(prefix, _PREFIX_TYPES):  # subclasses too: the RIB's hash faster
                return None
            if hops is not None:
                if hops is not last_hops:  # a load is long runs of one set of next hops
                    found = hop_cache.get(hops) if type(hops) is frozenset else None
                    if found is None:
                        return None
                    translate[hops] = found[0] or None
                    last_hops, needs = hops, found[1] if found[0] else 0
                if needs and needs != prefix._version:
                    return None
        return translate

    def _normalised(self, changes: Mapping[object, Iterable[object] | None]
                    ) -> list[tuple[Prefix, Hops | None]]:
        out = []
        hop_cache = self._hops
        for prefix, hops in changes.items():
            if not isinstance(prefix, _PREFIX_TYPES):
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

    def _plan_apply(self, pairs: Iterable[tuple[Prefix, object]],
                    translate: Mapping[object, Hops | None] | None) -> Iterator[tuple]:
        """The plan for `apply`, made as `_program` sends it; the desired state changes as it
        goes (`_program` sees the plan through, even when the kernel cannot be reached).
        `pairs` are normalised already, or canonical but for the next-hop sets `translate`
        maps (see `_translation`)."""
        desired, kernel = self._desired, self._kernel
        same = _Same()
        new = self._new
        for prefix, hops in pairs:
            if translate is not None and hops is not None:
                hops = translate[hops]
            if hops:
                desired[prefix] = hops
                current = kernel.get(prefix)
                if current is None:
                    yield (new, prefix, hops, None)
                elif not same(hops, current):
                    yield (_REPLACE, prefix, hops, current)
            else:
                desired.pop(prefix, None)
                # gone from what we believe the kernel holds as it is planned (one lookup, not
                # two); a refusal puts it back, and a lost batch makes the next call read the
                # kernel again
                current = kernel.pop(prefix, None)
                if current is not None:
                    yield (_DELETE, prefix, None, current)

    def _reconcile(self) -> Outcome:
        kernel, strays = self._dump()
        self._kernel = kernel
        self._stale = False
        plan: list[tuple] = [(_DELETE_STRAY, prefix, stray, None) for prefix, stray in strays]
        same = _Same()
        for prefix, hops in self._desired.items():
            current = kernel.get(prefix)
            if current is None:
                plan.append((self._new, prefix, hops, None))
            elif not same(hops, current):
                plan.append((_REPLACE, prefix, hops, current))
        deletes = [(prefix, current) for prefix, current in kernel.items()
                   if prefix not in self._desired]
        for prefix, _ in deletes:  # as `_plan_apply` does: out when planned, back if refused
            del kernel[prefix]
        plan.extend((_DELETE, prefix, None, current) for prefix, current in deletes)
        return self._program(plan, len(plan))

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
            body = attr(RTA_GATEWAY, hop.gateway.packed)
            if hop.ifindex:
                body += RTA_U32.pack(8, RTA_OIF, hop.ifindex)
            flags = RTNH_F_ONLINK if hop.onlink else 0
        else:
            nexthops = b""
            for hop in ordered:
                gateway = attr(RTA_GATEWAY, hop.gateway.packed)
                hop_flags = RTNH_F_ONLINK if hop.onlink else 0
                nexthops += RTNH.pack(RTNH.size + len(gateway), hop_flags, 0, hop.ifindex)
                nexthops += gateway
            flags = 0  # onlink travels in each rtnexthop
            body = attr(RTA_MULTIPATH, nexthops)
        found = (flags, self._table_attr + body)
        if len(self._tails) < 65536:
            self._tails[hops] = found
        return found

    def _program(self, plan: Iterable[tuple], count: int) -> Outcome:
        """Send the plan, at most `count` entries, in batches; update what we believe the kernel
        holds as answers come.

        A plan entry is (kind, prefix, next hops or a stray's (metric, hops), what the kernel
        held for the prefix): the planner looked that up already, and took a deleted prefix out
        of `_kernel`; a 100k-route load or flush should not hash every prefix once more."""
        outcome = Outcome()
        if not count:
            return outcome
        plan = iter(plan)
        try:
            self._send_plan(plan, count, outcome)
        except BaseException:
            for _ in plan:  # the rest of the desired state, for the next reconcile to program
                pass
            # Draining the plan took its deletes out of what we believe the kernel holds, and
            # they were never sent: read the kernel again before trusting that belief.
            self._stale = True
            raise
        return outcome

    def _send_plan(self, plan: Iterator[tuple], count: int, outcome: Outcome) -> None:
        kernel = self._kernel
        new_flags = {_ADD: NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
                     _REPLACE: NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE}
        by_version = _BY_VERSION
        rtm_table, protocol, table_attr = self._rtm_table, self.protocol, self._table_attr
        buf = bytearray()
        batch: list[tuple] = []  # (kind, prefix, what the kernel held before)
        last = 0  # offset of the batch's last message, which asks for the ACK
        # Sequence numbers for the whole plan at once: a batch's numbers never wrap inside it.
        seq = self._netlink.next_seq(count) - 1
        first = seq + 1
        last_hops, last_tail = None, (0, b"")
        for kind, prefix, hops, before in plan:
            family, head, dst_length, width = by_version[prefix._version]
            destination = prefix.network_address._ip.to_bytes(width)
            if kind is _ADD or kind is _REPLACE:
                if hops is not last_hops:  # a load is long runs of one set of next hops
                    last_hops, last_tail = hops, self._tail(hops)
                rflags, tail = last_tail
                last = len(buf)
                seq += 1
                buf += head.pack(head.size + len(tail), RTM_NEWROUTE, new_flags[kind], seq, 0,
                                 family, prefix._prefixlen, 0, 0, rtm_table, protocol,
                                 RT_SCOPE_UNIVERSE, RTN_UNICAST, rflags,
                                 dst_length, RTA_DST, destination)
                buf += tail
                batch.append((kind, prefix, before))
                kernel[prefix] = hops
            else:
                tail = table_attr
                if kind is _DELETE_STRAY:
                    metric, stray_hops = hops
                    tail += RTA_U32.pack(8, RTA_PRIORITY, metric)
                    if stray_hops:
                        tail += self._tail(stray_hops)[1][len(table_attr):]
                last = len(buf)
                seq += 1
                buf += head.pack(head.size + len(tail), RTM_DELROUTE, NLM_F_REQUEST, seq, 0,
                                 family, prefix._prefixlen, 0, 0, rtm_table, protocol,
                                 RT_SCOPE_NOWHERE, 0, 0,
                                 dst_length, RTA_DST, destination)
                buf += tail
                # a _DELETE's prefix left `kernel` when it was planned
                batch.append((kind, prefix, before if kind is _DELETE else None))
            if len(buf) >= BATCH_BYTES:
                self._flush(buf, first, last, batch, outcome)
                buf, batch, first = bytearray(), [], seq + 1
        if batch:
            self._flush(buf, first, last, batch, outcome)

    def _flush(self, buf: bytearray, first_seq: int, last: int, batch: list[tuple],
               outcome: Outcome) -> None:
        try:
            errors = self._netlink.send_batch(buf, first_seq, first_seq + len(batch) - 1, last)
        except OSError as err:
            self._stale = True
            raise NetlinkFailure(f"netlink: {err}; routes in this batch may or may not be in the "
                                 f"kernel, call reconcile()") from err
        if not errors:  # the usual batch: every message went in, counted by kind at once
            kinds = Counter(map(_KIND, batch))
            outcome.added += kinds[_ADD]
            outcome.replaced += kinds[_REPLACE]
            outcome.deleted += kinds[_DELETE] + kinds[_DELETE_STRAY]
            return
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
        request = netlink.message(
            RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP,
            RTMSG.pack(family, 0, 0, 0, self._rtm_table, self.protocol, 0, 0, 0) + self._table_attr)

        def take(buf: bytearray, start: int, end: int) -> None:
            if NLMSGHDR.unpack_from(buf, start)[1] == RTM_NEWROUTE:
                self._take(buf, start, end, family, routes, strays)

        try:
            return self._netlink.dump(request, take)
        except OSError as err:
            raise NetlinkFailure(f"netlink dump: {err}; try again") from err

    def _take(self, buf: bytearray, start: int, end: int, family: int, routes: dict,
              strays: list) -> None:
        rfamily, dst_len, _, _, table, protocol, _, rtype, rflags = RTMSG.unpack_from(
            buf, start + BODY_AT)
        if rfamily != family or protocol != self.protocol:
            return
        dst, metric, gateway, oif, multipath = None, 0, None, 0, None
        offset = start + BODY_AT + RTMSG.size
        while offset + 4 <= end:
            alen, atype = RTA.unpack_from(buf, offset)
            if alen < 4:
                break
            atype &= 0x3FFF
            if atype == RTA_DST:
                dst = bytes(buf[offset + 4:offset + alen])
            elif atype == RTA_GATEWAY:
                gateway = bytes(buf[offset + 4:offset + alen])
            elif atype == RTA_OIF:
                oif = U32.unpack_from(buf, offset + 4)[0]
            elif atype == RTA_TABLE:
                table = U32.unpack_from(buf, offset + 4)[0]
            elif atype == RTA_PRIORITY:
                metric = U32.unpack_from(buf, offset + 4)[0]
            elif atype == RTA_MULTIPATH:
                multipath = bytes(buf[offset + 4:offset + alen])
            offset += (alen + 3) & ~3
        if table != self.table:
            return
        if family == socket.AF_INET:
            network = ipaddress.IPv4Network((dst or bytes(4), dst_len), strict=False)
        else:
            network = ipaddress.IPv6Network((dst or bytes(16), dst_len), strict=False)
        hops: Hops = frozenset()
        if rtype == RTN_UNICAST and (multipath is not None or gateway is not None):
            # A mesh has one next hop per node: parse each distinct one once per dump.
            key = multipath if multipath is not None else (gateway, oif, rflags & RTNH_F_ONLINK)
            hops = self._dumped_hops.get(key)
            if hops is None:
                if multipath is not None:
                    hops = _parse_multipath(multipath)
                else:
                    hops = frozenset((NextHop(ipaddress.ip_address(gateway), oif,
                                              bool(rflags & RTNH_F_ONLINK)),))
                self._dumped_hops[key] = hops
        known = len(routes)
        if metric != _DEFAULT_METRIC[family] or routes.setdefault(network, hops) is not hops \
                or len(routes) == known:
            strays.append((network, (metric, hops)))

_ADD, _REPLACE, _DELETE, _DELETE_STRAY = "add", "replace", "delete", "delete-stray"
_KIND = itemgetter(0)  # of a batch entry (kind, prefix, what the kernel held before)


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
    while offset + RTNH.size <= len(value):
        length, flags, _, ifindex = RTNH.unpack_from(value, offset)
        if length < RTNH.size:
            break
        inner = offset + RTNH.size
        while inner + 4 <= offset + length:
            alen, atype = RTA.unpack_from(value, inner)
            if alen < 4:
                break
            if atype == RTA_GATEWAY:
                hops.append(NextHop(ipaddress.ip_address(value[inner + 4:inner + alen]), ifindex,
                                    bool(flags & RTNH_F_ONLINK)))
            inner += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return frozenset(hops)
