"""The IPAM leak check: one read-only scan of the datastore, cross-referenced (calico.md §1.9).

`percalectl ipam check` prints it and writes it as a JSON report; the garbage collector
(`gc.py`) takes its leak candidates from it, and both re-run it just before releasing anything.
It reads through the datastore contract only and never writes.

Reads, in Calico's order: blocks (every allocation), active pools, Nodes (their tunnel
addresses), WorkloadEndpoints (their `ipNetworks`), handles. The lists are not one snapshot:
blocks come first so that an address allocated and wired up while the scan runs is seen in use
rather than leaked, and a handle written just before its block (the allocator's order) may look
leaked. That is why nothing is released on the strength of one scan.

Problems, as Calico counts them, plus one of percale's:
  * allocated but not in use: no WorkloadEndpoint lists the address, and it is not a tunnel
    address that its Node's spec names;
  * in use but not allocated: an address a WorkloadEndpoint or Node uses that no block holds,
    split into "in an active pool" and "in no active pool";
  * handles with no matching addresses (a crash between the handle and the block write, on a
    datastore that writes them in two steps: Kubernetes; etcd writes both in one transaction);
  * handles whose counts overstate what the blocks hold (percale's addition: the same crash on a
    handle that has other addresses, which Calico's check does not see).
Handles that blocks mention but that do not exist are reported and, as in Calico, not counted.

A block whose stored value cannot be read (written by hand or by another tool) is reported as a
problem of its own and judged by no one: the addresses inside it are neither leaked nor
unallocated, and a handle that counts addresses in it is left out of the handle checks, since
what the block holds is unknown. One such block no longer stops the whole check, nor the
garbage collector that runs it.

The same holds for a Node, WorkloadEndpoint, IPPool or IPAMHandle that cannot be read (on
Kubernetes, a Pod or Node annotation edited by hand: anyone who may annotate a pod could
otherwise switch off the cluster's garbage collection). Such an object is named as a problem,
and since what it holds is unknown, an address it may own is judged neither in use nor leaked
but held back (`Report.held_back`), as Calico assumes an allocation valid when its pod
attributes are missing (calico.md §1.9). Skipping the object instead would free addresses it
still uses. What each kind may own:
  * a Node: every address given to it, as its spec may name any of them as a tunnel address,
    and the node still exists (a gone node's addresses go at once in the collector);
  * a WorkloadEndpoint: every workload address given to a pod of its namespace, or to no
    namespace (its own addresses and pod cannot be told apart from its neighbours');
  * an IPAMHandle: the addresses it holds, which a release could not count off it; nor is it
    reported missing;
  * an IPPool owns no address: it only leaves the "in a pool or not" split unsure.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from percale.datastore import Datastore, DatastoreError, Key, KVPair
from percale.ipam import blocks
from percale.api import IPAMBlockSpec, IPPool, Node, WorkloadEndpoint
from percale.api.fields import parse_time
from percale.api.ipam import block_cidr

# The `type` attribute of tunnel addresses (calico.md §1.2); such an address belongs to a Node,
# not to a workload.
TUNNEL_TYPES = frozenset({
    "ipipTunnelAddress", "vxlanTunnelAddress", "vxlanV6TunnelAddress",
    "wireguardTunnelAddress", "wireguardV6TunnelAddress",
})


def _ip(text: str) -> str:
    """An address in canonical form, from an address or a CIDR (a WEP lists 10.0.0.5/32)."""
    return str(ipaddress.ip_interface(text).ip)


def ip_order(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return address.version, int(address)


# --------------------------------------------------------------------------------------------
# What was read


@dataclass(frozen=True)
class Snapshot:
    """Everything the check reads, in the order it read it."""

    blocks: list[IPAMBlockSpec]
    pools: list[IPPool]
    nodes: list[Node]
    endpoints: list[WorkloadEndpoint]
    handles: list[KVPair]
    unreadable_blocks: Mapping[str, str] = field(default_factory=dict)  # CIDR -> why
    read_at: datetime | None = None  # when the blocks were read: releasedAt past it is skew
    # Pools, Nodes, WorkloadEndpoints and handles that cannot be read -> why.
    unreadable: Mapping[Key, str] = field(default_factory=dict)


async def load(store: Datastore) -> Snapshot:
    """Read what the check needs. Blocks first, handles last: see the module docstring."""
    read_at = datetime.now(timezone.utc)
    bad_blocks: dict[Key, str] = {}
    block_specs = [kv.value.spec for kv in await _readable(store, "IPAMBlock", bad_blocks)]
    unreadable: dict[Key, str] = {}
    pools = [kv.value for kv in await _readable(store, "IPPool", unreadable)]
    nodes = [kv.value for kv in await _readable(store, "Node", unreadable)]
    endpoints = [kv.value for kv in await _readable(store, "WorkloadEndpoint", unreadable)]
    handles = await _readable(store, "IPAMHandle", unreadable)
    return Snapshot(
        [b for b in block_specs if not b.deleted], pools, nodes, endpoints,
        [h for h in handles if not h.value.spec.deleted],
        {_cidr_of(key.name): why for key, why in bad_blocks.items()}, read_at, unreadable,
    )


async def _readable(store: Datastore, kind: str, unreadable: dict[Key, str]) -> list[KVPair]:
    """Every object of `kind` whose value can be read; the others go into `unreadable` with
    why. `defer_errors`, or Kubernetes fails the whole list for one bad object."""
    readable = []
    for kv in (await store.list(kind, defer_errors=True)).items:
        try:
            kv.value
        except DatastoreError as err:
            unreadable[kv.key] = str(err)
        else:
            readable.append(kv)
    return readable


def _cidr_of(block_name: str) -> str:
    """The CIDR a block's name spells, or the name itself when it spells none."""
    try:
        return str(ipaddress.ip_network(block_cidr(block_name)))
    except ValueError:
        return block_name


