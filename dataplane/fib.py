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

Recursive next hops (BGP's FIB only: Calico's BIRD runs every session with `gateway recursive`)
-----------------------------------------------------------------------------------------------
A BGP next hop on no connected network (a mesh peer or a reflected route's node in another
subnet) is refused by the kernel: IPv4 answers ENETUNREACH ("Nexthop has invalid gateway"),
IPv6 EHOSTUNREACH. As BIRD does, such a route is installed through the kernel's route to the
next hop instead: that route's gateways and devices (a default route, a static route, one
learned by another daemon). The desired state keeps the BGP next hops; `_via` maps a set of
them to what is installed in its place, and `_kernel` holds what was installed.

* Only what the kernel refuses is resolved: a directly reachable next hop costs nothing, and
  whether it is reachable is the kernel's own judgement (IPv4 asks for a route of link scope,
  IPv6 for one without a gateway), not a guess. A refused set is resolved once, each of its next
  hops with one `ip route get fibmatch`, and its refused routes are sent again at once; later
  batches plan it resolved from the start.
* Never through a route of BGP's (RouteProtocol.BGP, which would include the very route being
  installed: a loop) or VXLAN's (RouteProtocol.VXLAN, blocks through the tunnel): the next best
  route then (`Netlink.route_match`).
* A next hop that nothing resolves is logged once, when it becomes so; its routes are kept out
  of the kernel (a route of ours already there for the prefix is deleted) and reported in
  `Outcome.failed`, and they go in when it resolves.
* Followed: `underlay_events` is a socket of route, address and link notifications (not ours:
  a socket filter drops them in the kernel), joined only while some next hop is resolved. When
  it is readable, `follow_underlay()` resolves every such next hop again and re-programs the
  routes whose resolution changed; `reconcile()` does the same on its timer, so a change the
  kernel never notifies (IPv4 routes flushed with their link) is caught there.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Self

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
    RT_SCOPE_LINK,
    RTN_UNICAST,
    RTNH,
    RTNH_F_ONLINK,
    U32,
    attr,
)
from percale.dataplane.route_owners import RouteProtocol

