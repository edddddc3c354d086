"""IPAM kinds: the IPAMConfig singleton, IPReservations, and the blocks, affinities and handles
IPAM keeps.

IPAMConfig is the user's (`percalectl ipam configure` writes it); the allocator reads it. IPAMBlock,
BlockAffinity and IPAMHandle are percale's own bookkeeping: only the IPAM allocator writes them,
always compare-and-swap on the stored revision, and the allocator, the BGP speaker (which blocks a
node advertises), garbage collection and `percalectl ipam show/check` read them. percalectl lists
them but never writes them (`managed=True`). Shapes follow Calico's `model/block.go`,
`block_affinity.go`, `ipam_handle.go` and `ipam_config.go` (calico.md §1.2–§1.6).
"""

from __future__ import annotations

import ipaddress
import re
import time
from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field, NonNegativeInt, StrictBool, field_validator, model_validator

from percale.api.fields import CIDR, CIDROrIP, Timestamp, network_of, whole_number
from percale.api.ippool import BLOCK_SIZE_RANGE
from percale.api.meta import FieldError, Model, ObjectMeta, Resource, register
from percale.api.node import Node, NodeName

# --------------------------------------------------------------------------------------------
# IPAMConfig

IPAM_CONFIG_NAME = "default"
# maxBlocksPerHost 0 means "not configured"; the allocator then applies this safety cap, as
# Calico's autoAssign does (its docs and code disagree on this; issue #9462).
DEFAULT_MAX_BLOCKS_PER_HOST = 20
MAX_IP_COOLDOWN_SECONDS = 1200


class IPAMConfigSpec(Model):
    strict_affinity: StrictBool = False
    auto_allocate_blocks: StrictBool = True
    # Calico's is an int32; a number, never a boolean (pydantic would read true as 1)
    max_blocks_per_host: Annotated[int, BeforeValidator(whole_number)] = Field(0, ge=0, le=2**31 - 1)
    ip_cooldown_seconds: Annotated[int, BeforeValidator(whole_number)] = Field(0, ge=0, le=MAX_IP_COOLDOWN_SECONDS)

    @property
    def effective_max_blocks_per_host(self) -> int:
        return self.max_blocks_per_host or DEFAULT_MAX_BLOCKS_PER_HOST

    @model_validator(mode="after")
    def _consistent(self) -> IPAMConfigSpec:
        # Calico's SetIPAMConfig refuses both combinations.
        if not self.strict_affinity and not self.auto_allocate_blocks:
            raise FieldError(
                "autoAllocateBlocks", "strictAffinity and autoAllocateBlocks cannot both be false"
            )
        # Calico's SetIPAMConfig refuses this one too.
        if self.max_blocks_per_host > 0 and not self.strict_affinity:
            raise FieldError(
                "maxBlocksPerHost", "maxBlocksPerHost can only be set (above 0) when strictAffinity is true"
            )
        return self


class IPAMConfig(Resource):
    kind: Literal["IPAMConfig"] = "IPAMConfig"
    metadata: ObjectMeta
    spec: IPAMConfigSpec = Field(default_factory=IPAMConfigSpec)

    # A singleton: any other name names nothing (and must not lead to the one config stored).
    name_pattern: ClassVar[re.Pattern[str]] = re.compile(re.escape(IPAM_CONFIG_NAME))
    name_rule: ClassVar[str] = f"IPAMConfig is a singleton; its name must be {IPAM_CONFIG_NAME!r}"


register(IPAMConfig, plural="ipamconfigs", short_names=("ipamconfiguration", "ipamconfigurations"))


# --------------------------------------------------------------------------------------------
# IPReservation


class IPReservationSpec(Model):
    # Addresses IPAM never hands out automatically (each a CIDR, or an address alone); what is
    # already allocated in them stays, and an address given explicitly (assign_ip) is not held
    # back. As Calico's IPReservation.
    reserved_cidrs: list[CIDROrIP] = Field(default_factory=list, alias="reservedCIDRs")


class IPReservation(Resource):
    kind: Literal["IPReservation"] = "IPReservation"
    metadata: ObjectMeta
    spec: IPReservationSpec = Field(default_factory=IPReservationSpec)


register(IPReservation, plural="ipreservations", short_names=("ipreservation", "reservation",
                                                               "reservations"))

# --------------------------------------------------------------------------------------------
# Block and affinity names

# Calico's etcd key form of a CIDR: only "/" becomes "-", so IPv6 names keep their colons
# (`fd00::-122`). Hex digits are lower case because that is how Python and Go print addresses.
_BLOCK_NAME = r"[0-9a-f.:]+-[0-9]{1,3}"


def block_name(cidr: str) -> str:
    """The IPAMBlock name for a block CIDR: `10.0.0.0/26` -> `10.0.0.0-26`."""
    # network_of: IPAM names the block it writes on every allocation.
    return str(network_of(cidr)).replace("/", "-")