# --------------------------------------------------------------------------------------------
# What it means


@dataclass(frozen=True)
class Owner:
    """Something that uses an address: a workload endpoint or a node's tunnel."""

    kind: Literal["Workload", "Node"]
    name: str  # namespace/name for a workload, the node's name for a node

    def __str__(self) -> str:
        return f"{self.kind}({self.name})"


@dataclass(frozen=True)
class AllocationInfo:
    """One allocated address, cross-referenced with its users."""

    ip: str
    block: str
    handle: str | None
    sequence_number: int | None
    attributes: Mapping[str, str]
    # The node the address was given to (its `node` attribute), else the block's owner.
    node: str | None
    # The node owning the block, None when the block is unaffine.
    block_node: str | None
    owners: tuple[Owner, ...]
    in_use: bool
    # Not in use as far as the readable objects tell, but one that may own it cannot be read:
    # held back, neither in use nor leaked (see the module docstring).
    unreadable_owner: Key | None = None

    @property
    def type(self) -> str | None:
        return self.attributes.get("type")

    @property
    def borrowed(self) -> bool:
        """Given to a node from a block that node does not own (Calico's definition)."""
        return (self.node or "") != (self.block_node or "")

    def attr_string(self) -> str:
        """Calico's `Main:<handle> Extra:k=v,...` rendering of the allocation's attributes."""
        extra = ",".join(f"{k}={self.attributes[k]}" for k in sorted(self.attributes))
        return f"Main:{self.handle or '<none>'} Extra:{extra}"


@dataclass(frozen=True)
class HandleInfo:
    """An IPAMHandle next to what the blocks really hold for it."""

    id: str
    uid: str | None
    revision: str
    recorded: Mapping[str, int]  # the handle's own counts: block CIDR -> addresses
    actual: Mapping[str, int]    # counted in the blocks

    @property
    def overstated(self) -> dict[str, tuple[int, int]]:
        """Blocks where the handle claims more than the block holds: cidr -> (recorded, actual)."""
        return {cidr: (n, self.actual.get(cidr, 0)) for cidr, n in self.recorded.items()
                if n > self.actual.get(cidr, 0)}


