"""Which routes go through VXLAN, decided as Calico's felix decides them (calico.md §3,
dataplane.md §D). Pure: Nodes, IPPools and IPAMBlocks in, routes and tunnel ends out.

For each remote block (its owner from the block's affinity) and each address borrowed by another
node (a /32 to the borrower), by the mode of the pool that holds it:

    Never                     BGP's (nothing here)
    CrossSubnet, same subnet  BGP's when BGP runs; else a direct route via the node's address
    CrossSubnet, other subnet `via <its tunnel address> dev vxlan.percale onlink`
    Always                    the same, whatever the subnet

"Same subnet" is felix's test, asymmetric on purpose: this node's `spec.bgp.ipv4Address` prefix
contains the other node's address. Every prefix decided here is *claimed*: the BGP side never
installs it (`RoutePlan.claimed`), and a VXLAN route waits until its node's tunnel end is known
and is not left out by a clash (two nodes publishing one tunnel address or MAC, see `Clash`).

`RoutePlan` keeps the answer current one change at a time: a block changed anywhere costs a look
at that block, a node changed a look at the prefixes it serves.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from percale.api import IPAMBlock, IPPool, Node
from percale.api.fields import IPV6_MIN_MTU, POD_MTU_MIN

IPv4Net = ipaddress.IPv4Network | ipaddress.IPv6Network  # a prefix of the plan's family
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Bytes each encapsulation adds to a packet (Calico's figures): VXLAN over IPv4 50, over IPv6 70.
VXLAN_OVERHEAD = {4: 50, 6: 70}
# The smallest host MTU that still leaves pods POD_MTU_MIN under the largest encapsulation:
# pools (and so the encapsulation) change while percale-node runs; its MTU setting does not.
# IPv6 needs more (IPV6_MIN_MTU): `tunnel_mtu` checks each family where its device is made, so
# a host that cannot carry IPv6 VXLAN still carries IPv4.
HOST_MTU_MIN = POD_MTU_MIN + max(VXLAN_OVERHEAD.values())


class MTUTooSmall(ValueError):
    """The host's MTU leaves pods less than POD_MTU_MIN: fix the MTU setting or the interfaces."""


def vtep_mac(node: str, version: int = 4) -> str:
    """felix's MAC for a node that has none stored: 0x66 then the first five bytes of
    SHA-1(node name; for IPv6 "<name>-v6"). Locally administered, unicast, stable."""
    digest = hashlib.sha1((node if version == 4 else f"{node}-v6").encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x66, *digest[:5]))


def vxlan_pools(pools: Iterable[IPPool], version: int = 4) -> list[IPPool]:
    return [p for p in pools if not p.spec.disabled and p.spec.vxlan_mode != "Never"
            and p.spec.network.version == version]


def pod_mtu(host_mtu: int, pools: Iterable[IPPool]) -> int:
    """The host's MTU less the largest overhead of an encapsulation an enabled pool uses: a
    pod's packets must still fit the underlay once wrapped. MTUTooSmall below POD_MTU_MIN
    (a host MTU of 1 once became a pod MTU of -49, written to the MTU file)."""
    enabled = [p for p in pools if not p.spec.disabled]
    overhead = max([VXLAN_OVERHEAD[p.spec.network.version] for p in enabled if p.spec.vxlan_mode != "Never"]
                   + [20 for p in enabled if p.spec.ipip_mode != "Never"] + [0])
    mtu = host_mtu - overhead
    if mtu < POD_MTU_MIN:
        raise MTUTooSmall(f"host MTU {host_mtu} less {overhead} bytes of encapsulation leaves pods {mtu},"
                          f" below the smallest pod MTU, {POD_MTU_MIN}")
    return mtu


def tunnel_mtu(host_mtu: int, version: int) -> int:
    """The MTU of the VXLAN device of one family: the host's less that family's overhead.
    MTUTooSmall if the family cannot run over it (IPv6 below IPV6_MIN_MTU, IPv4 below
    POD_MTU_MIN)."""
    mtu = host_mtu - VXLAN_OVERHEAD[version]
    least, what = (IPV6_MIN_MTU, "IPv6's minimum link MTU (RFC 8200)") if version == 6 else (
        POD_MTU_MIN, "the smallest pod MTU")
    if mtu < least:
        raise MTUTooSmall(f"host MTU {host_mtu} less {VXLAN_OVERHEAD[version]} bytes of VXLAN over"
                          f" IPv{version} leaves the tunnel {mtu}, below {what}, {least}")
    return mtu


@dataclass(frozen=True)
class Vtep:
    """A node's tunnel end, as its Node publishes it."""

    node: str
    tunnel_address: Address
    mac: str
    node_address: Address


