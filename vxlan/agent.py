"""percale-node's VXLAN side: the agent's view in, the tunnel and its routes in the kernel.

    plan.RoutePlan            which prefixes go through the tunnel (or directly, without BGP),
                              kept current per changed Node, IPPool or IPAMBlock
    tunnel_address.reconcile  this node's tunnel address and MAC, from IPAM, on its Node
    dataplane.vxlan.Tunnel    the devices vxlan.percale and vxlan6.percale, and a neighbour +
                              FDB entry per remote end (one plan and one device per family)
    dataplane.fib.FIB         the VXLAN routes (protocol 204), taking a block over from BGP

Each family is programmed on its own: one that cannot be (its device refused by the kernel, or
a host MTU too small for it) is logged once, with the reason, and its routes wait while the
other family goes on.

VXLAN routes come from the datastore, not from BGP, so they work with BGP off (`bgp=False`:
then this agent also routes same-subnet blocks of CrossSubnet pools directly and keeps the
node's own blocks blackholed, as no BGP side does). With BGP on, `claimed()` tells the BGP side
which prefixes to leave alone, and `on_claims` is awaited after this agent changed the kernel for
a change of claims: a block moving to VXLAN is taken over first (replace), a block moving back
to BGP is let go first, so a route is never missing for longer than that handover.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from percale.dataplane.blackholes import Blackholes
from percale.dataplane.fib import FIB, NetlinkFailure, NextHop, Outcome, Prefix
from percale.dataplane.host import interface_holding
from percale.dataplane.vxlan import DEVICE, DEVICE_V6, Device, Tunnel
from percale.datastore import Datastore, DatastoreError
from percale.datastore.cache import Cache, Change
from percale.ipam.allocator import IPAM
from percale.ipam.errors import IPAMError
from percale.vxlan import tunnel_address
from percale.vxlan.plan import (
    Clash,
    Hop,
    MTUTooSmall,
    RoutePlan,
    node_interface,
    tunnel_fields,
    tunnel_mtu,
    vtep_mac,
    vxlan_pools,
)

log = logging.getLogger("percale.vxlan")

SETTLE_SECONDS = 0.01
RETRY_SECONDS = 1.0
REFUSED_SHOWN = 5  # refused routes named in one log line; the rest are counted


class VXLANAgent:
    def __init__(self, cache: Cache, node: str, *, store: Datastore, ipam: IPAM,
                 routes: FIB | None, tunnels: bool, host_mtu: int, bgp: bool,
                 blackholes: Blackholes | None = None, resync: float = 30.0) -> None:
        self.cache, self.node, self.store, self.ipam = cache, node, store, ipam
        self.routes, self.blackholes = routes, blackholes
        # The kernel's devices, one per family (none in tests that run outside a namespace).
        self.tunnels = {4: Tunnel(DEVICE), 6: Tunnel(DEVICE_V6)} if tunnels else {}
        self.host_mtu = host_mtu
        self.resync = resync
        self.plans = {version: RoutePlan(node, bgp=bgp, version=version) for version in (4, 6)}
        self.on_claims: Callable[[], Awaitable[None]] | None = None
        self.device_index: dict[int, int | None] = {4: None, 6: None}
        # The interface holding this node's address, per family: a direct (same-subnet) route
        # to a link-local IPv6 address must name it.
        self.parent_index: dict[int, int | None] = {4: None, 6: None}
        # The Node's address no interface holds, per family, when that is why wanted_device
        # found no device (set by wanted_device); and the one a warning named.
        self.parent_missing: dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address | None] = {
            4: None, 6: None}
        self._parent_told: dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self._applied: dict[int, int | None] | None = None  # device indices the routes were written with
        # What was logged, so each problem is told once, when it appears or changes: why a family
        # cannot be programmed, the routes the kernel refused (prefix -> its reason), and clashes.
        self._family_trouble: dict[int, str] = {}
        self._refused: dict[Prefix, str] = {}
        self._clashes_told: dict[int, set[Clash]] = {4: set(), 6: set()}
        self._retry: asyncio.TimerHandle | None = None
        self._address_due = asyncio.Event()
        self._kernel_due = asyncio.Event()
        # The devices are looked at again only when this node, the pools, or a resync ask; a
        # block changed elsewhere touches routes alone.
        self._devices_due = True
        cache.subscribe(self._changed)

    # -- changes from the datastore -------------------------------------------------------------

    def claimed(self) -> frozenset[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The prefixes that are VXLAN's: the BGP side leaves them alone."""
        return frozenset().union(*(plan.claimed for plan in self.plans.values()))

    def _changed(self, change: Change) -> None:
        if change.kind not in ("IPPool", "Node", "IPAMBlock"):
            # The view hands every kind to every listener: endpoints and handles are not
            # VXLAN's (the view has read their values already, to leave out any it cannot).
            return
        value: Any = change.new.value if change.new else None
        for plan in self.plans.values():
            if change.kind == "IPPool":
                plan.set_pools(self.cache.values("IPPool"))  # type: ignore[arg-type]
            elif change.kind == "Node":
                plan.set_node(change.key.name, value)
            elif change.kind == "IPAMBlock":
                present = change.new or change.old
                assert present is not None
                plan.set_block(present.value.spec.cidr, value)  # type: ignore[attr-defined]
        if change.kind == "IPPool" or (change.kind == "Node" and change.key.name == self.node):
            self._address_due.set()
            self._devices_due = True
        self._kernel_due.set()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.cache.wait_synced()
        for plan in self.plans.values():
            plan.set_pools(self.cache.values("IPPool"))  # type: ignore[arg-type]
            for key, kv in self.cache.items("Node").items():
                plan.set_node(key.name, kv.value)  # type: ignore[arg-type]
            for kv in self.cache.items("IPAMBlock").values():
                plan.set_block(kv.value.spec.cidr, kv.value)  # type: ignore[attr-defined]
        self._address_due.set()
        self._kernel_due.set()
        loops = [asyncio.ensure_future(c) for c in (self._addressing(), self._programming(),
                                                    self._checking())]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _addressing(self) -> None:
        while True:
            await self._address_due.wait()
            await asyncio.sleep(SETTLE_SECONDS)
            self._address_due.clear()
            failed = False
            for version in (4, 6):  # each on its own: IPv4 out of addresses stops no IPv6
                try:
                    await tunnel_address.reconcile(self.store, self.ipam, self.node, version)
                except (DatastoreError, IPAMError, RuntimeError) as err:
                    log.warning("keeping the IPv%d VXLAN tunnel address failed, trying again: "
                                "%s", version, err)
                    failed = True
            if failed:
                await asyncio.sleep(RETRY_SECONDS)
                self._address_due.set()

    async def _programming(self) -> None:
        while True:
            await self._kernel_due.wait()
            await asyncio.sleep(SETTLE_SECONDS)
            self._kernel_due.clear()
            try:
                await self.program()
            except (OSError, NetlinkFailure) as err:
                # NetlinkFailure: the FIB's socket failed mid-batch; writing in full again
                # repairs whatever it left half done.
                log.warning("programming VXLAN failed, trying again: %s", err)
                await asyncio.sleep(RETRY_SECONDS)
                self._devices_due = True
                self._applied = None
                for plan in self.plans.values():
                    plan.vteps_changed = True
                self._kernel_due.set()

    def set_host_mtu(self, host_mtu: int) -> None:
        """The host MTU changed (node/host_mtu.py): the devices are sized again from it."""
        self.host_mtu = host_mtu
        self._devices_due = True
        self._kernel_due.set()

    async def _checking(self) -> None:
        """Every `resync` seconds the kernel is read back and repaired."""
        while True:
            await asyncio.sleep(self.resync)
            try:
                if self.routes is not None:
                    await asyncio.to_thread(self.routes.reconcile)
                self._applied = None  # write the devices, tunnel ends and routes in full again
                self._devices_due = True
                for plan in self.plans.values():
                    plan.vteps_changed = True
                self._kernel_due.set()
            except (OSError, NetlinkFailure) as err:
                log.warning("checking VXLAN routes failed: %s", err)

    # -- the kernel ----------------------------------------------------------------------------

    def wanted_device(self, version: int) -> Device | None:
        """The device of one family as this node's Node and the pools say; None if it needs
        none, or if no interface holds the Node's address (then `parent_missing[version]` names
        it). MTUTooSmall if it needs one the host MTU cannot carry."""
        self.parent_missing[version] = None
        me = self.cache.get_value("Node", self.node)
        if me is None:
            return None
        interface = node_interface(me, version)  # type: ignore[arg-type]
        address, mac = tunnel_fields(me, version)  # type: ignore[arg-type]
        if interface is None or address is None:
            return None
        if not vxlan_pools(self.cache.values("IPPool"), version):  # type: ignore[arg-type]
            return None
        mtu = tunnel_mtu(self.host_mtu, version)
        parent = interface_holding(interface.ip)
        if parent is None:
            self.parent_missing[version] = interface.ip
            return None
        return Device(address, mac or vtep_mac(self.node, version), mtu, interface.ip, parent)

    async def program(self) -> None:
        """The devices, the tunnel ends and the routes as the plans say; then the BGP side is
        told if the claims changed."""
        started = time.monotonic()
        devices_due, self._devices_due = self._devices_due, False
        for version, tunnel in self.tunnels.items():
            try:
                await self._program_tunnel(version, tunnel, devices_due)
            except (MTUTooSmall, OSError) as err:
                self._family_failed(version, err)
            else:
                if devices_due:
                    self._family_works(version)
        if self.routes is not None:
            changes = {p: hop for plan in self.plans.values() for p, hop in plan.changes().items()}
            if self._applied != self.device_index:
                routes = {p: hops for plan in self.plans.values() for p, hop in plan.routes.items()
                          if (hops := self._hops(hop)) is not None}
                outcome = await asyncio.to_thread(self.routes.replace_all, routes)
                self._applied = dict(self.device_index)
                self._report_refused(outcome, None)
            elif changes:
                batch = {p: (self._hops(hop) if hop else None) for p, hop in changes.items()}
                outcome = await asyncio.to_thread(self.routes.apply, batch)
                self._report_refused(outcome, batch)
        if self.blackholes is not None:
            own = set().union(*(plan.own_blocks() for plan in self.plans.values()))
            # Read back on every full pass (the 30 s check among them): a blackhole someone
            # deleted is put back, as the BGP side's check does.
            await asyncio.to_thread(self.blackholes.sync, own, check=devices_due)
        if any(plan.claims_changed for plan in self.plans.values()):
            for plan in self.plans.values():
                plan.claims_changed = False
            if self.on_claims is not None:
                await self.on_claims()
        log.debug("VXLAN programmed in %.1f ms", (time.monotonic() - started) * 1000)

    async def _program_tunnel(self, version: int, tunnel: Tunnel, devices_due: bool) -> None:
        """One family's device and tunnel ends. Whatever fails here stops this family alone:
        with no device index its routes wait (and leave the kernel), the other family's go on."""
        plan = self.plans[version]
        if devices_due:
            before, self.device_index[version] = self.device_index[version], None
            too_small: MTUTooSmall | None = None
            try:
                device = await asyncio.to_thread(self.wanted_device, version)
            except MTUTooSmall as err:
                device, too_small = None, err  # a device left from before cannot carry it either
            removed = False
            if device is None and (before is not None or self._applied is None):
                removed = await asyncio.to_thread(tunnel.remove)
            if too_small is not None:
                raise too_small
            self._tell_parent(version, tunnel, device, removed)
            if device is not None:
                index = await asyncio.to_thread(tunnel.ensure, device)
                # Written again after every device pass, not only for a new device: a changed
                # MAC flushes the device's neighbour entries, and the routes' next hops with them.
                plan.vteps_changed = True
                self.device_index[version] = index
                self.parent_index[version] = device.parent
        if self.device_index[version] is not None and plan.vteps_changed:
            plan.vteps_changed = False
            vteps = plan.vteps()
            self._report_clashes(version, plan.clashes())
            try:
                await asyncio.to_thread(tunnel.set_vteps, vteps)
            except OSError:
                plan.vteps_changed = True
                raise

    def _tell_parent(self, version: int, tunnel: Tunnel, device: Device | None,
                     removed: bool) -> None:
        """A warning, once per address, when the family has no device because no interface
        holds the Node's address (its address moved, and the Node still names the old one; or
        it is not up yet): the device and every VXLAN route of the family are gone, and were
        gone without a word. An info when a device is made again after that."""
        missing = self.parent_missing[version]
        if device is None and missing is not None:
            if self._parent_told.get(version) != missing:
                self._parent_told[version] = missing
                log.warning("no interface holds %s, this node's IPv%d address on its Node: %s %s,"
                            " and the IPv%d VXLAN routes wait until an interface has it or the"
                            " Node names another address", missing, version, tunnel.name,
                            "removed" if removed else "not made", version)
        elif device is not None and version in self._parent_told:
            del self._parent_told[version]
            log.info("%s made again on the interface holding %s, this node's IPv%d address",
                     tunnel.name, device.local, version)
        elif device is None:
            self._parent_told.pop(version, None)  # no device wanted at all now: nothing to wait for

    def _family_failed(self, version: int, err: Exception) -> None:
        reason = str(err)
        if self._family_trouble.get(version) != reason:
            self._family_trouble[version] = reason
            log.error("IPv%d VXLAN cannot be programmed on this node, its routes wait: %s",
                      version, reason)
        if isinstance(err, MTUTooSmall):
            return  # the host MTU is read once, at start: trying again cannot help
        # Later, and without holding up the other family: a timer, not a sleep in this loop.
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._devices_again)

    def _devices_again(self) -> None:
        self._retry = None
        self._devices_due = True
        self._kernel_due.set()

    def _family_works(self, version: int) -> None:
        if self._family_trouble.pop(version, None) is not None:
            log.info("IPv%d VXLAN is programmed again", version)

    def _report_clashes(self, version: int, clashes: set[Clash]) -> None:
        for clash in sorted(clashes - self._clashes_told[version]):
            log.warning("nodes %s and %s publish the same IPv%d VXLAN %s, %s: %s keeps it (the "
                        "first by name) and %s is left out, with no neighbour or FDB entry and its "
                        "blocks unreachable through VXLAN, until one of the two Nodes changes",
                        clash.kept, clash.left_out, version, clash.what, clash.value, clash.kept,
                        clash.left_out)
        self._clashes_told[version] = clashes

    def _report_refused(self, outcome: Outcome, tried: Mapping[Prefix, object] | None) -> None:
        """Log the routes the kernel refused, once for each prefix and reason. The FIB keeps a
        refused route wanted and tries it again at each resync; without this a block would be
        unreachable with nothing said. `tried`: the prefixes sent (None: all, a full replace)."""
        if tried is None:
            self._refused = {p: r for p, r in self._refused.items() if p in outcome.failed}
        else:
            for prefix in tried:
                if prefix not in outcome.failed:
                    self._refused.pop(prefix, None)
        fresh: dict[str, list[Prefix]] = {}
        for prefix, reason in outcome.failed.items():
            if self._refused.get(prefix) != reason:
                self._refused[prefix] = reason
                fresh.setdefault(reason, []).append(prefix)
        for reason, prefixes in fresh.items():
            prefixes.sort(key=lambda p: (p.version, p))
            shown = ", ".join(self._route_text(p) for p in prefixes[:REFUSED_SHOWN])
            more = len(prefixes) - REFUSED_SHOWN
            log.warning("the kernel refused %s to %s%s: %s",
                        "the VXLAN route" if len(prefixes) == 1 else f"{len(prefixes)} VXLAN routes",
                        shown, f" and {more} more" if more > 0 else "", reason)

    def _route_text(self, prefix: Prefix) -> str:
        hop = self.plans[prefix.version].routes.get(prefix)
        if hop is None:
            return f"{prefix} (its removal)"
        return f"{prefix} via {hop.via}" + (f" dev {self.tunnels[hop.via.version].name}"
                                            if hop.tunnel and self.tunnels else "")

    def _hops(self, hop: Hop) -> set[NextHop] | None:
        if not hop.tunnel:
            if hop.via.version == 6 and hop.via.is_link_local:
                parent = self.parent_index[6]
                return {NextHop(hop.via, parent)} if parent else None  # waits for the parent
            return {NextHop(hop.via)}
        index = self.device_index[hop.via.version]
        if index is None:
            return None  # no device yet: the route waits for it
        return {NextHop(hop.via, index, onlink=True)}