@dataclass
class Report:
    blocks: list[IPAMBlockSpec]
    allocations: dict[str, list[AllocationInfo]]   # ip -> allocations, in address order
    active_pools: list[str]
    node_ips: list[tuple[str, Owner]]              # tunnel addresses named by Node specs
    workload_ips: list[tuple[str, Owner]]          # addresses listed by WorkloadEndpoints
    in_use: dict[str, list[Owner]]                 # every used address -> its users
    nodes: frozenset[str]
    handles: dict[str, HandleInfo]
    leaked: list[AllocationInfo] = field(default_factory=list)
    not_in_pool: list[tuple[str, list[Owner]]] = field(default_factory=list)
    not_allocated: list[tuple[str, list[Owner]]] = field(default_factory=list)
    leaked_handles: list[HandleInfo] = field(default_factory=list)
    overstated_handles: list[HandleInfo] = field(default_factory=list)
    missing_handles: list[str] = field(default_factory=list)
    unreadable_blocks: Mapping[str, str] = field(default_factory=dict)  # CIDR -> why
    unreadable: Mapping[Key, str] = field(default_factory=dict)  # other objects -> why
    held_back: list[AllocationInfo] = field(default_factory=list)  # their owner is unreadable
    cooling: int = 0  # addresses released and waiting out ipCooldownSeconds
    released_in_future: list[str] = field(default_factory=list)  # blocks: clock skew

    @property
    def allocation_count(self) -> int:
        return sum(len(a) for a in self.allocations.values())

    @property
    def leaked_ips(self) -> list[str]:
        return list(dict.fromkeys(a.ip for a in self.leaked))

    @property
    def handles_with_matches(self) -> int:
        return sum(1 for h in self.handles.values() if h.actual)

    @property
    def problems(self) -> int:
        """Calico's count (leaked addresses, both kinds of unallocated use, handles with no
        addresses) plus handles that overstate and objects that cannot be read. Missing
        handles are shown but not counted, nor the addresses held back (their unreadable owner
        is the problem)."""
        return (len(self.leaked_ips) + len(self.not_in_pool) + len(self.not_allocated)
                + len(self.leaked_handles) + len(self.overstated_handles)
                + len(self.unreadable_blocks) + len(self.unreadable)
                + len(self.released_in_future))

    def allocations_by_node(self) -> list[tuple[str, int]]:
        """Nodes by number of allocations, most first (ties by name)."""
        counts = Counter(a.node or "" for allocs in self.allocations.values() for a in allocs)
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _uses(allocation_type: str | None, node: str | None, owners: list[Owner]) -> bool:
    """Whether an allocation is in use. A tunnel address is its node's only while that node
    exists and its spec names the address; anything else is in use when anyone lists it."""
    if allocation_type in TUNNEL_TYPES and node:
        return any(o.kind == "Workload" or o.name == node for o in owners)
    return bool(owners)


class _UnreadableOwners:
    """Which unreadable object, if any, may own an allocation (the module docstring says why
    each kind owns what it does)."""

    def __init__(self, unreadable: Iterable[Key]):
        self.nodes: dict[str, Key] = {}
        self.namespaces: dict[str | None, Key] = {}
        self.handles: dict[str, Key] = {}
        for key in sorted(unreadable, key=str):
            if key.kind == "Node":
                self.nodes.setdefault(key.name, key)
            elif key.kind == "WorkloadEndpoint":
                self.namespaces.setdefault(key.namespace, key)
            elif key.kind == "IPAMHandle":
                self.handles.setdefault(key.name, key)

    def of(self, node: str | None, handle: str | None, attrs: Mapping[str, str]) -> Key | None:
        found = self.nodes.get(node or "") or self.handles.get(handle or "")
        if found is None and self.namespaces and attrs.get("type") not in TUNNEL_TYPES:
            namespace = attrs.get("namespace")
            # An address given to no namespace may be any endpoint's: the first one names it.
            found = (self.namespaces.get(namespace) if namespace
                     else next(iter(self.namespaces.values())))
        return found


def _node_ips(node: Node) -> list[str]:
    spec = node.spec
    found = [spec.ipv4_vxlan_tunnel_addr, spec.ipv6_vxlan_tunnel_addr,
             spec.bgp.ipv4_ipip_tunnel_addr if spec.bgp else None]
    return [_ip(a) for a in found if a]


