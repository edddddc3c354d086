"""The VXLAN devices `vxlan.percale` (IPv4) and `vxlan6.percale` (IPv6), and what each knows
of the other nodes' tunnel ends.

    tunnel = Tunnel()
    tunnel.ensure(Device(address=10.244.3.0, mac=..., mtu=1450, local=10.0.1.11, parent=2))
    tunnel.set_vteps({Vtep(tunnel_address, mac, node_address), ...})
    tunnel.remove()                  # no pool wants VXLAN any more

For each remote tunnel end (VTEP) the device holds a permanent neighbour entry (its tunnel
address -> its MAC) and a permanent FDB entry (its MAC -> the node's underlay address), as
Calico's felix writes them (dataplane.md §D); routes through the device are dataplane.fib's
(protocol 204, `via <tunnel address> dev vxlan.percale onlink`).

Owner: this module owns the two devices and every neighbour and FDB entry on them. A device of
their name found with another kind, VNI, port, parent or source address is made again, as felix
does. The kernel lets one VXLAN device per family hold a VNI on a port, so a device of another
name holding VNI 4096 on port 4789 stops ours being made: Calico's own (`vxlan.calico`,
`vxlan-v6.calico`), which Calico leaves behind when percale replaces it on a node, is deleted;
any other is not percale's to delete, and VNIInUse names it. Blocking (netlink): the agent calls
it from a worker thread.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass

from percale.dataplane.netlink import (
    AF_BRIDGE,
    IFLA_VXLAN_ID,
    IFLA_VXLAN_LINK,
    IFLA_VXLAN_LOCAL,
    IFLA_VXLAN_LOCAL6,
    RT_SCOPE_UNIVERSE,
    IFLA_VXLAN_PORT,
    NTF_SELF,
    NUD_PERMANENT,
    U32,
    Link,
    Netlink,
    NetlinkError,
)

log = logging.getLogger("percale.vxlan")

DEVICE = "vxlan.percale"
DEVICE_V6 = "vxlan6.percale"  # Calico's vxlan-v6.calico; "vxlan-v6.percale" is past 15 bytes
VNI = 4096
PORT = 4789
# Calico's devices, which use the same VNI and port: deleted when one stands in ours' way.
CALICO_DEVICES = frozenset({"vxlan.calico", "vxlan-v6.calico"})


class VNIInUse(OSError):
    """Another VXLAN device, not percale's nor Calico's, holds VNI 4096 on port 4789 for this
    family, so the kernel refuses ours (EEXIST). Retrying cannot help until it is removed."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Device:
    address: Address  # this node's tunnel address (/32 or /128 on the device)
    mac: str
    mtu: int
    local: Address  # this node's underlay address: the tunnel's source (the same family)
    parent: int  # the interface holding it


@dataclass(frozen=True)
class Vtep:
    tunnel_address: Address
    mac: str
    node_address: Address


