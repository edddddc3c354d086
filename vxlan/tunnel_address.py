"""The node's VXLAN tunnel addresses, as calico-node's allocateip reconciler keeps them
(calico.md §1.10): while an enabled pool of a family with `vxlanMode` Always or CrossSubnet
allows the Tunnel use and selects the node, the node holds one address from such a pool and
publishes it on its Node with a MAC; otherwise it holds none and the fields are gone.

    IPv4  handle vxlan-tunnel-addr-<node>     spec.ipv4VXLANTunnelAddr, spec.vxlanTunnelMACAddr
    IPv6  handle vxlan-v6-tunnel-addr-<node>  spec.ipv6VXLANTunnelAddr, spec.vxlanTunnelMACAddrV6
 An address whose pool no longer qualifies, or that IPAM does not hold for the
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
from percale.vxlan.plan import tunnel_fields, vtep_mac, vxlan_pools

log = logging.getLogger("percale.vxlan")

ATTEMPTS = 10
# The Node's fields for each family: (tunnel address, MAC), and the allocation's type attribute.
FIELDS = {4: ("ipv4VXLANTunnelAddr", "vxlanTunnelMACAddr", "vxlanTunnelAddress"),
          6: ("ipv6VXLANTunnelAddr", "vxlanTunnelMACAddrV6", "vxlanV6TunnelAddress")}


async def reconcile(store: Datastore, ipam: IPAM, node: str, version: int = 4
                    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Make node's tunnel address of one family what the pools say; returns it (None: it needs
    none)."""
    try:
        current = await store.get(Key("Node", node))
    except NotFound:
        return None  # not registered yet: the Node's arrival brings us back
    value: Node = current.value  # type: ignore[assignment]
    pools = [kv.value for kv in (await store.list("IPPool")).items]
    candidates = usable(vxlan_pools(pools, version), version, value.metadata.labels, "Tunnel")  # type: ignore[arg-type]
    handle = tunnel_handle(node, version)
    address, mac = tunnel_fields(value, version)
    if not candidates:
        if address is not None or await ipam.ips_by_handle(handle):
            await ipam.release_by_handle(handle)
            await _publish(store, node, None, version)
            log.info("VXLAN tunnel address %s given back: no pool wants VXLAN", address)
        return None
    if address is not None and any(address in p.spec.network for p in candidates):
        allocation = await ipam.get_allocation(str(address))
        if allocation is not None and allocation.handle_id == handle:
            if mac is None:
                await _publish(store, node, address, version)
            return address
    # None yet, or one that no longer qualifies: a fresh one.
    await ipam.release_by_handle(handle)
    wanted = [str(p.spec.network) for p in candidates]
    got = await ipam.auto_assign(node, handle_id=handle, num4=1 if version == 4 else 0,
                                 num6=1 if version == 6 else 0, use="Tunnel",
                                 attrs={"type": FIELDS[version][2]},
                                 ipv4_pools=wanted if version == 4 else None,
                                 ipv6_pools=wanted if version == 6 else None)
    address = (got.ipv4 or got.ipv6)[0].ip
    await _publish(store, node, address, version)
    log.info("VXLAN tunnel address %s", address)
    return address


async def _publish(store: Datastore, node: str,
                   address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, version: int) -> None:
    """Write (or clear) the tunnel address and its MAC on the Node, keeping everything else."""
    address_field, mac_field, _ = FIELDS[version]
    key = Key("Node", node)
    for _ in range(ATTEMPTS):
        current = await store.get(key)
        document = current.value.to_document()
        spec = document.setdefault("spec", {})
        if address is None:
            spec.pop(address_field, None)
            spec.pop(mac_field, None)
        else:
            spec[address_field] = str(address)
            spec.setdefault(mac_field, vtep_mac(node, version))
        wanted = parse(document)
        if wanted == current.value:
            return
        try:
            await store.update(wanted, revision=current.revision)
            return
        except Conflict:
            continue
    raise RuntimeError(f"Node {node!r} kept changing while its tunnel address was written")