@dataclass(frozen=True, order=True)
class Clash:
    """Two nodes publish the same tunnel address, or the same MAC, in one family.

    The kernel holds one neighbour entry per tunnel address and one FDB entry per MAC: program
    both nodes' tunnel ends and each write overwrites the other, the winner changing with the
    order a set iterates in, so traffic to both flaps. Instead the node whose name sorts first
    keeps the value, and every other node publishing it is left out: no neighbour or FDB entry,
    and its routes wait as for a node with no tunnel end. Every node reads the same Nodes, so
    the whole cluster agrees which one that is, whatever order the Nodes arrived in. A node is
    left out by any earlier name sharing either value with it, even one left out itself: that
    decides from the nodes sharing a value alone, so a change costs a look at them only."""

    what: str  # "tunnel address" or "MAC"
    value: str
    kept: str
    left_out: str


@dataclass(frozen=True)
class Hop:
    """Where a prefix goes: through the tunnel to a node's tunnel address, or directly to a
    node's underlay address."""

    via: Address
    tunnel: bool


def node_interface(node: Node | None, version: int = 4
                   ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    """A node's address of one family with its prefix (the resource keeps it as written)."""
    if node is None or node.spec.bgp is None:
        return None
    address = node.spec.bgp.ipv4_address if version == 4 else node.spec.bgp.ipv6_address
    return ipaddress.ip_interface(str(address)) if address is not None else None  # type: ignore[return-value]


def tunnel_fields(node: Node, version: int = 4) -> tuple[Address | None, str | None]:
    """A node's tunnel address and MAC of one family, as its Node publishes them."""
    spec = node.spec
    if version == 4:
        address, mac = spec.ipv4_vxlan_tunnel_addr, spec.vxlan_tunnel_mac_addr
    else:
        address, mac = spec.ipv6_vxlan_tunnel_addr, spec.vxlan_tunnel_mac_addr_v6
    return (ipaddress.ip_address(str(address)) if address is not None else None,
            str(mac).lower() if mac is not None else None)


def vtep_of(node: Node, version: int = 4) -> Vtep | None:
    interface = node_interface(node, version)
    address, mac = tunnel_fields(node, version)
    if address is None or interface is None:
        return None
    return Vtep(node.metadata.name, address, mac or vtep_mac(node.metadata.name, version), interface.ip)


def _owner(block: IPAMBlock) -> str | None:
    affinity = block.spec.affinity or ""
    return affinity[len("host:"):] if affinity.startswith("host:") else None


def served(block: IPAMBlock, version: int = 4) -> dict[IPv4Net, str]:
    """What a block routes to which node: the block to its owner, and each address another node
    borrowed (or every address, for a block no node owns) to that node."""
    spec = block.spec
    if spec.deleted or spec.network.version != version:
        return {}
    owner = _owner(block)
    found: dict[IPv4Net, str] = {}
    if owner:
        found[spec.network] = owner
    base = spec.network.network_address
    for ordinal, slot in enumerate(spec.allocations):
        if slot is None:
            continue
        holder = spec.attributes[slot].secondary.get("node")
        if holder and holder != owner:
            found[ipaddress.ip_network(base + ordinal)] = holder
    return found


class RoutePlan:
    """The plan of one address family (4: vxlan.percale, 6: vxlan6.percale)."""

    def __init__(self, me: str, *, bgp: bool, version: int = 4) -> None:
        self.me = me
        self.version = version
        self.bgp = bgp  # BGP runs and routes the same-subnet and Never-pool prefixes
        self._pools: list[IPPool] = []
        self._nodes: dict[str, Node] = {}
        self._by_block: dict[str, dict[IPv4Net, str]] = {}  # block -> what it serves
        self._target: dict[IPv4Net, str] = {}  # prefix -> the node that serves it
        self._by_node: dict[str, set[IPv4Net]] = {}
        self._routes: dict[IPv4Net, Hop] = {}
        self._claims: set[IPv4Net] = set()
        self._changed: dict[IPv4Net, Hop | None] = {}
        # Which nodes publish each tunnel address and MAC, and the nodes a clash leaves out.
        self._holders: dict[tuple[str, str], set[str]] = {}
        self._left_out: set[str] = set()
        self.claims_changed = False
        self.vteps_changed = True  # another node's tunnel end came, went or moved

    # -- what it says ------------------------------------------------------------------------

    @property
    def routes(self) -> Mapping[IPv4Net, Hop]:
        return self._routes

    @property
    def claimed(self) -> AbstractSet[IPv4Net]:
        """The prefixes that are VXLAN's: the BGP side leaves them alone (live: read it, do not
        keep it)."""
        return self._claims

    def changes(self) -> dict[IPv4Net, Hop | None]:
        """Routes added or changed (a Hop) and removed (None) since the last call."""
        changed, self._changed = self._changed, {}
        return changed

    def vteps(self) -> set[Vtep]:
        """Every other node's tunnel end that is known and not left out by a clash."""
        return {v for name, node in self._nodes.items()
                if name != self.me and name not in self._left_out
                and (v := vtep_of(node, self.version))}

    def clashes(self) -> set[Clash]:
        """Each node left out, with the node it clashes with (see Clash)."""
        found = set()
        for (what, value), holders in self._holders.items():
            if len(holders) > 1:
                kept, *others = sorted(holders)
                found.update(Clash(what, value, kept, other) for other in others)
        return found

    def own_blocks(self) -> set[str]:
        """The blocks this node owns (for its blackholes when no BGP side keeps them)."""
        return {cidr for cidr, served_ in self._by_block.items()
                if served_.get(ipaddress.ip_network(cidr)) == self.me}

    # -- changes -------------------------------------------------------------------------------

    def set_pools(self, pools: Iterable[IPPool]) -> None:
        self._pools = sorted((p for p in pools if p.spec.network.version == self.version),
                             key=lambda p: p.spec.network.prefixlen, reverse=True)
        self._decide(list(self._target))

    def set_node(self, name: str, node: Node | None) -> None:
        before = self._nodes.get(name)
        vtep_before = vtep_of(before, self.version) if before else None
        vtep_after = vtep_of(node, self.version) if node else None
        flipped: set[str] = set()
        if vtep_before != vtep_after:
            self.vteps_changed |= name != self.me
            # This node's own tunnel end counts too: a remote one sharing its values is left out.
            flipped = self._reindex(name, vtep_before, vtep_after)
            self.vteps_changed |= bool(flipped - {self.me})
        if node is None:
            self._nodes.pop(name, None)
        else:
            self._nodes[name] = node
        if name == self.me:
            self._decide(list(self._target))  # this node's subnet decides for every prefix
        else:
            self._decide(list(self._by_node.get(name, ())))
        for other in flipped - {name}:
            self._decide(list(self._by_node.get(other, ())))

    def set_block(self, cidr: str, block: IPAMBlock | None) -> None:
        before = self._by_block.pop(cidr, {})
        after = served(block, self.version) if block is not None else {}
        if after:
            self._by_block[cidr] = after
        if before == after:
            return
        for prefix, node in before.items():
            if after.get(prefix) != node:
                self._target.pop(prefix, None)
                self._by_node.get(node, set()).discard(prefix)
        for prefix, node in after.items():
            self._target[prefix] = node
            self._by_node.setdefault(node, set()).add(prefix)
        self._decide(set(before) | set(after))

    def _reindex(self, name: str, before: Vtep | None, after: Vtep | None) -> set[str]:
        """Move `name` between the holders of tunnel addresses and MACs; returns the nodes now
        left out that were not, or the reverse (see Clash)."""
        touched = {name}
        for vtep, add in ((before, False), (after, True)):
            for key in _clash_keys(vtep):
                holders = self._holders.setdefault(key, set())
                (holders.add if add else holders.discard)(name)
                touched |= holders
                if not holders:
                    del self._holders[key]
        flipped = set()
        for node in touched:
            vtep = after if node == name else vtep_of(self._nodes[node], self.version)
            left_out = any(min(self._holders[key]) != node for key in _clash_keys(vtep))
            if left_out != (node in self._left_out):
                flipped.add(node)
                (self._left_out.add if left_out else self._left_out.discard)(node)
        return flipped

    # -- deciding ------------------------------------------------------------------------------

    def _decide(self, prefixes: Iterable[IPv4Net]) -> None:
        mine = node_interface(self._nodes.get(self.me), self.version)
        subnet = mine.network if mine else None
        for prefix in prefixes:
            hop, claimed = self._hop(prefix, subnet)
            if claimed != (prefix in self._claims):
                self.claims_changed = True
                (self._claims.add if claimed else self._claims.discard)(prefix)
            if self._routes.get(prefix) != hop:
                if hop is None:
                    self._routes.pop(prefix, None)
                else:
                    self._routes[prefix] = hop
                self._changed[prefix] = hop

    def _hop(self, prefix: IPv4Net, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None
             ) -> tuple[Hop | None, bool]:
        node_name = self._target.get(prefix)
        if node_name is None or node_name == self.me:
            return None, False
        pool = next((p for p in self._pools if prefix.subnet_of(p.spec.network)), None)  # type: ignore[arg-type]
        mode = pool.spec.vxlan_mode if pool is not None else "Never"
        if mode == "Never":
            return None, False
        node = self._nodes.get(node_name)
        interface = node_interface(node, self.version)
        address = interface.ip if interface else None
        if mode == "CrossSubnet" and address is not None and subnet is not None and address in subnet:
            if self.bgp:
                return None, False  # BGP routes it directly
            return Hop(address, tunnel=False), True
        vtep = vtep_of(node, self.version) if node is not None else None
        if vtep is None or node_name in self._left_out:
            return None, True  # waits for a tunnel end this node can program
        return Hop(vtep.tunnel_address, tunnel=True), True


def _clash_keys(vtep: Vtep | None) -> tuple[tuple[str, str], ...]:
    if vtep is None:
        return ()
    return ("tunnel address", str(vtep.tunnel_address)), ("MAC", vtep.mac)