def block_cidr(name: str) -> str:
    """The block CIDR an IPAMBlock name stands for: `fd00::-122` -> `fd00::/122`."""
    address, _, prefix = name.rpartition("-")
    try:
        if not prefix.isdigit():
            raise ValueError
        return str(network_of(f"{address}/{prefix}"))  # cached: IPAM names every block it walks
    except ValueError:
        raise ValueError(f"{name!r} is not a block name such as 10.0.0.0-26") from None


def affinity_name(node: str, cidr: str) -> str:
    """The BlockAffinity name for a node's claim on a block: `node1-10.0.0.0-26`."""
    return f"{node}-{block_name(cidr)}"


HOST_AFFINITY_PREFIX = "host:"


def host_affinity(node: str) -> str:
    """An IPAMBlock affinity value for a node-owned block: `host:node1`."""
    return HOST_AFFINITY_PREFIX + node


# --------------------------------------------------------------------------------------------
# IPAMBlock


class AllocationAttribute(Model):
    # Calico writes this key in snake_case even in its CRD; keeping it lets people compare dumps.
    handle_id: str | None = Field(None, alias="handle_id")
    # node, pod, namespace, timestamp for pods; node and type for tunnel addresses.
    secondary: dict[str, str] = Field(default_factory=dict)
    # Set on the entry of addresses released while IPAMConfig's ipCooldownSeconds is above 0:
    # they stay held, by no handle, until the cooldown has passed (ipam/blocks.py).
    released_at: Timestamp | None = Field(None, alias="releasedAt")


class IPAMBlockSpec(Model):
    cidr: CIDR
    # "host:<node>" while a node owns the block; None once the owner released it but addresses
    # remain (the block is deleted only when empty).
    affinity: str | None = None
    # When the affinity was claimed: guards the one-minute "do not reclaim a fresh empty block"
    # window against a node that has claimed it but not yet allocated from it.
    affinity_claim_time: Timestamp | None = None
    # One entry per address (ordinal i is cidr.base + i; network and broadcast addresses are
    # usable, a block is not a subnet): None when free, else an index into attributes.
    allocations: list[NonNegativeInt | None]
    # Free ordinals in FIFO order: allocation pops the front, release appends to the back, so the
    # address free the longest is reused first.
    unallocated: list[NonNegativeInt]
    attributes: list[AllocationAttribute] = Field(default_factory=list)
    # Bumped on every write; sequenceNumberForAllocation records it per ordinal at allocation time
    # so a garbage collector's release of an address that was freed and handed out again in the
    # meantime (ABA) is refused.
    sequence_number: NonNegativeInt = 0
    sequence_number_for_allocation: dict[str, NonNegativeInt] = Field(default_factory=dict)
    # First step of the two-step delete on datastores without compare-and-delete; readers skip it.
    deleted: StrictBool = False

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return network_of(self.cidr)

    @property
    def affinity_node(self) -> str | None:
        """The node that owns the block, or None when the block is unaffine."""
        return self.affinity.removeprefix(HOST_AFFINITY_PREFIX) if self.affinity else None

    @field_validator("affinity")
    @classmethod
    def _host_affinity(cls, affinity: str | None) -> str | None:
        if affinity is None:
            return None
        node = affinity.removeprefix(HOST_AFFINITY_PREFIX)
        if node == affinity:
            raise ValueError(f"affinity {affinity!r} must be host:<node name>")
        if len(node) > 253 or not Node.name_pattern.fullmatch(node):
            raise ValueError(f"affinity {affinity!r} does not name a valid node")
        return affinity

    @model_validator(mode="after")
    def _consistent(self) -> IPAMBlockSpec:
        net = self.network
        low, high = BLOCK_SIZE_RANGE[net.version]
        # Blocks are cut from pools at the pool's blockSize; anything wider is not a block (and an
        # IPv6 /64 would need 2^64 allocation entries).
        if not low <= net.prefixlen <= high:
            raise FieldError(
                "cidr", f"cidr {self.cidr} is not a block: the prefix length must be {low}-{high}"
            )
        size = net.num_addresses
        if len(self.allocations) != size:
            raise FieldError(
                "allocations",
                f"allocations has {len(self.allocations)} entries; block {self.cidr} needs exactly "
                f"{size}, one per address"
            )
        for ordinal, index in enumerate(self.allocations):
            if index is not None and index >= len(self.attributes):
                raise FieldError(
                    "allocations",
                    f"allocations[{ordinal}] points at attributes[{index}], but there are only "
                    f"{len(self.attributes)} attributes"
                )
        listed: set[int] = set()
        for ordinal in self.unallocated:
            if ordinal >= size:
                raise FieldError(
                    "unallocated", f"unallocated ordinal {ordinal} is outside the block (0-{size - 1})"
                )
            if ordinal in listed:
                raise FieldError("unallocated", f"unallocated lists ordinal {ordinal} twice")
            if self.allocations[ordinal] is not None:
                raise FieldError(
                    "unallocated", f"ordinal {ordinal} is allocated but also listed in unallocated"
                )
            listed.add(ordinal)
        # Every free address must be findable, or it leaks silently: allocation only looks here.
        missing = [i for i, index in enumerate(self.allocations) if index is None and i not in listed]
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
            raise FieldError("unallocated", f"free ordinals {shown} are missing from unallocated")
        for key in self.sequence_number_for_allocation:
            if not key.isdigit() or int(key) >= size:
                raise FieldError(
                    "sequenceNumberForAllocation",
                    f"sequenceNumberForAllocation key {key!r} is not an ordinal of the block (0-{size - 1})"
                )
        return self


