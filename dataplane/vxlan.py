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

Owner: this module owns the two devices and every neighbour and FDB entry on them. A
device found with another VNI, port, parent or source address is made again. Blocking (netlink):
the agent calls it from a worker thread.
"""

from __future__ import annotations

import ipaddress
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
)

DEVICE = "vxlan.percale"
DEVICE_V6 = "vxlan6.percale"  # Calico's vxlan-v6.calico; "vxlan-v6.percale" is past 15 bytes
VNI = 4096
PORT = 4789


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
        """The device as `want` says, up, with exactly its address; returns its index."""
        with Netlink() as nl:
            link = nl.link(name=self.name)
            if link is not None and not _matches(link, want):
                nl.delete_link(link.index)
                link = None
            if link is None:
                nl.add_vxlan(self.name, vni=VNI, port=PORT, local=want.local, parent=want.parent,
                             mac=want.mac, mtu=want.mtu)
                link = nl.link(name=self.name)
                assert link is not None
            elif link.mtu != want.mtu or link.mac != want.mac:
                nl.set_link(link.index, mtu=want.mtu, mac=want.mac)
            address = ipaddress.ip_interface(want.address)  # /32 or /128
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            # Global addresses only: an IPv6 device keeps the link-local address the kernel gave it.
            present = {a.interface for a in nl.addresses(family, index=link.index)
                       if a.scope == RT_SCOPE_UNIVERSE}
            for other in present - {address}:
                nl.delete_address(link.index, other)
            if address not in present:
                nl.add_address(link.index, address)
            nl.set_link_up(link.index)
            return link.index

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
