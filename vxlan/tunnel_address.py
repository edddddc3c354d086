"""The node's VXLAN tunnel address, as calico-node's allocateip reconciler keeps it (calico.md
§1.10): while an enabled pool with `vxlanMode` Always or CrossSubnet allows the Tunnel use and
selects the node, the node holds one address from such a pool (IPAM handle
`vxlan-tunnel-addr-<node>`, attribute type vxlanTunnelAddress) and publishes it on its Node with
a MAC (`spec.ipv4VXLANTunnelAddr`, `spec.vxlanTunnelMACAddr`); otherwise it holds none and the
fields are gone. An address whose pool no longer qualifies, or that IPAM does not hold for the
handle, is given back and another taken.

Every write is compare-and-swap (IPAM's own, and the Node update); reads come from the agent's
view, so a reconcile that finds everything in place costs one IPAM read and no write.
"""

from __future__ import annotations

import ipaddress
import logging

from percale.api import Node, parse
from percale.datastore import Conflict, Datastore, Key, NotFound
from percale.ipam.allocator import IPAM, tunnel_handle
from percale.ipam.pools import usable
from percale.vxlan.plan import vtep_mac, vxlan_pools

log = logging.getLogger("percale.vxlan")

ATTEMPTS = 10


async def reconcile(store: Datastore, ipam: IPAM, node: str) -> ipaddress.IPv4Address | None:
    """Make node's tunnel address what the pools say; returns it (None: it needs none)."""
    try:
        current = await store.get(Key("Node", node))
    except NotFound:
        return None  # not registered yet: the Node's arrival brings us back
    value: Node = current.value  # type: ignore[assignment]
    pools = [kv.value for kv in (await store.list("IPPool")).items]
    candidates = usable(vxlan_pools(pools), 4, value.metadata.labels, "Tunnel")  # type: ignore[arg-type]
    handle = tunnel_handle(node)
    held = value.spec.ipv4_vxlan_tunnel_addr
    address = ipaddress.IPv4Address(str(held)) if held is not None else None
    if not candidates:
        if address is not None or await ipam.ips_by_handle(handle):
            await ipam.release_by_handle(handle)
            await _publish(store, node, None)
            log.info("VXLAN tunnel address %s given back: no pool wants VXLAN", address)
        return None
    if address is not None and any(address in p.spec.network for p in candidates):
        allocation = await ipam.get_allocation(str(address))
        if allocation is not None and allocation.handle_id == handle:
            if value.spec.vxlan_tunnel_mac_addr is None:
                await _publish(store, node, address)
            return address
    # None yet, or one that no longer qualifies: a fresh one.
    await ipam.release_by_handle(handle)
    got = await ipam.auto_assign(node, handle_id=handle, num4=1, use="Tunnel",
                                 attrs={"type": "vxlanTunnelAddress"},
                                 ipv4_pools=[str(p.spec.network) for p in candidates])
    address = got.ipv4[0].ip
    await _publish(store, node, address)
    log.info("VXLAN tunnel address %s", address)
    return address


async def _publish(store: Datastore, node: str, address: ipaddress.IPv4Address | None) -> None:
    """Write (or clear) the tunnel address and its MAC on the Node, keeping everything else."""
    key = Key("Node", node)
    for _ in range(ATTEMPTS):
        current = await store.get(key)
        document = current.value.to_document()
        spec = document.setdefault("spec", {})
        if address is None:
            spec.pop("ipv4VXLANTunnelAddr", None)
            spec.pop("vxlanTunnelMACAddr", None)
        else:
            spec["ipv4VXLANTunnelAddr"] = str(address)
            spec.setdefault("vxlanTunnelMACAddr", vtep_mac(node))
        wanted = parse(document)
        if wanted == current.value:
            return
        try:
            await store.update(wanted, revision=current.revision)
            return
        except Conflict:
            continue
    raise RuntimeError(f"Node {node!r} kept changing while its tunnel address was written")
