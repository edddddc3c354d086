"""The node's own side of the network, as the agent reads and sets it at start: its addresses,
the source address it would use towards a destination, the underlay's MTU, and forwarding.

Each call opens a netlink socket in the caller's namespace and closes it; none is on a hot path.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from percale.dataplane.netlink import RT_SCOPE_UNIVERSE, Netlink

DEFAULT_MTU = 1500
# felix's MTUIfacePattern: physical-looking interfaces, not bridges, tunnels, veths or pods'.
DEFAULT_MTU_PATTERN = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)"
# What felix assumes when nothing matches (calico#4522).
FALLBACK_MTU = 1460
_IFF_UP = 0x1


@dataclass(frozen=True)
class HostAddress:
    interface: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface


def host_addresses() -> list[HostAddress]:
    """Global-scope addresses on this network namespace's links, in link order (no link-local
    or host-scope addresses)."""
    with Netlink() as nl:
        names = {link.index: link.name for link in nl.links()}
        found = sorted((a for a in nl.addresses() if a.scope == RT_SCOPE_UNIVERSE),
                       key=lambda a: a.index)
    return [HostAddress(names.get(a.index, "?"), a.interface) for a in found]


def source_address_towards(destination: str) -> str | None:
    """The address the kernel would send from to reach `destination` (can-reach=); None when it
    has no route there."""
    try:
        target = ipaddress.ip_address(destination)
    except ValueError:
        return None
    with Netlink() as nl:
        route = nl.route_to(target)
    return str(route.preferred_source) if route and route.preferred_source else None


def host_mtu(pattern: str = DEFAULT_MTU_PATTERN) -> int:
    """The smallest MTU among the interfaces that are up and whose names match `pattern`
    (felix's findHostMTU); FALLBACK_MTU when none does. `pattern` is a compiled-checked regex."""
    matcher = re.compile(pattern)
    with Netlink() as nl:
        mtus = [link.mtu for link in nl.links()
                if link.flags & _IFF_UP and link.mtu and matcher.search(link.name)]
    return min(mtus) if mtus else FALLBACK_MTU


def interface_holding(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
    """The index of the interface that has `address` (the VXLAN device's parent)."""
    with Netlink() as nl:
        return next((a.index for a in nl.addresses() if a.interface.ip == address), None)


def underlay_mtu() -> int:
    """The MTU of the interface that carries the default route (the underlay), else 1500."""
    with Netlink() as nl:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in nl.routes(family, default_only=True):
                if route.oif:
                    link = nl.link(index=route.oif)
                    if link is not None and link.mtu:
                        return link.mtu
    return DEFAULT_MTU


def enable_forwarding() -> None:
    """Pods reach each other and the world through the host (IPv4; IPv6 once IPv6 is in use:
    enable_ipv6_forwarding)."""
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")


def enable_ipv6_forwarding() -> None:
    """IPv6 pods reach each other and the world through the host. Only where IPv6 pods are
    (node/pools.py), as felix writes it only with IPv6 support: with forwarding on, the kernel
    ignores router advertisements, so an IPv4-only node whose own IPv6 default route and
    addresses come from them lost both when they expired."""
    Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text("1")