def analyse(snapshot: Snapshot) -> Report:
    """Cross-reference a snapshot. Pure: the same snapshot always gives the same report."""
    pools = [p for p in snapshot.pools if not p.spec.disabled]
    node_ips = [(ip, Owner("Node", n.metadata.name)) for n in snapshot.nodes for ip in _node_ips(n)]
    workload_ips = [
        (_ip(net), Owner("Workload", f"{w.metadata.namespace}/{w.metadata.name}"))
        for w in snapshot.endpoints for net in w.spec.ip_networks
    ]
    in_use: dict[str, list[Owner]] = defaultdict(list)
    for ip, owner in node_ips + workload_ips:
        in_use[ip].append(owner)

    unreadable_owners = _UnreadableOwners(snapshot.unreadable)
    allocations: dict[str, list[AllocationInfo]] = defaultdict(list)
    actual: dict[str, Counter[str]] = defaultdict(Counter)
    cooling = 0
    released_ahead: set[str] = set()
    for spec in sorted(snapshot.blocks, key=lambda b: ip_order(str(b.network.network_address))):
        for ordinal, slot in enumerate(spec.allocations):
            if slot is None:
                continue
            attribute = spec.attributes[slot]
            if attribute.released_at is not None:
                cooling += 1  # released, waiting out ipCooldownSeconds: no one's, and no leak
                if snapshot.read_at and parse_time(attribute.released_at) > snapshot.read_at:
                    # Released "later" than now: the releasing node's clock runs ahead, and
                    # the address cools that much longer (calicoctl flags it too).
                    released_ahead.add(spec.cidr)
                continue
            attrs = dict(attribute.secondary)
            ip = str(blocks.address(spec, ordinal))
            node = attrs.get("node") or spec.affinity_node
            owners = in_use.get(ip, [])
            used = _uses(attrs.get("type"), node, owners)
            allocations[ip].append(AllocationInfo(
                ip=ip, block=spec.cidr, handle=attribute.handle_id,
                sequence_number=spec.sequence_number_for_allocation.get(str(ordinal)),
                attributes=attrs, node=node, block_node=spec.affinity_node,
                owners=tuple(owners), in_use=used,
                unreadable_owner=None if used else unreadable_owners.of(
                    node, attribute.handle_id, attrs),
            ))
            if attribute.handle_id is not None:
                actual[attribute.handle_id][spec.cidr] += 1
    allocations = dict(sorted(allocations.items(), key=lambda kv: ip_order(kv[0])))

    handles = {
        kv.value.spec.handle_id: HandleInfo(
            kv.value.spec.handle_id, kv.value.metadata.uid, kv.revision,
            dict(kv.value.spec.block), dict(actual.get(kv.value.spec.handle_id, {})),
        )
        for kv in snapshot.handles
    }
    report = Report(
        blocks=snapshot.blocks, allocations=allocations,
        active_pools=[p.spec.cidr for p in pools], node_ips=node_ips, workload_ips=workload_ips,
        in_use=dict(sorted(in_use.items(), key=lambda kv: ip_order(kv[0]))),
        # A Node that cannot be read still exists: the collector must not take it for gone.
        nodes=frozenset(n.metadata.name for n in snapshot.nodes).union(unreadable_owners.nodes),
        handles=handles, unreadable_blocks=dict(snapshot.unreadable_blocks),
        unreadable=dict(sorted(snapshot.unreadable.items(), key=lambda kv: str(kv[0]))),
        cooling=cooling,
        released_in_future=sorted(released_ahead, key=lambda c: ip_order(c.split("/")[0])),
    )
    unknown = _networks(snapshot.unreadable_blocks)
    unused = [a for allocs in allocations.values() for a in allocs if not a.in_use]
    report.leaked = [a for a in unused if a.unreadable_owner is None]
    report.held_back = [a for a in unused if a.unreadable_owner is not None]
    for ip, owners in report.in_use.items():
        if ip in allocations:
            continue
        address = ipaddress.ip_address(ip)
        if any(address in net for net in unknown):
            continue  # perhaps held by the block that cannot be read
        if any(address in p.spec.network for p in pools):
            report.not_allocated.append((ip, owners))
        else:
            report.not_in_pool.append((ip, owners))
    for handle in sorted(handles.values(), key=lambda h: h.id):
        if set(handle.recorded) & set(snapshot.unreadable_blocks):
            continue  # counts addresses in a block that cannot be read: nothing to compare with
        if not handle.actual:
            report.leaked_handles.append(handle)
        elif handle.overstated:
            report.overstated_handles.append(handle)
    report.missing_handles = sorted(set(actual) - set(handles) - set(unreadable_owners.handles))
    return report


def _networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    found = []
    for cidr in cidrs:
        try:
            found.append(ipaddress.ip_network(cidr))
        except ValueError:
            pass  # a name that spells no CIDR covers no address
    return found


async def check(store: Datastore) -> Report:
    """Scan the datastore now."""
    return analyse(await load(store))


