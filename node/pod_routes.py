"""percale-node's keeper of the pods' host routes: `<pod address> dev pcl... scope link proto 201`,
as felix keeps Calico's. The CNI ADD makes each one (dataplane/pod_network.configure); a route
removed afterwards (by hand, `ip route flush proto 201`, a tool) cut its pod off for good, while
its WorkloadEndpoint still listed the address, and restarting the agent did not help.

At start, once the agent's view is in sync, and every `resync` seconds (30, as the BGP, VXLAN and
policy sides check the kernel), one round:

    dataplane.pod_network.read_host_routes     one dump of protocol 201's routes, one of the links
    wanted()                                    this node's endpoints: address -> host veth
    plan()                                      what to add and what to remove (pure)
    dataplane.pod_network.repair_host_routes   the changes, if any

A route is wanted for each address of this node's WorkloadEndpoints, through the endpoint's host
veth (interfaceName) when that veth exists and is up (a DEL takes it down before it deletes it).
A route of protocol 201 no endpoint wants is removed: a pod whose endpoint went while the agent
was down, or one deleted by hand, keeps its address routed to nothing, and the next pod given
that address could not be wired (configure refuses a route taken).

Removing is safe because of three things. The view is in sync (listed once, and the endpoints'
kind not followed as empty for want of its CRD), and it reads this agent's own writes at once
(CachedDatastore's overlay). An ADD's route stands before its endpoint is stored (configure and
the write run together): the host veths of the ADDs running now (CNIHandlers.adding) are left
alone, for adding as for removing, taken after the kernel was read, so an ADD that finished by
then has its endpoint in the view. And each removal names the route's interface, so a route an
ADD made meanwhile through a new veth of the same name is not the one removed. The ADD path pays
nothing for this but an entry in that dict; a round costs the two dumps and a read of the view.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from percale.api import WorkloadEndpoint
from percale.dataplane import pod_network
from percale.dataplane.pod_network import HostRoutes, Network
from percale.datastore import Datastore
from percale.datastore.cache import Cache

log = logging.getLogger("percale.node.pod_routes")

RESYNC_SECONDS = 30.0
ENDPOINT_KIND = "WorkloadEndpoint"

Route = tuple[Network, int]  # (destination, interface index)


@dataclass(frozen=True)
class Repair:
    """The routes a round changes, each (destination, interface index)."""
    remove: tuple[Route, ...] = ()
    add: tuple[Route, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.add)


def plan(wanted: Mapping[Network, str], found: HostRoutes, busy: Collection[str], *,
         may_remove: bool = True) -> Repair:
    """What makes the kernel's routes of protocol 201 (`found`) those `wanted` (destination ->
    host veth name), leaving alone every route through a veth in `busy` (an ADD is wiring it)
    and those through an interface that was gone when the links were read. Nothing is removed
    unless `may_remove`."""
    names = {index: name for name, (index, _) in found.links.items()}
    want: set[Route] = set()
    for destination, veth in wanted.items():
        link = found.links.get(veth)
        if link is not None and link[1] and veth not in busy:
            want.add((destination, link[0]))
    remove = [] if not may_remove else [
        route for route in found.routes
        if route not in want and route[1] in names and names[route[1]] not in busy]
    add = [route for route in want if route not in found.routes]
    return Repair(tuple(sorted(remove, key=_order)), tuple(sorted(add, key=_order)))


def _order(route: Route) -> tuple[int, int, int]:
    return route[0].version, int(route[0].network_address), route[1]


def endpoint_routes(endpoints: Collection[WorkloadEndpoint], node: str) -> dict[Network, str]:
    """The host routes `node`'s endpoints want: each address to the endpoint's host veth."""
    wanted: dict[Network, str] = {}
    for endpoint in endpoints:
        spec = endpoint.spec
        if spec.node != node or not spec.interface_name:
            continue
        for network in spec.ip_networks:
            wanted[ipaddress.ip_network(network)] = spec.interface_name
    return wanted


class PodRoutes:
    """`cache` says when the view is in sync; `view` (a CachedDatastore over it) gives the
    endpoints with this agent's own writes; `adding` is CNIHandlers.adding, read on the event
    loop only."""

    def __init__(self, cache: Cache, view: Datastore, node: str, adding: Collection[str], *,
                 resync: float = RESYNC_SECONDS) -> None:
        self.cache, self.view, self.node = cache, view, node
        self.adding = adding
        self.resync = resync
        self._refused: dict[Network, str] = {}  # told once each, until it changes

    async def run(self) -> None:
        await self.cache.wait_synced()
        while True:
            try:
                await self.reconcile()
            except OSError as err:  # NetlinkError too: the next round tries again
                log.warning("checking the pods' host routes failed, trying again in %g s: %s",
                            self.resync, err)
            await asyncio.sleep(self.resync)

    async def wanted(self) -> dict[Network, str]:
        listed = (await self.view.list(ENDPOINT_KIND)).items
        return endpoint_routes([kv.value for kv in listed], self.node)  # type: ignore[misc]

    async def reconcile(self) -> Repair:
        """One round; what it changed."""
        found = await asyncio.to_thread(pod_network.read_host_routes)
        # After the kernel was read, in this order: an ADD running then is in `busy`; one that
        # finished by then stored its endpoint first, which the view below has.
        busy = frozenset(self.adding)
        wanted = await self.wanted()
        # Followed as empty for want of its CRD, the kind would want no route at all.
        may_remove = self.cache.synced and ENDPOINT_KIND not in self.cache.not_installed
        repair = plan(wanted, found, busy, may_remove=may_remove)
        refused: dict[Network, str] = {}
        if repair:
            refused = await asyncio.to_thread(pod_network.repair_host_routes, repair.remove,
                                              repair.add)
            names = {index: name for name, (index, _) in found.links.items()}
            put_back = [f"{d.network_address} via {names.get(i, i)}" for d, i in repair.add
                        if d not in refused]
            if put_back:
                log.warning("put back %d pod route(s) someone removed: %s", len(put_back),
                            ", ".join(put_back))
            if repair.remove:
                log.info("removed %d pod route(s) no WorkloadEndpoint of node %s wants: %s",
                         len(repair.remove), self.node,
                         ", ".join(f"{d.network_address} via {names.get(i, i)}"
                                   for d, i in repair.remove))
        for destination, reason in refused.items():
            if self._refused.get(destination) != reason:
                log.warning("cannot put back the route to pod address %s: %s",
                            destination.network_address, reason)
        self._refused = refused
        return repair
