"""percale-node's VXLAN side: the agent's view in, the tunnel and its routes in the kernel.

    plan.RoutePlan            which prefixes go through the tunnel (or directly, without BGP),
                              kept current per changed Node, IPPool or IPAMBlock
    tunnel_address.reconcile  this node's tunnel address and MAC, from IPAM, on its Node
    dataplane.vxlan.Tunnel    the device vxlan.percale and a neighbour + FDB entry per remote end
    dataplane.fib.FIB         the VXLAN routes (protocol 204), taking a block over from BGP

VXLAN routes come from the datastore, not from BGP, so they work with BGP off (`bgp=False`:
then this agent also routes same-subnet blocks of CrossSubnet pools directly and keeps the
node's own blocks blackholed, as no BGP side does). With BGP on, `plan.claims` tells the BGP side
which prefixes to leave alone, and `on_claims` is awaited after this agent changed the kernel for
a change of claims: a block moving to VXLAN is taken over first (replace), a block moving back
to BGP is let go first, so a route is never missing for longer than that handover.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from percale.dataplane.blackholes import Blackholes
from percale.dataplane.fib import FIB, NextHop
from percale.dataplane.host import interface_holding
from percale.dataplane.vxlan import Device, Tunnel
from percale.datastore import Datastore, DatastoreError
from percale.datastore.cache import Cache, Change
from percale.ipam.allocator import IPAM
from percale.ipam.errors import IPAMError
from percale.vxlan import tunnel_address
from percale.vxlan.plan import RoutePlan, VXLAN_OVERHEAD, Hop, node_interface, vtep_mac, vxlan_pools

log = logging.getLogger("percale.vxlan")

SETTLE_SECONDS = 0.01
RETRY_SECONDS = 1.0


class VXLANAgent:
    def __init__(self, cache: Cache, node: str, *, store: Datastore, ipam: IPAM,
                 routes: FIB | None, tunnel: Tunnel | None, host_mtu: int, bgp: bool,
                 blackholes: Blackholes | None = None, resync: float = 30.0) -> None:
        self.cache, self.node, self.store, self.ipam = cache, node, store, ipam
        self.routes, self.tunnel, self.blackholes = routes, tunnel, blackholes
        self.host_mtu = host_mtu
        self.resync = resync
        self.plan = RoutePlan(node, bgp=bgp)
        self.on_claims: Callable[[], Awaitable[None]] | None = None
        self.device_index: int | None = None
        self._applied_index: int | None = -1  # the device index the routes were last written with
        self._address_due = asyncio.Event()
        self._kernel_due = asyncio.Event()
        cache.subscribe(self._changed)

    # -- changes from the datastore -------------------------------------------------------------

    def _changed(self, change: Change) -> None:
        value: Any = change.new.value if change.new else None
        if change.kind == "IPPool":
            self.plan.set_pools(self.cache.values("IPPool"))  # type: ignore[arg-type]
            self._address_due.set()
        elif change.kind == "Node":
            self.plan.set_node(change.key.name, value)
            if change.key.name == self.node:
                self._address_due.set()
        elif change.kind == "IPAMBlock":
            present = change.new or change.old
            assert present is not None
            self.plan.set_block(present.value.spec.cidr, value)  # type: ignore[attr-defined]
        else:
            return
        self._kernel_due.set()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.cache.wait_synced()
        self.plan.set_pools(self.cache.values("IPPool"))  # type: ignore[arg-type]
        for name, kv in self.cache.items("Node").items():
            self.plan.set_node(name.name, kv.value)  # type: ignore[arg-type]
        for kv in self.cache.items("IPAMBlock").values():
            self.plan.set_block(kv.value.spec.cidr, kv.value)  # type: ignore[attr-defined]
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
            try:
                await tunnel_address.reconcile(self.store, self.ipam, self.node)
            except (DatastoreError, IPAMError, RuntimeError) as err:
                log.warning("keeping the VXLAN tunnel address failed, trying again: %s", err)
                await asyncio.sleep(RETRY_SECONDS)
                self._address_due.set()

    async def _programming(self) -> None:
        while True:
            await self._kernel_due.wait()
            await asyncio.sleep(SETTLE_SECONDS)
            self._kernel_due.clear()
            try:
                await self.program()
            except OSError as err:
                log.warning("programming VXLAN failed, trying again: %s", err)
                await asyncio.sleep(RETRY_SECONDS)
                self._kernel_due.set()

    async def _checking(self) -> None:
        """Every `resync` seconds the kernel is read back and repaired."""
        while True:
            await asyncio.sleep(self.resync)
            try:
                if self.routes is not None:
                    await asyncio.to_thread(self.routes.reconcile)
                self._applied_index = -1  # write the tunnel ends and routes in full again
                self._kernel_due.set()
            except OSError as err:
                log.warning("checking VXLAN routes failed: %s", err)

    # -- the kernel ----------------------------------------------------------------------------

    def wanted_device(self) -> Device | None:
        me = self.cache.get_value("Node", self.node)
        interface = node_interface(me)  # type: ignore[arg-type]
        if me is None or interface is None or me.spec.ipv4_vxlan_tunnel_addr is None:  # type: ignore[attr-defined]
            return None
        if not vxlan_pools(self.cache.values("IPPool")):  # type: ignore[arg-type]
            return None
        parent = interface_holding(interface.ip)
        if parent is None:
            return None
        mac = me.spec.vxlan_tunnel_mac_addr or vtep_mac(self.node)  # type: ignore[attr-defined]
        return Device(ipaddress.IPv4Address(str(me.spec.ipv4_vxlan_tunnel_addr)),  # type: ignore[attr-defined]
                      str(mac).lower(), self.host_mtu - VXLAN_OVERHEAD[4], interface.ip, parent)

    async def program(self) -> None:
        """The device, the tunnel ends and the routes as the plan says; then the BGP side is told
        if the claims changed."""
        started = time.monotonic()
        if self.tunnel is not None:
            device = await asyncio.to_thread(self.wanted_device)
            if device is None:
                if self.device_index is not None or self._applied_index == -1:
                    await asyncio.to_thread(self.tunnel.remove)
                self.device_index = None
            else:
                self.device_index = await asyncio.to_thread(self.tunnel.ensure, device)
                await asyncio.to_thread(self.tunnel.set_vteps, self.plan.vteps())
        if self.routes is not None:
            changes = self.plan.changes()
            if self.device_index != self._applied_index:
                routes = {p: hops for p, hop in self.plan.routes.items()
                          if (hops := self._hops(hop)) is not None}
                await asyncio.to_thread(self.routes.replace_all, routes)
                self._applied_index = self.device_index
            elif changes:
                batch = {p: (self._hops(hop) if hop else None) for p, hop in changes.items()}
                await asyncio.to_thread(self.routes.apply, batch)
        if self.blackholes is not None:
            await asyncio.to_thread(self.blackholes.sync, self.plan.own_blocks())
        if self.plan.claims_changed:
            self.plan.claims_changed = False
            if self.on_claims is not None:
                await self.on_claims()
        log.debug("VXLAN programmed in %.1f ms", (time.monotonic() - started) * 1000)

    def _hops(self, hop: Hop) -> set[NextHop] | None:
        if not hop.tunnel:
            return {NextHop(hop.via)}
        if self.device_index is None:
            return None  # no device yet: the route waits for it
        return {NextHop(hop.via, self.device_index, onlink=True)}