class Tunnel:
    def __init__(self, name: str = DEVICE) -> None:
        self.name = name

    def index(self) -> int | None:
        with Netlink() as nl:
            link = nl.link(name=self.name)
        return link.index if link else None

    def ensure(self, want: Device) -> int:
        """The device as `want` says, up, with exactly its address; returns its index. VNIInUse
        if a device it may not delete holds the VNI and port."""
        with Netlink() as nl:
            link = nl.link(name=self.name)
            if link is not None and not _matches(link, want):
                nl.delete_link(link.index)
                link = None
            if link is None:
                self._add(nl, want)
                link = nl.link(name=self.name)
                assert link is not None
            elif link.mtu != want.mtu or link.mac != want.mac:
                # The MAC only when it changed: the kernel flushes every neighbour entry of a
                # device whose address is written, even with the same one (the agent writes
                # the tunnel ends again after each device pass, for a MAC that did change).
                nl.set_link(link.index, mtu=want.mtu,
                            mac=want.mac if link.mac != want.mac else None)
            address = ipaddress.ip_interface(want.address)  # /32 or /128
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            # Global addresses only: an IPv6 device keeps the link-local address the kernel gave it.
            present = {a.interface for a in nl.addresses(family, index=link.index)
                       if a.scope == RT_SCOPE_UNIVERSE}
            # The new address goes on before the old one comes off: when a device loses its last
            # IPv4 address the kernel flushes every route through it (fib_disable_ip), and the
            # agent, believing them in place, would not write them again until its next resync.
            if address not in present:
                nl.add_address(link.index, address)
            for other in present - {address}:
                nl.delete_address(link.index, other)
            nl.set_link_up(link.index)
            return link.index

    def _add(self, nl: Netlink, want: Device) -> None:
        def add() -> None:
            nl.add_vxlan(self.name, vni=VNI, port=PORT, local=want.local, parent=want.parent,
                         mac=want.mac, mtu=want.mtu)

        try:
            add()
        except NetlinkError as err:
            if err.errno != errno.EEXIST:
                raise
            holder = _holding_vni(nl, want.local.version, but=self.name)
            if holder is None:
                raise
            if holder.name not in CALICO_DEVICES:
                raise VNIInUse(errno.EEXIST, (
                    f"{holder.name} holds VXLAN VNI {VNI} on port {PORT}, so {self.name} cannot be "
                    f"made: it is not percale's to delete; remove it (ip link del {holder.name})"
                )) from None
            # Left by Calico, whose place percale took: nothing else uses it.
            log.warning("deleting %s, left by Calico: it holds VNI %d on port %d, which %s needs",
                        holder.name, VNI, PORT, self.name)
            nl.delete_link(holder.index)
            add()

    def set_vteps(self, vteps: set[Vtep]) -> None:
        """Exactly these remote ends: neighbour and FDB entries added, changed or removed."""
        with Netlink() as nl:
            link = nl.link(name=self.name)
            if link is None:
                return
            family = socket.AF_INET6 if self.name == DEVICE_V6 else socket.AF_INET
            want_neigh = {v.tunnel_address: v.mac for v in vteps}
            want_fdb = {v.mac: v.node_address for v in vteps}
            have_neigh = {n.destination: n.mac for n in nl.neighbours(family, link.index)
                          if n.destination is not None and n.state & NUD_PERMANENT}
            have_fdb = {n.mac: n.destination for n in nl.neighbours(AF_BRIDGE, link.index)
                        if n.mac is not None and n.flags & NTF_SELF and n.destination is not None}
            for address in set(have_neigh) - set(want_neigh):
                nl.delete_neighbour(family, link.index, address, None)
            for mac in set(have_fdb) - set(want_fdb):
                nl.delete_neighbour(AF_BRIDGE, link.index, have_fdb[mac], mac, flags=NTF_SELF)
            for mac, node_address in want_fdb.items():
                if have_fdb.get(mac) != node_address:
                    nl.set_neighbour(AF_BRIDGE, link.index, node_address, mac, flags=NTF_SELF)
            for address, mac in want_neigh.items():
                if have_neigh.get(address) != mac:
                    nl.set_neighbour(family, link.index, address, mac)

    def remove(self) -> bool:
        """False if there was no device (its routes, neighbours and FDB entries go with it)."""
        with Netlink() as nl:
            link = nl.link(name=self.name)
            return link is not None and nl.delete_link(link.index)


def _matches(link: Link, want: Device) -> bool:
    info = link.info or {}
    try:
        return (link.kind == "vxlan"
                and U32.unpack(info[IFLA_VXLAN_ID])[0] == VNI
                and struct.unpack("!H", info[IFLA_VXLAN_PORT])[0] == PORT
                and U32.unpack(info[IFLA_VXLAN_LINK])[0] == want.parent
                and info[IFLA_VXLAN_LOCAL if want.local.version == 4 else IFLA_VXLAN_LOCAL6]
                == want.local.packed)
    except KeyError:
        return False


def _holding_vni(nl: Netlink, version: int, *, but: str) -> Link | None:
    """The VXLAN device, other than `but`, holding our VNI and port for IPv`version`, if any."""
    for link in nl.links():
        info = link.info or {}
        if (link.kind != "vxlan" or link.name == but or IFLA_VXLAN_ID not in info
                or IFLA_VXLAN_PORT not in info):
            continue
        # The kernel keeps IPv4 and IPv6 devices apart; ours, and Calico's, carry a source address.
        if ((IFLA_VXLAN_LOCAL6 in info) == (version == 6)
                and U32.unpack(info[IFLA_VXLAN_ID])[0] == VNI
                and struct.unpack("!H", info[IFLA_VXLAN_PORT])[0] == PORT):
            return link
    return None