# --------------------------------------------------------------------------------------------
# The JSON report (`percalectl ipam check -o report.json`)
#
# Calico's shape (calico.md §1.9): {version, allocations{ip: [{ip, handle, sequenceNumber, pod,
# namespace, node, type, creationTimestamp, inUse, borrowed, owners}]}, leakedHandles[{ID, UID,
# Revision}]}. percale drops the cluster GUID / datastore-lock fields (it has neither; a report
# from another cluster cannot match a block's sequence numbers, which start at the block's
# creation time in ns) and adds: `generatedAt`, each allocation's `block`, and for handles their
# counts (`block`, as in IPAMHandle, and `inBlocks`, what the blocks held), plus
# `overstatedHandles`; where objects could not be read, `unreadable` (object -> why) and, on an
# allocation one of them may own, `heldBack` (the object): such an allocation is no leak to
# release. The release re-checks against these before touching anything.

REPORT_FIELDS_OMITTED_WHEN_EMPTY = (
    "handle", "pod", "namespace", "node", "type", "creationTimestamp", "heldBack",
)


def _allocation_document(a: AllocationInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ip": a.ip, "block": a.block, "handle": a.handle, "sequenceNumber": a.sequence_number,
        "pod": a.attributes.get("pod"), "namespace": a.attributes.get("namespace"),
        "node": a.node, "type": a.type, "creationTimestamp": a.attributes.get("timestamp"),
        "inUse": a.in_use, "borrowed": a.borrowed, "owners": [str(o) for o in a.owners],
        "heldBack": str(a.unreadable_owner) if a.unreadable_owner else None,
    }
    return {k: v for k, v in doc.items()
            if not (k in REPORT_FIELDS_OMITTED_WHEN_EMPTY and not v)
            and not (k == "sequenceNumber" and v is None)}


def _handle_document(h: HandleInfo) -> dict[str, Any]:
    return {"ID": h.id, "UID": h.uid, "Revision": h.revision,
            "block": dict(h.recorded), "inBlocks": dict(h.actual)}


def report_document(report: Report, *, version: str, generated_at: str) -> dict[str, Any]:
    document = {
        "version": version,
        "generatedAt": generated_at,
        "allocations": {ip: [_allocation_document(a) for a in allocs]
                        for ip, allocs in report.allocations.items()},
        "leakedHandles": [_handle_document(h) for h in report.leaked_handles],
        "overstatedHandles": [_handle_document(h) for h in report.overstated_handles],
    }
    if report.unreadable:
        document["unreadable"] = {str(key): why for key, why in report.unreadable.items()}
    return document


class _ReportModel(BaseModel):
    # Unknown fields are ignored so that a Calico report's extra metadata does not stop a read.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ReportAllocation(_ReportModel):
    ip: str
    block: str | None = None
    handle: str | None = None
    sequence_number: int | None = Field(None, alias="sequenceNumber")
    in_use: bool = Field(alias="inUse")
    held_back: str | None = Field(None, alias="heldBack")


class ReportHandle(_ReportModel):
    id: str = Field(alias="ID")
    uid: str | None = Field(None, alias="UID")
    revision: str = Field(alias="Revision")
    block: dict[str, int] = Field(default_factory=dict)
    in_blocks: dict[str, int] = Field(default_factory=dict, alias="inBlocks")

    def as_info(self) -> HandleInfo:
        return HandleInfo(self.id, self.uid, self.revision, dict(self.block), dict(self.in_blocks))


class ReportFile(_ReportModel):
    version: str
    generated_at: str | None = Field(None, alias="generatedAt")
    allocations: dict[str, list[ReportAllocation]]
    leaked_handles: list[ReportHandle] | None = Field(None, alias="leakedHandles")
    overstated_handles: list[ReportHandle] | None = Field(None, alias="overstatedHandles")

    def leaks(self) -> list[ReportAllocation]:
        return [a for allocs in self.allocations.values() for a in allocs
                if not a.in_use and not a.held_back]


class ReportError(ValueError):
    """A report file that cannot be used; the message says which field and why."""


def parse_report(document: object) -> ReportFile:
    try:
        parsed = ReportFile.model_validate(document)
        for allocs in parsed.allocations.values():
            for a in allocs:
                ipaddress.ip_address(a.ip)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise ReportError(f"{where}: {first['msg']}") from None
    except ValueError as err:
        raise ReportError(str(err)) from None
    return parsed
