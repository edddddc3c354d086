"""What a node announces over BGP, from IPAM's state and the global BGPConfiguration
(calico.md §2.5, §2.1).

  * every block it holds a confirmed affinity for (a pending one counts as absent: the claim may
    still fail, and another node may be announcing the block);
  * a /32 (/128) for every address it borrowed from another node's block, so longest-prefix
    match delivers that pod's traffic here and not to the block's owner, whose blackhole route
    would drop it (calico#3246).

Neither is announced inside a pool with `disableBGPExport`: BIRD's export filter rejects such a
pool's CIDR before anything else (calico.md §2.5), so none of its blocks or borrowed /32s reach a
peer. They are `withheld`: still the node's own for everything else (blackholes, the RIB's "own
route back from a reflector" filter, status), only not announced.

Each own block also gets a local blackhole route (dataplane/blackholes.py installs it): traffic
to unused addresses of the block stops here instead of bouncing along the default route.

Service CIDRs (BGPConfiguration `default`: serviceClusterIPs, serviceExternalIPs,
serviceLoadBalancerIPs; calico.md §2.1) are announced by every node, IPv4 and IPv6, so a router
outside the cluster reaches a Service through any node and kube-proxy there takes the traffic
on. A node whose Node carries `node.kubernetes.io/exclude-from-external-load-balancers: "true"`
announces none of them (confd's ExcludeServiceAdvertisement). A service CIDR inside a pool with
disableBGPExport is withheld like the pool's blocks: BIRD's export filter rejects the pool's
range before it accepts static routes.

No blackhole route goes with a service CIDR. Calico's "blackhole static route" lives in BIRD
only, as the route its export filter sends; its kernel filter rejects the same CIDRs
(`/rejectcidrs`, bird_ipam.cfg), so nothing reaches the kernel. ExaBGP announces without any
route to originate from, and a kernel blackhole would do harm: a host process's connect() to a
ClusterIP looks the route up before kube-proxy's OUTPUT DNAT, and a blackhole answers EINVAL
there, cutting host-network pods and the agent itself off from every Service (calico#2457; an
IPVS kube-proxy is spared by its local routes on kube-ipvs0). What the missing blackhole leaves
open: a packet from outside for an address of the range that no Service uses is not DNATed,
leaves by the node's default route to the router, and comes back to a node until its TTL runs
out (confd#322, calico#5039). Calico stops that in Felix (serviceLoopPrevention: drop what
arrives for a service CIDR and was not DNATed), a forward-path rule for percale's nftables
dataplane, not a route.

Per-Service /32s (externalTrafficPolicy: Local, serviceLoadBalancerAggregation) need Services
and Endpoints watched, which percale does not do: only the configured CIDRs are announced.

Pure: IPAM resources in, prefixes out. `announcements` computes the whole answer at once;
`AnnouncementTable` keeps it as the agent's view changes, one affinity, block, pool,
BGPConfiguration or Node at a time, so a block changed anywhere in the cluster costs this node
one look at that block.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from percale.api import BGPConfiguration, BlockAffinity, IPAMBlock, IPPool, Node
from percale.api.bgp import GLOBAL_CONFIG_NAME

# Kubernetes' well-known label; confd announces no service range from a node carrying it "true".
EXCLUDE_FROM_SERVICES = "node.kubernetes.io/exclude-from-external-load-balancers"


@dataclass(frozen=True)
class Announcements:
    blocks: frozenset[str]      # the node's own blocks: blackholed locally, announced unless withheld
    borrowed: frozenset[str]    # /32 and /128 of addresses it borrowed from other nodes' blocks
    # Those of the blocks, borrowed and services inside a pool with disableBGPExport: never
    # sent to a peer.
    withheld: frozenset[str] = frozenset()
    # Service CIDRs of the global BGPConfiguration: announced, never blackholed nor "own routes".
    services: frozenset[str] = frozenset()

    @property
    def prefixes(self) -> frozenset[str]:
        """What the node announces to its BGP peers."""
        return (self.blocks | self.borrowed | self.services) - self.withheld


def own_block(node: str, affinity: BlockAffinity | None) -> str | None:
    """The block `affinity` gives `node`, if it is confirmed and not being deleted."""
    if affinity is None:
        return None
    spec = affinity.spec
    if spec.node == node and spec.state == "confirmed" and not spec.deleted:
        return spec.cidr
    return None


def borrowed_in(node: str, block: IPAMBlock | None) -> frozenset[str]:
    """The /32s (/128s) of `block`'s addresses allocated to `node`: borrowed unless the block
    is the node's own, which the caller knows."""
    if block is None:
        return frozenset()
    return frozenset(host_prefix(block.spec.cidr, o) for o in ordinals_of(node, block))


def ordinals_of(node: str, block: IPAMBlock | None) -> frozenset[int]:
    """Which addresses of `block` (by ordinal) are allocated to `node`. Cheaper than their
    prefixes, which a node's own block (every one of its pods) never needs."""
    if block is None or block.spec.deleted:
        return frozenset()
    spec = block.spec
    return frozenset(ordinal for ordinal, slot in enumerate(spec.allocations)
                     if slot is not None and spec.attributes[slot].secondary.get("node") == node)


def unexported_pool(pool: IPPool | None) -> str | None:
    """The CIDR of `pool` if it says disableBGPExport (disabled or not: BIRD's filter rejects it
    either way), else None."""
    return pool.spec.cidr if pool is not None and pool.spec.disable_bgp_export else None


