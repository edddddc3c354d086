"""The host MTU: what pods, the VXLAN devices and the MTU file are sized from (dataplane.md §F).

Given (--mtu) or detected from the interfaces matching --mtu-iface-pattern, as felix does, and
capped by the interfaces holding the node's addresses, which the VXLAN devices are made on.
Decided at start, and again every RECHECK_SECONDS (felix re-checks every 30 s): the node's
address may move to an interface with a smaller MTU, or an interface's MTU may change, and a
VXLAN device then refused the old MTU (EINVAL) and every VXLAN route of the family left the
kernel until the agent restarted. A changed MTU is handed to whoever sizes from it; felix
restarts itself instead, which percale-node need not. Pods already wired keep theirs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable

from percale.api.fields import POD_MTU_MIN
from percale.dataplane.host import host_mtu as detect_host_mtu
from percale.dataplane.host import interface_holding
from percale.dataplane.netlink import Link, Netlink
from percale.datastore import DatastoreError, Key, NotFound
from percale.vxlan.plan import HOST_MTU_MIN, VXLAN_OVERHEAD, MTUTooSmall

log = logging.getLogger("percale.node")

RECHECK_SECONDS = 30.0


def check_host_mtu(host_mtu: int, source: str) -> None:
    """MTUTooSmall, naming `source`, if pods would get less than POD_MTU_MIN under the largest
    encapsulation: found at start, not as a pod MTU of -49 once a VXLAN pool appears."""
    if host_mtu < HOST_MTU_MIN:
        raise MTUTooSmall(f"{source}: host MTU {host_mtu} is below {HOST_MTU_MIN} (pods get it less up"
                          f" to {max(VXLAN_OVERHEAD.values())} bytes of VXLAN and need {POD_MTU_MIN})")


def node_links(addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface]) -> list[Link]:
    """The links in this namespace holding `addresses` (the node's BGP addresses): the parents
    its VXLAN devices are made on. Not for an address with a host prefix (/32, /128): that is a
    routed-to-host design's stub (a dummy or loopback interface), and the node's traffic leaves
    by the uplinks its routes name, not by the stub."""
    links = []
    for address in addresses:
        if address.network.prefixlen == address.max_prefixlen:
            continue
        index = interface_holding(address.ip)
        if index is None:
            continue  # not here (yet): the VXLAN agent makes no device on it either
        with Netlink() as nl:
            link = nl.link(index=index)
        if link is not None and link.mtu:
            links.append(link)
    return links


def fit_host_mtu(host_mtu: int, source: str, parents: list[Link], *,
                 say: bool = True) -> tuple[int, Link | None]:
    """`host_mtu`, or the MTU of the narrowest of `parents` when that is smaller, with a warning
    naming `source` (unless not `say`); and that parent when it was lowered.

    No packet larger than a parent's MTU leaves on it, and the kernel keeps a VXLAN device within
    its parent's MTU less the overhead: a larger one is cut down when the device is made, and
    every later attempt to set it fails with EINVAL, so the VXLAN agent retried forever after a
    restart while pods were handed an MTU the host cannot carry. Capped with a warning rather
    than refused: the value is too big for this host, not malformed, and the node still works at
    the largest MTU it can carry (an interface's MTU may differ from one host to the next under
    one DaemonSet setting)."""
    narrowest = min(parents, key=lambda link: link.mtu, default=None)
    if narrowest is None or host_mtu <= narrowest.mtu:
        return host_mtu, None
    if say:
        log.warning("%s: host MTU %d is above the MTU %d of %s, which holds this node's address:"
                    " using %d, as no larger packet leaves on %s", source, host_mtu, narrowest.mtu,
                    narrowest.name, narrowest.mtu, narrowest.name)
    return narrowest.mtu, narrowest


async def decide_host_mtu(given: int, pattern: str, store, node: str,
                          given_addresses: Iterable[object], *, say: bool = True) -> int:
    """The host MTU: `given` (--mtu; 0: none) or detected on the interfaces matching `pattern`,
    capped by the interfaces holding the node's addresses as registered (fit_host_mtu), or as
    --ip/--ip6 give them while the datastore does not answer (the agent starts anyway, and tells
    CNI callers to try again). MTUTooSmall naming where it came from. `say`: log the outcome."""
    host_mtu = given or await asyncio.to_thread(detect_host_mtu, pattern)
    source = ("--mtu (PERCALE_MTU)" if given
              else f"interfaces matching --mtu-iface-pattern {pattern!r}")
    if not given:
        check_host_mtu(host_mtu, source)
    registered: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
    try:
        bgp = (await store.get(Key("Node", node))).value.spec.bgp
        registered = [ipaddress.ip_interface(a) for a in
                      ((bgp.ipv4_address, bgp.ipv6_address) if bgp else ()) if a]
    except NotFound:
        registered = []  # nothing registered it (no --ip, and percalectl never wrote it)
    except DatastoreError:
        registered = [a for a in given_addresses
                      if isinstance(a, (ipaddress.IPv4Interface, ipaddress.IPv6Interface))]
    parents = await asyncio.to_thread(node_links, registered)
    host_mtu, capped_by = fit_host_mtu(host_mtu, source, parents, say=say)
    if capped_by is not None:
        check_host_mtu(host_mtu, f"{capped_by.name}, which holds this node's address")
    if say:
        origin = (f"the MTU of {capped_by.name}" if capped_by is not None
                  else "given" if given else f"detected, {pattern}")
        log.info("host MTU %d (%s)", host_mtu, origin)
    return host_mtu


class HostMTUFollower:
    """Decides the host MTU again every `every` seconds (`decide`, quietly) and, when it
    changed, hands it to each of `users` (the CNI handlers, the VXLAN agent, the pool follower).
    A decision that fails (an MTU too small, the datastore away) is logged once per reason and
    changes nothing."""

    def __init__(self, decide: Callable[[], Awaitable[int]], current: int,
                 users: Iterable[Callable[[int], None]], every: float = RECHECK_SECONDS) -> None:
        self.decide, self.current, self.users, self.every = decide, current, list(users), every
        self._problem: str | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.check()

    async def check(self) -> None:
        try:
            found = await self.decide()
        except (MTUTooSmall, OSError, DatastoreError) as err:
            if str(err) != self._problem:
                log.warning("checking the host MTU again failed, keeping %d: %s", self.current, err)
                self._problem = str(err)
            return
        self._problem = None
        if found == self.current:
            return
        log.warning("the host MTU changed from %d to %d (the interfaces or the node's address "
                    "changed): VXLAN devices and new pods get it; pods already wired keep theirs",
                    self.current, found)
        self.current = found
        for use in self.users:
            use(found)