class IPAMBlock(Resource):
    kind: Literal["IPAMBlock"] = "IPAMBlock"
    metadata: ObjectMeta
    spec: IPAMBlockSpec

    name_pattern: ClassVar[re.Pattern[str]] = re.compile(_BLOCK_NAME)

    @model_validator(mode="after")
    def _named_after_cidr(self) -> IPAMBlock:
        expected = block_name(self.spec.cidr)
        if self.metadata.name != expected:
            raise FieldError(
                "metadata.name",
                f"{self.metadata.name!r} does not match spec.cidr {self.spec.cidr}; "
                f"this block must be named {expected!r}"
            )
        return self

    @classmethod
    def empty(
        cls, cidr: str, affinity: str | None = None, *,
        affinity_claim_time: str | None = None, sequence_number: int | None = None,
    ) -> IPAMBlock:
        """A new block with every address free, as IPAM creates it when a node claims it.

        The sequence number starts at the current time in nanoseconds, as in Calico, so a block that
        is deleted and created again never repeats a number an old release might still carry.
        """
        size = ipaddress.ip_network(cidr).num_addresses
        return cls(
            metadata=ObjectMeta(name=block_name(cidr)),
            spec=IPAMBlockSpec(
                cidr=cidr, affinity=affinity, affinity_claim_time=affinity_claim_time,
                allocations=[None] * size, unallocated=list(range(size)),
                sequence_number=time.time_ns() if sequence_number is None else sequence_number,
            ),
        )


register(IPAMBlock, plural="ipamblocks", managed=True)

# --------------------------------------------------------------------------------------------
# BlockAffinity

AffinityState = Literal["pending", "confirmed", "pendingDeletion"]


class BlockAffinitySpec(Model):
    # pending while the claim is in flight (readers treat it as absent), confirmed once the block
    # is the node's (only then is it advertised), pendingDeletion while it is being released.
    state: AffinityState
    node: NodeName
    # Calico also has "virtual" affinities for LoadBalancer blocks; percale has only host ones.
    type: Literal["host"] = "host"
    cidr: CIDR
    deleted: StrictBool = False


class BlockAffinity(Resource):
    kind: Literal["BlockAffinity"] = "BlockAffinity"
    metadata: ObjectMeta
    spec: BlockAffinitySpec

    name_pattern: ClassVar[re.Pattern[str]] = re.compile(
        f"(?:{Node.name_pattern.pattern})-{_BLOCK_NAME}"
    )

    @model_validator(mode="after")
    def _named_after_node_and_block(self) -> BlockAffinity:
        expected = affinity_name(self.spec.node, self.spec.cidr)
        if self.metadata.name != expected:
            raise FieldError(
                "metadata.name",
                f"{self.metadata.name!r} does not match spec.node and spec.cidr; "
                f"this affinity must be named {expected!r}"
            )
        return self


register(BlockAffinity, plural="blockaffinities", managed=True)

# --------------------------------------------------------------------------------------------
# IPAMHandle


class IPAMHandleSpec(Model):
    # k8s-pod-network.<containerID>, vxlan-tunnel-addr-<node>, ... (calico.md §1.4).
    handle_id: str = Field(alias="handleID")
    # Block CIDR -> how many addresses this handle holds there. Written before the block, so after
    # a crash it can overstate what the blocks hold; `ipam check` reports that, never the reverse.
    block: dict[CIDR, NonNegativeInt] = Field(default_factory=dict)
    deleted: StrictBool = False


class IPAMHandle(Resource):
    kind: Literal["IPAMHandle"] = "IPAMHandle"
    metadata: ObjectMeta
    spec: IPAMHandleSpec

    # Handle IDs keep their case (container IDs, pod names) as in Calico's etcd layout; the name is
    # the handle ID itself, so it must be a safe single key segment.
    name_pattern: ClassVar[re.Pattern[str]] = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?")

    @model_validator(mode="after")
    def _named_after_handle(self) -> IPAMHandle:
        if self.metadata.name != self.spec.handle_id:
            raise FieldError(
                "metadata.name",
                f"{self.metadata.name!r} does not match spec.handleID "
                f"{self.spec.handle_id!r}; a handle is named by its ID"
            )
        return self


register(IPAMHandle, plural="ipamhandles", managed=True)