def service_cidrs(config: BGPConfiguration | None) -> frozenset[str]:
    """The service CIDRs `config` has every node announce: only the global BGPConfiguration
    carries them (validation refuses them on a node.<name> one)."""
    if config is None or not config.is_global:
        return frozenset()
    spec = config.spec
    return frozenset(block.cidr for blocks in (spec.service_cluster_ips, spec.service_external_ips,
                                               spec.service_load_balancer_ips)
                     for block in blocks or ())


def excluded_from_services(node: Node | None) -> bool:
    """Whether `node` (this node's own Node) announces no service CIDRs."""
    return node is not None and node.metadata.labels.get(EXCLUDE_FROM_SERVICES) == "true"


@functools.lru_cache(maxsize=65536)
def _inside_any(prefix: str, pools: frozenset[str]) -> bool:
    """Whether `prefix` lies in one of the pool CIDRs; remembered, as each change asks again of
    every prefix the node announces."""
    net = ipaddress.ip_network(prefix)
    return any(net.version == pool.version and net.subnet_of(pool)  # type: ignore[arg-type]
               for pool in map(ipaddress.ip_network, pools))


def withheld_of(unexported: frozenset[str], *prefixes: Iterable[str]) -> frozenset[str]:
    """Those of `prefixes` inside a pool of `unexported` (CIDRs of pools with disableBGPExport);
    nothing to look at while no pool says so, the usual case."""
    if not unexported:
        return frozenset()
    return frozenset(p for group in prefixes for p in group if _inside_any(p, unexported))


@functools.lru_cache(maxsize=8192)
def host_prefix(cidr: str, ordinal: int) -> str:
    """The /32 (/128) of the address `ordinal` of block `cidr`."""
    return str(ipaddress.ip_network(ipaddress.ip_network(cidr).network_address + ordinal))


def announcements(node: str, affinities: Iterable[BlockAffinity],
                  ipam_blocks: Iterable[IPAMBlock], pools: Iterable[IPPool] = (),
                  configs: Iterable[BGPConfiguration] = (),
                  nodes: Iterable[Node] = ()) -> Announcements:
    own = frozenset(filter(None, (own_block(node, a) for a in affinities)))
    borrowed: set[str] = set()
    for block in ipam_blocks:
        if block.spec.cidr not in own:
            borrowed |= borrowed_in(node, block)
    unexported = frozenset(filter(None, map(unexported_pool, pools)))
    me = next((n for n in nodes if n.metadata.name == node), None)
    services = frozenset() if excluded_from_services(me) else frozenset(
        cidr for config in configs for cidr in service_cidrs(config))
    return Announcements(own, frozenset(borrowed), withheld_of(unexported, own, borrowed, services),
                         services)


class AnnouncementTable:
    """`announcements(node, ...)` kept current one change at a time: each call says whether
    what the node announces changed."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._own: dict[str, str] = {}  # affinity name -> block
        self._borrowed: dict[str, frozenset[int]] = {}  # block -> this node's addresses in it
        self._unexported: dict[str, str] = {}  # pool name -> CIDR, for pools with disableBGPExport
        self._services: frozenset[str] = frozenset()  # of the global BGPConfiguration
        self._excluded = False  # this node's Node says exclude-from-external-load-balancers
        self._current = Announcements(frozenset(), frozenset())

    @property
    def current(self) -> Announcements:
        return self._current

    def affinity(self, name: str, affinity: BlockAffinity | None) -> bool:
        """Affinity `name` is now `affinity` (None: deleted)."""
        block = own_block(self.node, affinity)
        if block is None:
            self._own.pop(name, None)
        else:
            self._own[name] = block
        return self._refresh()

    def block(self, cidr: str, block: IPAMBlock | None) -> bool:
        """Block `cidr` is now `block` (None: deleted)."""
        mine = ordinals_of(self.node, block)
        if mine:
            self._borrowed[cidr] = mine
        elif self._borrowed.pop(cidr, None) is None:
            return False  # none of ours before or after: nothing to look at
        return self._refresh()

    def pool(self, name: str, pool: IPPool | None) -> bool:
        """IPPool `name` is now `pool` (None: deleted); only its disableBGPExport matters here."""
        cidr = unexported_pool(pool)
        if cidr == self._unexported.get(name):
            return False  # any other field of a pool: nothing to look at
        if cidr is None:
            del self._unexported[name]
        else:
            self._unexported[name] = cidr
        return self._refresh()

    def configuration(self, name: str, config: BGPConfiguration | None) -> bool:
        """BGPConfiguration `name` is now `config` (None: deleted); only the global one's
        service CIDRs matter here."""
        if name != GLOBAL_CONFIG_NAME:
            return False
        services = service_cidrs(config)
        if services == self._services:
            return False  # the AS, the mesh, ...: nothing to look at
        self._services = services
        return self._refresh()

    def own_node(self, node: Node | None) -> bool:
        """This node's Node is now `node` (None: deleted); only its exclusion label matters."""
        excluded = excluded_from_services(node)
        if excluded == self._excluded:
            return False
        self._excluded = excluded
        return self._refresh()

    def _refresh(self) -> bool:
        own = frozenset(self._own.values())
        borrowed = frozenset(host_prefix(cidr, o) for cidr, ordinals in self._borrowed.items()
                             if cidr not in own for o in ordinals)
        services = frozenset() if self._excluded else self._services
        withheld = withheld_of(frozenset(self._unexported.values()), own, borrowed, services)
        before, self._current = self._current, Announcements(own, borrowed, withheld, services)
        return self._current != before