log = logging.getLogger("percale.dataplane.fib")

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
# A gateway on no connected network, as each family refuses it (fib_check_nh_v4_gw,
# ip6_route_check_nh): what resolving the next hop through another route can cure.
_NOT_DIRECTLY_REACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH})
# Never resolved through: our own BGP routes (among them the route being installed) and the
# VXLAN side's.
_NEVER_THROUGH = frozenset({RouteProtocol.BGP, RouteProtocol.VXLAN})
# Route changes that never move the way to another node, dropped in the kernel before they wake
# the next-hop follower: our own BGP and VXLAN routes, and the pods' /32s and blocks' blackholes,
# which every CNI ADD and DEL writes.
_NOT_THE_UNDERLAY = _NEVER_THROUGH | {RouteProtocol.POD, RouteProtocol.BLACKHOLE}
_NOWHERE: frozenset = frozenset()  # what an unresolvable set of next hops installs


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

    `recursive`: a next hop the kernel refuses as on no connected network is installed through
    the kernel's route to it (the module docstring's last part). By default BGP's FIB does
    that and no other: the VXLAN side's routes and reachableBy's name their gateways exactly.
    """

    def __init__(self, *, table: int = RT_TABLE_MAIN, protocol: int = RouteProtocol.BGP,
                 adopt: bool = True, takeover: bool = False,
                 recursive: bool | None = None) -> None:
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
        # Recursive next hops: a set of next hops the kernel refused -> what is installed in its
        # place (itself when it turned out direct, _NOWHERE when nothing resolves it); each next
        # hop of those sets -> the hops of the kernel's route to it (itself when direct, _NOWHERE
        # when there is none); prefixes refused in this call, to resolve when it has sent all.
        self._via: dict[Hops, Hops] = {}
        self._hop_routes: dict[NextHop, Hops] = {}
        self._refused_unreachable: list[Prefix] = []
        self._reasons: dict[Hops, str] = {}  # why a set's routes are not installed
        self._recursive = protocol == RouteProtocol.BGP if recursive is None else recursive
        self._events: netlink.RouteEvents | None = None
        try:
            self._netlink = netlink.Netlink(send_buffer=_SNDBUF, receive_buffer=_RCVBUF)
            if self._recursive:
                self._events = netlink.RouteEvents(_NOT_THE_UNDERLAY)
        except OSError as err:
            self.close()
            raise NetlinkFailure(f"opening a netlink socket: {err}") from err
        try:
            self._kernel, _ = self._dump()
        except BaseException:
            self.close()
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
        """The routes this FIB believes are in the kernel, read-only (a live view): for a
        resolved next hop, the gateways it was installed through."""
        return MappingProxyType(self._kernel)

    @property
    def underlay_events(self) -> int | None:
        """A file descriptor that becomes readable when the kernel's routes, addresses or links
        change while some next hop is resolved through another route: then call
        `follow_underlay()`. None for a FIB that resolves nothing (`recursive` off)."""
        return self._events.fileno() if self._events is not None else None

    def follow_underlay(self) -> Outcome:
        """Resolve again every next hop installed through another route, after a change
        `underlay_events` told of, and re-program the routes of those whose resolution changed
        (the next hop's route changed, it became directly reachable, or nothing resolves it
        now: its routes leave the kernel)."""
        with self._lock:
            if self._events is None or not self._events.drain() or not self._hop_routes:
                return Outcome()
            if self._stale:
                self._kernel, _ = self._dump()
                self._stale = False
            changed = self._resolve_again()
            if not changed:
                return Outcome()
            plan = self._plan_resolved(changed)
            return self._program(plan, len(plan))

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
        for sock in (getattr(self, "_netlink", None), self._events):
            if sock is not None:
                sock.close()

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
        desired, kernel, via = self._desired, self._kernel, self._via
        same = _Same()
        new = self._new
        # Worked out once per run of one set of next hops (a load is long runs of one): the
        # canonical set, what is installed for it, and the plan's kinds for it.
        last: object = _NO_HOPS
        for prefix, given in pairs:
            if given is not last:
                last = given
                hops = translate[given] if translate is not None and given is not None else given
                installed, sent, add, replace = self._installation(hops, via, new)
            if hops:
                desired[prefix] = hops
                current = kernel.get(prefix)
                if current is None:
                    yield (add, prefix, sent, None)
                elif not same(installed, current):
                    yield (replace, prefix, sent, current)
            else:
                desired.pop(prefix, None)
                # gone from what we believe the kernel holds as it is planned (one lookup, not
                # two); a refusal puts it back, and a lost batch makes the next call read the
                # kernel again
                current = kernel.pop(prefix, None)
                if current is not None:
                    yield (_DELETE, prefix, None, current)

    def _installation(self, hops: Hops | None, via: Mapping[Hops, Hops], new: str
                      ) -> tuple[Hops | None, Hops | None, str, str]:
        """For a desired set of next hops: what is installed for it, what the plan carries for
        it (the installed set, or the desired one when nothing is installed, for the reason),
        and the plan's kinds for a prefix the kernel lacks and for one it holds otherwise."""
        installed = via.get(hops, hops) if via and hops else hops
        if installed is _NOWHERE:
            return installed, hops, _UNRESOLVED, _UNRESOLVED
        return installed, installed, new, _REPLACE

    def _reconcile(self) -> Outcome:
        kernel, strays = self._dump()
        self._kernel = kernel
        self._stale = False
        if self._via:
            self._forget_unused()
            self._resolve_again()  # its changes are planned below, as any other difference
        plan: list[tuple] = [(_DELETE_STRAY, prefix, stray, None) for prefix, stray in strays]
        plan += self._differences(self._desired.items(), kernel)
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
            if self._refused_unreachable:
                self._resolve_refused(outcome)
        except BaseException:
            self._refused_unreachable = []
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
                if kind is _UNRESOLVED:
                    outcome.failed[prefix] = self._unresolved_reason(hops)
                    if before is None:
                        continue
                    # what the kernel holds for it goes: the desired next hops lead nowhere
                    kind = _DELETE
                    kernel.pop(prefix, None)
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
            elif code in _NOT_DIRECTLY_REACHABLE and self._recursive and kind is not _DELETE \
                    and kind is not _DELETE_STRAY:
                self._refused_unreachable.append(prefix)
            outcome.failed[prefix] = reason

    # -- recursive next hops ------------------------------------------------------------------

    def _resolve_refused(self, outcome: Outcome) -> None:
        """The routes the kernel refused in this call as not directly reachable: each set of
        next hops among them not resolved before is resolved now, and its routes are sent
        again through what resolves it. A set resolved before waits for the next resolution
        (`follow_underlay`, `reconcile`): resolving it again for every batch that carries it
        would cost a lookup per next hop and batch, and find the same."""
        refused, self._refused_unreachable = self._refused_unreachable, []
        desired, via = self._desired, self._via
        waiting: dict[Hops, list[Prefix]] = {}
        for prefix in refused:
            hops = desired.get(prefix)
            if hops is not None and hops not in via:
                waiting.setdefault(hops, []).append(prefix)
        if not waiting:
            return
        assert self._events is not None
        self._events.follow(True)  # before looking: a change meanwhile is noticed
        kernel, plan = self._kernel, []
        for hops, prefixes in waiting.items():
            installed = via[hops] = self._installed_for(hops)
            if installed is hops:
                continue  # direct after all: refused for a reason resolving cannot cure
            for prefix in prefixes:
                current = kernel.get(prefix)  # a refused replace left the route before
                if installed is _NOWHERE:
                    if current is not None:
                        plan.append((_UNRESOLVED, prefix, hops, current))
                    continue  # failed with the kernel's own reason
                outcome.failed.pop(prefix, None)
                if current is None:
                    plan.append((self._new, prefix, installed, None))
                elif not _same(installed, current):
                    plan.append((_REPLACE, prefix, installed, current))
        if plan:
            self._send_plan(iter(plan), len(plan), outcome)
        self._refused_unreachable = []  # refused again: known now, and failed as reported

    def _installed_for(self, hops: Hops) -> Hops:
        """What to install for a set of next hops, each resolved (once: `_hop_routes`): `hops`
        itself when every one is direct, _NOWHERE when none resolves. One that nothing
        resolves is left out of a multipath route, as BIRD leaves an unresolvable path out."""
        for hop in hops:
            if hop not in self._hop_routes:
                self._hop_routes[hop] = resolved = self._resolve(hop)
                self._tell(hop, None, resolved)
        return self._combined(hops)

    def _combined(self, hops: Hops) -> Hops:
        installed = frozenset().union(*(self._hop_routes[hop] for hop in hops))
        if not installed:
            return _NOWHERE
        return hops if installed == hops else installed

    def _resolve(self, hop: NextHop) -> Hops:
        """The hops the kernel's route to `hop` gives (never one of _NEVER_THROUGH): `hop`
        itself when that route is a connected network's, _NOWHERE when there is none or it
        goes nowhere (a blackhole, an unreachable)."""
        if hop.ifindex:
            return frozenset((hop,))  # pinned to its device by whoever asked: not ours to move
        try:
            route = self._netlink.route_match(hop.gateway, skip_protocols=_NEVER_THROUGH,
                                              table=self.table)
        except OSError as err:
            raise NetlinkFailure(f"netlink: looking up the route to {hop.gateway}: {err}") from err
        if route is None or route.type != RTN_UNICAST:
            return _NOWHERE
        if route.multipath is not None:
            return _parse_multipath(route.multipath) or _NOWHERE
        if route.gateway is not None:
            return frozenset((NextHop(route.gateway, route.oif,
                                      bool(route.flags & RTNH_F_ONLINK)),))
        if route.family == socket.AF_INET6 or route.scope >= RT_SCOPE_LINK:
            return frozenset((hop,))  # a connected network: the kernel takes it as it is
        # a device route of global scope: the next hop is on that device's link
        return frozenset((NextHop(hop.gateway, route.oif, True),))

    def _resolve_again(self) -> set[Hops]:
        """Every next hop resolved before, looked up again: the sets whose installation
        changed."""
        changed_hops = set()
        for hop, before in list(self._hop_routes.items()):
            now = self._resolve(hop)
            if now != before:
                self._hop_routes[hop] = now
                changed_hops.add(hop)
                self._tell(hop, before, now)
        changed = set()
        if changed_hops:
            for hops, installed in list(self._via.items()):
                if not changed_hops.isdisjoint(hops):
                    now = self._combined(hops)
                    if now != installed:
                        self._via[hops] = now
                        changed.add(hops)
        return changed

    def _plan_resolved(self, changed: set[Hops]) -> list[tuple]:
        """The routes whose next hops' installation changed, planned as it is now."""
        return list(self._differences(
            ((prefix, hops) for prefix, hops in self._desired.items() if hops in changed),
            self._kernel))

    def _differences(self, wanted: Iterable[tuple[Any, Hops | None]],
                     kernel: Mapping[Any, Any]) -> Iterator[tuple]:
        """The plan's add or replace for each (prefix, next hops) in `wanted` whose kernel route
        is missing or differs from its installation. Routes share their set of next hops object
        (the RIB interns them): its installation is worked out once per run of equal sets."""
        via, new, same, last = self._via, self._new, _Same(), _NO_HOPS
        for prefix, hops in wanted:
            if hops is not last:
                last = hops
                installed, sent, add, replace = self._installation(hops, via, new)
            current = kernel.get(prefix)
            if current is None:
                yield (add, prefix, sent, None)
            elif not same(installed, current):
                yield (replace, prefix, sent, current)

    def _forget_unused(self) -> None:
        """Sets of next hops no desired route has any more, and their next hops, are forgotten;
        with none left, the notifications are left too."""
        in_use = set(self._desired.values())
        for hops in [hops for hops in self._via if hops not in in_use]:
            del self._via[hops]
        kept = set().union(*self._via)
        for hop in [hop for hop in self._hop_routes if hop not in kept]:
            del self._hop_routes[hop]
        self._reasons.clear()
        if not self._hop_routes and self._events is not None:
            self._events.follow(False)

    def _unresolved_reason(self, hops: Hops) -> str:
        reason = self._reasons.get(hops)
        if reason is None:  # once per set: all of a node's blocks share it
            gateways = ", ".join(sorted(str(hop.gateway) for hop in hops))
            reason = self._reasons[hops] = (
                f"next hop {gateways} unreachable: on no connected network, and no route to it "
                f"resolves it (BGP's and VXLAN's own routes left out)")
        return reason

    def _tell(self, hop: NextHop, before: Hops | None, now: Hops) -> None:
        """A next hop's resolution, logged when it changes (not per route: a node's next hop
        carries all of its blocks)."""
        if now == frozenset((hop,)):
            if before is not None:
                log.info("next hop %s is directly reachable now: its routes go to it",
                         hop.gateway)
        elif now:
            log.info("next hop %s is on no connected network: its routes go %s, as the kernel's "
                     "route to it does", hop.gateway, " and ".join(sorted(map(_described, now))))
        else:
            log.warning("next hop %s is on no connected network, and no route to it (but BGP's "
                        "and VXLAN's own) resolves it: its routes stay out of the kernel until "
                        "one does", hop.gateway)

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
# nothing to install for the prefix (its next hops resolve nowhere): reported failed, and what the
# kernel holds of ours for it deleted
_UNRESOLVED = "unresolved"
_NO_HOPS = object()  # no set of next hops seen yet in a pass
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


def _described(hop: NextHop) -> str:
    """A next hop as `ip route` shows it: its device by name."""
    try:
        device = socket.if_indextoname(hop.ifindex) if hop.ifindex else ""
    except OSError:  # gone meanwhile
        device = str(hop.ifindex)
    return (f"via {hop.gateway}" + (f" dev {device}" if device else "")
            + (" onlink" if hop.onlink else ""))


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
