"""The IPAM allocator: who gets which address, written only with compare-and-swap.

Pools, as Calico's determinePools: enabled, of the family and use, selecting the node
(pools.usable); then those the request names, whatever their assignmentMode, or, naming none,
the Automatic ones whose namespaceSelector selects its namespace (pools.automatic). Every step
below keeps to those pools: own blocks, new blocks and borrowing.

Order of allocation, as Calico's autoAssign:
  1. the node's own (confirmed-affinity) blocks in the usable pools;
  2. a new block, claimed in two phases (affinity pending -> block created -> affinity
     confirmed; on etcd a block nobody has in one transaction, affinity confirmed and block
     together), searched in an order seeded by the node's name; an empty block of another node
     is reclaimed only when its claim is over a minute old;
  3. borrowing from any block with space, unless strictAffinity.

Invariants:
  * Every write is a compare-and-swap on the revision just read; only Conflict is retried, at most
    `retries` times per loop. Any other datastore error goes to the caller.
  * A handle is incremented before its block is written and decremented after; a crash between
    the two leaves a handle that overstates, never an address without a handle. On a datastore
    with multi-key transactions (etcd, `writes_together`) the handle and the block are written in
    one transaction instead, both compared: there is no "between", and one round trip instead
    of two. Kubernetes writes one object per request and keeps the two steps.
  * Allocations for one node are serialised in this process (a lock per node), so conflicts come
    only from other nodes (other processes); Calico's CNI needed a host file lock for the same.
  * A request is all-or-nothing: if it cannot be met in full, what it took is released again.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pydantic import ValidationError

from percale.datastore import (
    AlreadyExists, Conflict, Datastore, DatastoreError, DatastoreUnavailable, Key, KVPair,
    NotFound, TransactionConflict,
)
from percale.datastore.contract import Create, Delete, Update, WriteTogether, writes_together
from percale.ipam import blocks
from percale.ipam.errors import (
    AddressInUse,
    BlockLimitReached,
    IPAMError,
    NoPools,
    NotInPool,
    PoolsExhausted,
    StrictAffinityExhausted,
    TooManyConflicts,
)
from percale.ipam.reservations import Reservations
from percale.ipam.pools import (
    OtherSizeBlocks, automatic, block_of, candidate_blocks, pool_of, seeded_position,
    selects_namespace, usable,
)
from percale.api import (
    BlockAffinity,
    IPAMBlock,
    IPAMBlockSpec,
    IPAMConfig,
    IPAMConfigSpec,
    IPAMHandle,
    IPPool,
    ObjectMeta,
)
from percale.api.fields import format_time, network_of, parse_time
from percale.api.meta import InvalidResource, Problem, validation_problems
from percale.api import selector
from percale.api.policy import namespace_profile_name
from percale.api.policy import namespace_labels as labels_of_namespace
from percale.api.ipam import (
    DEFAULT_MAX_BLOCKS_PER_HOST,
    BlockAffinitySpec,
    IPAMHandleSpec,
    affinity_name,
    block_cidr,
    block_name,
    host_affinity,
)

log = logging.getLogger(__name__)

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# An empty block another node claimed less than this long ago may be about to get its first
# address; reclaiming it would race that node (Calico's EmptyBlockMinReclaimAge).
EMPTY_BLOCK_MIN_RECLAIM_AGE = timedelta(minutes=1)
DATASTORE_RETRIES = 100
# What get_config answers while no IPAMConfig exists (every allocation asks). Shared, like every
# value read from the datastore: never mutated.
_DEFAULT_CONFIG = IPAMConfigSpec()


def tunnel_handle(node: str, version: int = 4) -> str:
    """The handle of a node's VXLAN tunnel address, as Calico names it."""
    return f"vxlan-tunnel-addr-{node}" if version == 4 else f"vxlan-v6-tunnel-addr-{node}"


@dataclass(frozen=True)
class Assignment:
    """Addresses given out by one request, each with its block's prefix (10.0.0.5/26); the CNI
    plugin narrows them to /32 and /128."""

    ipv4: list[ipaddress.IPv4Interface] = field(default_factory=list)
    ipv6: list[ipaddress.IPv6Interface] = field(default_factory=list)


@dataclass
class ReleaseResult:
    released: list[str] = field(default_factory=list)
    # Free already, or in no block: releasing them again is not an error.
    unallocated: list[str] = field(default_factory=list)
    # Refused because the address was freed and handed out again since its sequence number was read.
    stale: list[str] = field(default_factory=list)

    def merge(self, other: ReleaseResult) -> None:
        self.released += other.released
        self.unallocated += other.unallocated
        self.stale += other.stale


@dataclass(frozen=True)
class Allocation:
    """What the datastore says about one allocated address."""

    address: str
    block: str
    handle_id: str | None
    attributes: dict[str, str]
    sequence_number: int | None
    block_affinity: str | None


@dataclass(frozen=True)
class Holding:
    """A handle as read, and the allocations its blocks give it: what a CNI DEL decides on
    before it releases, without reading the handle a second time."""

    stored: KVPair
    allocations: list[Allocation]


def _now() -> datetime:
    return datetime.now(timezone.utc)


MAX_HANDLES_PER_TXN = 100


@dataclass
class _Handle:
    """One request's handle, as far as it knows it: `stored` is its last value seen (None:
    believed absent, as a new pod's handle is), so the handle is written in the same transaction
    as a block without being read first. A wrong belief costs a TransactionConflict, which says
    what is stored."""

    id: str
    stored: KVPair | None = None

    def write_adding(self, cidr: str, count: int) -> Create | Update:
        """The write that adds `count` addresses in `cidr` to the handle as it is believed to be."""
        if self.stored is None:
            return Create(IPAMHandle(metadata=ObjectMeta(name=self.id),
                                     spec=IPAMHandleSpec(handle_id=self.id, block={cidr: count})))
        value = self.stored.value
        counts = dict(value.spec.block)
        counts[cidr] = counts.get(cidr, 0) + count
        spec = value.spec.model_copy(update={"block": counts})
        return Update(value.model_copy(update={"spec": spec}), self.stored.revision)

    def write_removing(self, cidr: str, count: int) -> Update | Delete | None:
        """The write that takes `count` addresses in `cidr` off the handle (deleting it at zero,
        as _add_to_handle does); None when it is believed absent: nothing to take off."""
        if self.stored is None:
            return None
        value = self.stored.value
        counts = dict(value.spec.block)
        counts[cidr] = counts.get(cidr, 0) - count
        if counts[cidr] <= 0:
            del counts[cidr]
        if not counts:
            return Delete(self.stored.key, self.stored.revision)
        spec = value.spec.model_copy(update={"block": counts})
        return Update(value.model_copy(update={"spec": spec}), self.stored.revision)


@dataclass(frozen=True)
class _Terms:
    """What an automatic assignment keeps to besides the pools: the IP cooldown and the
    IPReservations, read once per request."""

    cooldown_seconds: int
    reservations: Reservations


class IPAM:
    def __init__(
        self, store: Datastore, *, retries: int = DATASTORE_RETRIES,
        clock: Callable[[], datetime] = _now, authority: Datastore | None = None,
    ):
        """`store` may answer reads from a view that lags the datastore by a moment (the node
        agent's CachedDatastore): every decision read there is written with compare-and-swap,
        so a stale read costs a conflict, never a wrong allocation. `authority` is the store
        itself, for the reads that must not be stale (_holds_affinity, _release_in_block)."""
        self.store = store
        self.authority = authority or store
        self.retries = retries
        self.clock = clock
        self._last_block: dict[str, str] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Per block CIDR: this process's releases in one block take turns (_release_in_block).
        self._release_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Conflicts seen since creation: the benchmark's "conflicts per allocation".
        self.conflicts = 0

    # -- configuration -------------------------------------------------------------------------

    async def get_config(self) -> IPAMConfigSpec:
        try:
            return (await self.store.get(Key("IPAMConfig", "default"))).value.spec
        except NotFound:
            return _DEFAULT_CONFIG

    async def set_config(self, **changes: object) -> IPAMConfigSpec:
        """Change IPAMConfig fields (strict_affinity=..., ...), creating it with defaults first.
        Raises InvalidResource, naming the field, for a combination IPAMConfig forbids."""
        def validated(base: IPAMConfigSpec) -> IPAMConfigSpec:
            try:
                return IPAMConfigSpec.model_validate({**base.model_dump(), **changes})
            except ValidationError as err:
                problems = [Problem(f"spec.{p.field}", p.reason) for p in validation_problems(err)]
                raise InvalidResource("IPAMConfig", "default", problems) from None

        for _ in range(self.retries):
            try:
                current = await self.store.get(Key("IPAMConfig", "default"))
            except NotFound:
                spec = validated(IPAMConfigSpec())
                try:
                    await self.store.create(IPAMConfig(metadata=ObjectMeta(name="default"), spec=spec))
                    return spec
                except AlreadyExists:
                    continue
            spec = validated(current.value.spec)
            try:
                await self.store.update(current.value.model_copy(update={"spec": spec}),
                                        revision=current.revision)
                return spec
            except Conflict:
                self.conflicts += 1
        raise TooManyConflicts()

    # -- auto-assign ---------------------------------------------------------------------------

    async def auto_assign(
        self, node: str, *, handle_id: str, num4: int = 0, num6: int = 0,
        attrs: Mapping[str, str] | None = None, ipv4_pools: list[str] | None = None,
        ipv6_pools: list[str] | None = None, use: str = "Workload", max_blocks_per_host: int = 0,
        namespace: str | None = None,
    ) -> Assignment:
        """Give `handle_id` num4 IPv4 and num6 IPv6 addresses for `node`, or nothing at all.

        `attrs` (pod, namespace, ...) are stored with each address, with the node and a timestamp
        added. Pools may be named (by name or CIDR), Manual ones included; a request that names
        none takes only Automatic pools whose namespaceSelector, if set, selects `namespace` (the
        pod's, by the labels of its Profile kns.<namespace>; None: matched as no labels). Raises
        an IPAMError when the request cannot be met in full; then no address is left allocated.
        """
        secondary = {"node": node, "timestamp": format_time(self.clock()),
                     **(attrs or {})}
        handle = _Handle(handle_id)
        async with self._locks[node]:
            if self.authority is self.store:
                # Four reads from the datastore itself: one round trip's wait, not four.
                config, pools, labels, reservations = await asyncio.gather(
                    self.get_config(), self.pools(), self._node_labels(node), self._reservations())
            else:
                # A view answers from memory without waiting, and the tasks of a gather cost a
                # tenth of an allocation's CPU there.
                config = await self.get_config()
                pools = await self.pools()
                labels = await self._node_labels(node)
                reservations = await self._reservations()
            terms = _Terms(config.ip_cooldown_seconds, reservations)
            if self.authority is not self.store and any(
                    num > 0 and not usable(pools, version, labels, use)
                    for version, num in ((4, num4), (6, num6))):
                # The view may lag a pool created a moment ago (a pod's ADD right after it):
                # ask the store itself before answering that there is none.
                pools = await read_pools(self.authority, _leave_out_pool)
            got: list[Interface] = []
            namespace_labels: Mapping[str, str] | None = None  # read once, and only if a pool asks
            try:
                for version, num, requested in ((4, num4, ipv4_pools), (6, num6, ipv6_pools)):
                    if num > 0:
                        candidates = usable(pools, version, labels, use)
                        if (not requested and namespace_labels is None
                                and any(p.spec.namespace_selector for p in candidates)):
                            namespace_labels = await self._namespace_labels(namespace)
                        eligible = _requested(candidates, requested, node, version,
                                              namespace, namespace_labels or {})
                        got += await self._assign_family(
                            node, version, num, handle, secondary, eligible, config,
                            max_blocks_per_host, pools, labels, terms,
                        )
            except BaseException:
                # All-or-nothing: a dual-stack request that fails on IPv6 gives back its IPv4.
                if got:
                    await asyncio.shield(self.release_ips([str(i.ip) for i in got], cooldown=False))
                raise
        return Assignment(
            ipv4=[i for i in got if i.version == 4],  # type: ignore[misc]
            ipv6=[i for i in got if i.version == 6],  # type: ignore[misc]
        )

    async def _assign_family(
        self, node: str, version: int, num: int, handle: _Handle, secondary: dict[str, str],
        pools: list[IPPool], config: IPAMConfigSpec, max_blocks_per_host: int,
        all_pools: list[IPPool], labels: Mapping[str, str], terms: _Terms,
    ) -> list[Interface]:
        got: list[Interface] = []
        try:
            pool_cidrs = tuple(p.spec.cidr for p in pools)
            owned = await self._owned(node)
            mine = [c for c in owned if _block_in_pools(c, pool_cidrs)]
            if len(mine) < len(owned):
                await self._give_back_unselected(node, version, owned, all_pools, labels)
            # The block that served this node last most likely has room still.
            mine.sort(key=lambda c: c != self._last_block.get(node))
            for cidr in mine:
                if len(got) == num:
                    break
                taken = await self._assign_from_block(cidr, num - len(got), handle, secondary, node,
                                                      terms)
                if taken:
                    self._last_block[node] = cidr
                got += taken

            limits = [n for n in (config.max_blocks_per_host, max_blocks_per_host) if n > 0]
            cap = min(limits) if limits else DEFAULT_MAX_BLOCKS_PER_HOST
            at_limit = False
            while len(got) < num and config.auto_allocate_blocks:
                # The cap counts this family's blocks in the pools that may serve the request, as
                # Calico's autoAssign does: a dual-stack node's IPv6 blocks do not use up its IPv4
                # allowance.
                if len(mine) >= cap:
                    at_limit = True
                    break
                cidr = await self._claim_new_block(node, pools, terms.reservations)
                if cidr is None:
                    break
                mine.append(cidr)
                self._last_block[node] = cidr
                got += await self._assign_from_block(cidr, num - len(got), handle, secondary, node,
                                                     terms)

            if at_limit:
                # Calico's autoAssign stops here, strict affinity or not (ErrBlockLimit): the cap
                # is a safeguard against one node taking the pool, which borrowing would defeat.
                raise BlockLimitReached(cap)
            if len(got) < num and config.strict_affinity:
                raise StrictAffinityExhausted()
            if len(got) < num:
                got += await self._borrow(node, pools, num - len(got), handle, secondary, terms)
            if len(got) < num:
                raise PoolsExhausted([p.spec.cidr for p in pools])
            return got
        except BaseException:
            if got:
                await asyncio.shield(self.release_ips([str(i.ip) for i in got], cooldown=False))
            raise

    async def _assign_from_block(
        self, cidr: str, want: int, handle: _Handle, secondary: Mapping[str, str],
        owner: str | None, terms: _Terms,
    ) -> list[Interface]:
        """Up to `want` addresses from one block. With `owner`, only while the block is still
        that node's; a confirmed affinity whose block is missing (a claim cut short) gets its
        block created now. Addresses whose cooldown has passed are freed first."""
        key = Key("IPAMBlock", block_name(cidr))
        current: KVPair | None = None
        for _ in range(self.retries):
            if current is None:
                try:
                    current = await self.store.get(key)
                except NotFound:
                    # Recreate the block only while the owner's affinity still stands: if the
                    # block was released meanwhile, creating it would leave a block no affinity
                    # claims.
                    if owner is None or not await self._holds_affinity(owner, cidr):
                        return []
                    try:
                        await self.store.create(self._new_block(cidr, owner))
                    except AlreadyExists:
                        pass
                    continue
            spec = _readable(current)
            if spec is None or spec.deleted or (
                    owner is not None and spec.affinity != host_affinity(owner)):
                return []
            spec = blocks.collect_cooled(spec, terms.cooldown_seconds, self.clock())
            reserved = terms.reservations.ordinals(spec.network)
            count = min(want, blocks.free_count(spec, reserved))
            if count == 0:
                return []
            new_spec, taken = blocks.assign(spec, count, handle.id, secondary, reserved=reserved)
            new_block = current.value.model_copy(update={"spec": new_spec})
            write_together = writes_together(self.store)
            if write_together is not None:
                written, current = await self._write_with_handle(
                    write_together, new_block, current, handle, cidr, count)
                if not written:
                    continue
            else:
                await self._add_to_handle(handle.id, cidr, count)
                try:
                    await self.store.update(new_block, revision=current.revision)
                except Conflict as err:
                    # Someone wrote the block first; the conflict carries what is stored now.
                    self.conflicts += 1
                    await self._add_to_handle(handle.id, cidr, -count)
                    current = err.current
                    continue
                except NotFound:
                    # Released and deleted under us: look again.
                    await self._add_to_handle(handle.id, cidr, -count)
                    current = None
                    continue
                except BaseException:
                    await asyncio.shield(self._add_to_handle(handle.id, cidr, -count))
                    raise
            return [blocks.interface(new_spec, o) for o in taken]
        raise TooManyConflicts()

    async def _write_with_handle(
        self, write_together: WriteTogether, new_block: IPAMBlock, block: KVPair,
        handle: _Handle, cidr: str, count: int,
    ) -> tuple[bool, KVPair | None]:
        """Write `new_block` (compared with `block`, as read) and the handle's count for it in one
        transaction. Returns whether it was written, and the block as it stands now (None: gone).

        Nothing is written unless both compares hold, so no undo is needed on failure, and a
        crash or cancellation leaves both written or neither: an address is never held without
        its handle counting it, and a handle never overstates."""
        try:
            handle_now, block_now = await write_together([
                handle.write_adding(cidr, count), Update(new_block, block.revision)])
        except TransactionConflict as err:
            handle.stored = err.current[Key("IPAMHandle", handle.id)]
            block_key = Key.of(new_block)
            if block_key not in err.failed:
                return False, block  # only the handle was not as believed: same block, once more
            self.conflicts += 1  # someone wrote the block first
            return False, err.current[block_key]
        handle.stored = handle_now
        return True, block_now

    async def _holds_affinity(self, node: str, cidr: str) -> bool:
        # From the store itself, not a view: the answer decides whether a missing block is
        # created again, a write no compare-and-swap guards. A view a moment behind a release
        # (percale-controllers giving an empty block back) recreated the block without its
        # affinity, and its addresses were handed out from a block no node announced.
        try:
            affinity = await self.authority.get(Key("BlockAffinity", affinity_name(node, cidr)))
        except NotFound:
            return False
        return affinity.value.spec.state == "confirmed"

    def _new_block(self, cidr: str, node: str) -> IPAMBlock:
        return IPAMBlock.empty(
            cidr, affinity=host_affinity(node),
            affinity_claim_time=format_time(self.clock()),
        )

    # -- claiming blocks -----------------------------------------------------------------------

    async def _claim_new_block(
        self, node: str, pools: list[IPPool], reservations: Reservations,
    ) -> str | None:
        """Find a block for `node` and claim it; its CIDR, or None when every block is taken
        (or wholly reserved)."""
        # By name, which is the CIDR: a view decodes a block's value when first read, and only
        # the blocks on this node's walk need reading (decoding every block of the cluster
        # made a claim cost 20 ms with 200 blocks).
        existing = _by_cidr((await self.store.list("IPAMBlock", defer_errors=True)).items)
        reclaimable: list[KVPair] = []
        for pool in pools:
            other_size: OtherSizeBlocks | None = None  # built when first needed: rarely is
            seen = 0
            covered = (reservations.covered_blocks(pool.spec.network, pool.spec.block_size)
                       if reservations else ())
            for net in candidate_blocks(pool, node, covered):
                found = existing.get(str(net))
                if found is None:
                    if other_size is None:
                        other_size = OtherSizeBlocks(existing, pool)
                    if other_size.overlap(net):
                        continue
                    if await self.claim_affinity(node, str(net)):
                        return str(net)
                    continue
                spec = _readable(found)
                if spec is None:
                    pass  # someone's block, as far as anyone can tell: never cut over it
                elif spec.affinity == host_affinity(node) and blocks.free_count(
                        spec, reservations.ordinals(spec.network)):
                    # Ours already (a claim cut short before its affinity was confirmed).
                    if await self.claim_affinity(node, str(net)):
                        return str(net)
                elif (spec.affinity and blocks.is_empty(spec)
                      and self._old_claim(spec.affinity_claim_time)
                      and blocks.free_count(spec, reservations.ordinals(spec.network))):
                    # Not one reserved whole: taking it from its node would give this one nothing.
                    reclaimable.append(found)
                # Every block past the existing ones is free, so the walk ends after at most
                # len(existing) + 1 steps even in a pool of 2^74 blocks.
                seen += 1
                if seen > len(existing):
                    break
        for found in reclaimable:
            spec = found.value.spec
            released = await self._release_block_affinity(
                spec.affinity_node or "", spec.cidr, require_empty=True,
                required_sequence=spec.sequence_number,
            )
            if released and await self.claim_affinity(node, spec.cidr):
                return spec.cidr
        return None

    def _old_claim(self, claim_time: str | None) -> bool:
        if claim_time is None:
            return True
        return self.clock() - parse_time(claim_time) >= EMPTY_BLOCK_MIN_RECLAIM_AGE

    async def claim_affinity(self, node: str, cidr: str) -> bool:
        """Make `cidr` node's block: affinity pending, block created, affinity confirmed.

        Readers treat a pending affinity as absent, so a claim cut short at any step claims
        nothing; the same node finishing the claim later is safe. False when another node owns
        the block.

        Where the datastore writes several keys at once (etcd), a block nobody has is claimed
        in one transaction instead: the confirmed affinity and the block, both or neither, so
        no reader ever sees one without the other and the pending step has nothing to guard.
        Three round trips were a pod's wait whenever its node needed a new block (the p99 of
        an allocation). Anything already there sends the claim down the steps below.
        """
        key = Key("BlockAffinity", affinity_name(node, cidr))
        write_together = writes_together(self.store)
        if write_together is not None:
            confirmed = BlockAffinity(
                metadata=ObjectMeta(name=key.name),
                spec=BlockAffinitySpec(state="confirmed", node=node, cidr=cidr),
            )
            try:
                await write_together([Create(confirmed), Create(self._new_block(cidr, node))])
                return True
            except TransactionConflict:
                pass  # the affinity or the block exists: whose it is, the steps find out
        pending = BlockAffinity(
            metadata=ObjectMeta(name=key.name),
            spec=BlockAffinitySpec(state="pending", node=node, cidr=cidr),
        )
        for _ in range(self.retries):
            try:
                await self.store.create(pending)
            except AlreadyExists:
                try:
                    current = await self.store.get(key)
                except NotFound:
                    # Released between the two (the GC gave the empty block back): create it
                    # again, as Calico's claim retries.
                    self.conflicts += 1
                    continue
                if current.value.spec.state == "pendingDeletion":
                    return False  # being released right now; let that finish
            break
        else:
            raise TooManyConflicts()
        try:
            await self.store.create(self._new_block(cidr, node))
        except AlreadyExists:
            try:
                block = _readable(await self.store.get(Key("IPAMBlock", block_name(cidr))))
            except NotFound:
                block = None  # deleted since, or left out by a view that cannot read it
            if block is None or block.affinity != host_affinity(node):
                await self._delete_quietly(key)
                return False
        for _ in range(self.retries):
            try:
                current = await self.store.get(key)
            except NotFound:
                return False  # released meanwhile, with its block: the walk looks again
            if current.value.spec.state != "confirmed":
                confirmed = current.value.model_copy(
                    update={"spec": current.value.spec.model_copy(update={"state": "confirmed"})})
                try:
                    await self.store.update(confirmed, revision=current.revision)
                except Conflict:
                    self.conflicts += 1
                    continue
                except NotFound:
                    return False  # released between the read and the write, as above
            return True
        raise TooManyConflicts()

    async def _release_block_affinity(
        self, node: str, cidr: str, *, require_empty: bool, required_sequence: int | None = None,
    ) -> bool:
        """Take `cidr` away from `node`: affinity pendingDeletion, then the block deleted if
        empty or made unaffine if not, then the affinity deleted. False if the block changed
        under us (it is not empty any more, or its sequence number moved)."""
        key = Key("BlockAffinity", affinity_name(node, cidr))
        block_key = Key("IPAMBlock", block_name(cidr))
        for _ in range(self.retries):
            try:
                block = await self.store.get(block_key)
            except NotFound:
                await self._delete_quietly(key)
                return True
            spec = block.value.spec
            if required_sequence is not None and spec.sequence_number != required_sequence:
                return False
            if spec.affinity != host_affinity(node):
                await self._delete_quietly(key)  # a stale affinity: the block is not ours
                return True
            empty = blocks.is_empty(spec)
            if require_empty and not empty:
                return False
            try:
                affinity = await self.store.get(key)
                if affinity.value.spec.state != "pendingDeletion":
                    marked = affinity.value.model_copy(update={
                        "spec": affinity.value.spec.model_copy(update={"state": "pendingDeletion"})})
                    await self.store.update(marked, revision=affinity.revision)
            except NotFound:
                pass
            except Conflict:
                self.conflicts += 1
                continue
            try:
                if empty:
                    await self.store.delete(block_key, revision=block.revision)
                else:
                    unaffine = spec.model_copy(update={"affinity": None, "affinity_claim_time": None})
                    await self.store.update(block.value.model_copy(update={"spec": unaffine}),
                                            revision=block.revision)
            except Conflict:
                self.conflicts += 1
                if require_empty:
                    await self._restore_affinity(key)
                    return False
                continue
            except NotFound:
                pass  # someone else released it first: what is left is the affinity
            await self._delete_quietly(key)
            return True
        raise TooManyConflicts()

    async def _give_back_unselected(
        self, node: str, version: int, owned: list[str], pools: list[IPPool],
        labels: Mapping[str, str],
    ) -> None:
        """Release `node`'s empty blocks of this family whose pool no longer selects it (its
        nodeSelector was narrowed, or the node's labels changed), so that a node the pool does
        select can have them, as Calico's autoAssign does on each allocation. A block that still
        holds addresses stays until it is empty; a block in no pool is left alone."""
        for cidr in owned:
            network = network_of(cidr)
            if network.version != version:
                continue
            pool = next((p for p in pools if p.spec.network.version == version
                         and network.subnet_of(p.spec.network)), None)  # type: ignore[arg-type]
            if pool is None or selector.parse(pool.spec.node_selector).matches(labels):
                continue
            if await self._release_block_affinity(node, cidr, require_empty=True):
                log.info("Released block %s, affine to %s: its pool %s no longer selects the node",
                         cidr, node, pool.metadata.name)

    async def _restore_affinity(self, key: Key) -> None:
        try:
            affinity = await self.store.get(key)
            restored = affinity.value.model_copy(update={
                "spec": affinity.value.spec.model_copy(update={"state": "confirmed"})})
            await self.store.update(restored, revision=affinity.revision)
        except (NotFound, Conflict):
            pass

    async def release_host_affinities(self, node: str) -> None:
        """Give up every block `node` owns: empty ones are deleted, the others become unaffine
        and are deleted when their last address is released."""
        for kv in (await self.store.list("BlockAffinity", node=node)).items:
            await self._release_block_affinity(node, kv.value.spec.cidr, require_empty=False)

    async def delete_pool(self, name: str, *, revision: str | None = None) -> KVPair:
        """Delete an IPPool the way Calico does: disable it (no new blocks or addresses), give up
        every node's affinity for its blocks (empty blocks go, the others become unaffine and
        go with their last address), then delete it. Running pods keep their addresses.

        A pool whose stored value cannot be read (edited by hand, or written by kubectl past
        rules its CRD does not hold) goes too, as Calico, whose decoding reads it, deletes it:
        the affinities its stored CIDR covers are given up if that CIDR can be read, and the
        key is deleted at the revision it was read at. Nothing can allocate from such a pool,
        so there is nothing to disable first."""
        key = Key("IPPool", name)
        pool = await self._stored_pool(key)
        if revision is not None and pool.revision != revision:
            raise Conflict(key, pool)
        try:
            pool.value
        except DatastoreError:
            return await self._delete_unreadable_pool(pool)
        if not pool.value.spec.disabled:
            disabled = pool.value.model_copy(
                update={"spec": pool.value.spec.model_copy(update={"disabled": True})})
            pool = await self.store.update(disabled, revision=pool.revision)
        network = pool.value.spec.network
        for kv in (await self.store.list("BlockAffinity")).items:
            block = network_of(kv.value.spec.cidr)
            if _in_pools(block, [pool.value]) and block.version == network.version:
                await self._release_block_affinity(kv.value.spec.node, kv.value.spec.cidr,
                                                   require_empty=False)
        return await self.store.delete(key, revision=pool.revision)

    async def _stored_pool(self, key: Key) -> KVPair:
        """The stored pool, read or not: etcd and memory hand out a value unread, but
        Kubernetes decodes as it reads and refuses a `get` of one it cannot read, while its
        list hands that one out unread when asked to defer errors."""
        try:
            return await self.store.get(key)
        except (NotFound, DatastoreUnavailable):
            raise
        except DatastoreError:
            listed = await self.store.list("IPPool", defer_errors=True)
            found = next((kv for kv in listed.items if kv.key == key), None)
            if found is None:
                raise NotFound(key) from None
            return found

    async def _delete_unreadable_pool(self, pool: KVPair) -> KVPair:
        network = _stored_cidr(pool)
        if network is not None:
            for kv in (await self.store.list("BlockAffinity")).items:
                spec = kv.value.spec
                if _block_in_pools(spec.cidr, (str(network),)):
                    await self._release_block_affinity(spec.node, spec.cidr, require_empty=False)
        return await self.store.delete(pool.key, revision=pool.revision)

    # -- borrowing -----------------------------------------------------------------------------

    async def _borrow(
        self, node: str, pools: list[IPPool], want: int, handle: _Handle,
        secondary: Mapping[str, str], terms: _Terms,
    ) -> list[Interface]:
        got: list[Interface] = []
        existing = [spec for kv in (await self.store.list("IPAMBlock", defer_errors=True)).items
                    if (spec := _readable(kv)) is not None]
        for pool in pools:
            inside = [s for s in existing if _in_pools(s.network, [pool])]
            for spec in sorted(inside, key=lambda s, pool=pool: seeded_position(pool, node, s.network)):
                if len(got) == want:
                    return got
                if not spec.deleted and blocks.free_count(
                        blocks.collect_cooled(spec, terms.cooldown_seconds, self.clock()),
                        terms.reservations.ordinals(spec.network)):
                    got += await self._assign_from_block(
                        spec.cidr, want - len(got), handle, secondary, None, terms)
        return got

    # -- assign a given address ----------------------------------------------------------------

    async def assign_ip(
        self, node: str, address: str, *, handle_id: str, attrs: Mapping[str, str] | None = None,
    ) -> None:
        """Give `handle_id` exactly `address`; claims its block for `node` if no one has it."""
        secondary = {"node": node, "timestamp": format_time(self.clock()),
                     **(attrs or {})}
        async with self._locks[node]:
            pools = await self.pools()
            pool = pool_of(pools, address)
            if pool is None:
                raise NotInPool(f"{address} is not in any IP pool")
            if pool.spec.disabled:
                # As Calico's AssignIP looks in the enabled pools only: a disabled pool hands out
                # nothing new, not even an address asked for by name.
                raise NotInPool(f"{address} is in IPPool {pool.metadata.name}, which is disabled")
            cidr = str(block_of(pool, address))
            config = await self.get_config()
            key = Key("IPAMBlock", block_name(cidr))
            handle = _Handle(handle_id)
            for _ in range(self.retries):
                try:
                    current = await self.store.get(key)
                except NotFound:
                    # A block of another size may hold the address (the pool was created again
                    # with another blockSize): take it from there, never from a new block cut
                    # over it.
                    holder = next(iter(await self._blocks_holding([address])), None)
                    if holder is not None and holder != cidr:
                        cidr, key = holder, Key("IPAMBlock", block_name(holder))
                        continue
                    listed = _by_cidr((await self.store.list("IPAMBlock", defer_errors=True)).items)
                    if OtherSizeBlocks(listed, pool).overlap(network_of(cidr)):
                        raise IPAMError(
                            f"{address} cannot be assigned: its block {cidr} would overlap a "
                            f"block of another size that the pool {pool.metadata.name} had before "
                            "it was created again; it can be assigned once that block is gone")
                    await self.claim_affinity(node, cidr)
                    continue
                spec = blocks.collect_cooled(current.value.spec, config.ip_cooldown_seconds,
                                             self.clock())
                index = blocks.ordinal(spec, address)
                if blocks.cooling_down(spec, index):
                    raise AddressInUse(
                        f"{address} was released less than ipCooldownSeconds "
                        f"({config.ip_cooldown_seconds}s) ago and is cooling down")
                if spec.allocations[index] is not None:
                    raise AddressInUse(f"Address already assigned in block: {address}")
                if config.strict_affinity and spec.affinity != host_affinity(node):
                    raise IPAMError(
                        f"block {cidr} is not affine to {node} and strict affinity is enabled")
                new_spec, _ = blocks.assign(spec, 1, handle_id, secondary, ordinals=[index])
                new_block = current.value.model_copy(update={"spec": new_spec})
                write_together = writes_together(self.store)
                if write_together is not None:
                    written, _ = await self._write_with_handle(
                        write_together, new_block, current, handle, cidr, 1)
                    if written:
                        return
                    continue  # read the block again: the address may be taken now
                await self._add_to_handle(handle_id, cidr, 1)
                try:
                    await self.store.update(new_block, revision=current.revision)
                    return
                except (Conflict, NotFound) as err:
                    self.conflicts += isinstance(err, Conflict)
                    await self._add_to_handle(handle_id, cidr, -1)
            raise TooManyConflicts()

    # -- release -------------------------------------------------------------------------------

    async def release_ips(
        self, addresses: list[str], *, sequence_numbers: Mapping[str, int] | None = None,
        cooldown: bool = True,
    ) -> ReleaseResult:
        """Free addresses. One given with a sequence number (from `get_allocation` or a leak
        report) is freed only if it was not released and handed out again since. `cooldown`:
        False for addresses no pod ever had (an all-or-nothing request undone), which need no
        ipCooldownSeconds: a retried ADD would otherwise hold one more address each time."""
        pools = await self.pools()
        by_block: dict[str, list[str]] = defaultdict(list)
        lost: list[str] = []
        for text in addresses:
            ip = str(ipaddress.ip_address(text))
            pool = pool_of(pools, ip)
            if pool is None:
                lost.append(ip)
            else:
                by_block[str(block_of(pool, ip))].append(ip)
        seqs = sequence_numbers or {}
        result = ReleaseResult()

        async def release_from(cidr: str, ips: list[str]) -> None:
            def choose(spec):
                ordinals = {blocks.ordinal(spec, ip): ip for ip in ips}
                return ordinals, {o: seqs[ip] for o, ip in ordinals.items() if ip in seqs}

            result.merge(await self._release_in_block(cidr, choose, pools, cooldown=cooldown))

        for cidr, ips in by_block.items():
            try:
                await release_from(cidr, ips)
            except NotFound:
                lost += ips
        # Addresses whose pool is gone, or whose block was cut at another block size (the pool
        # was recreated): find the block that really holds them.
        if lost:
            holders = await self._blocks_holding(lost)
            for cidr, ips in holders.items():
                try:
                    await release_from(cidr, ips)
                except NotFound:
                    result.unallocated += ips
            result.unallocated += [ip for ip in lost if not any(ip in v for v in holders.values())]
        return result

    async def _blocks_holding(self, addresses: list[str]) -> dict[str, list[str]]:
        """The existing blocks that contain `addresses`, by a scan of every block."""
        found: dict[str, list[str]] = defaultdict(list)
        nets = [spec.network
                for kv in (await self.store.list("IPAMBlock", defer_errors=True)).items
                if (spec := _readable(kv)) is not None and not spec.deleted]
        for text in addresses:
            ip = ipaddress.ip_address(text)
            holder = next((n for n in nets if ip in n), None)
            if holder is not None:
                found[str(holder)].append(text)
        return found

    async def release_by_handle(self, handle_id: str, *, stored: KVPair | None = None
                                ) -> list[str]:
        """Free every address of `handle_id` and delete the handle; [] when there is none.
        `stored`: the handle as the caller read it a moment ago (`holding`), to write against
        without reading it again; a change since costs a conflict, and the handle is read."""
        key = Key("IPAMHandle", handle_id)
        handle = stored
        if handle is None:
            try:
                handle = await self.store.get(key)
            except NotFound:
                return []
        pools = await self.pools()
        released: list[str] = []
        unreadable = False
        handles = {handle_id: _Handle(handle_id, handle)}
        for cidr in list(handle.value.spec.block):
            def choose(spec):
                ordinals = blocks.ordinals_of_handle(spec, handle_id)
                return {o: str(blocks.address(spec, o)) for o in ordinals}, {}

            try:
                released += (await self._release_in_block(cidr, choose, pools, handles)).released
            except NotFound:
                pass  # the handle overstated: that block holds nothing of it
            except DatastoreError as err:
                # A block that cannot be read keeps what it holds, and the handle keeps counting
                # it, for `ipam check` to show; the pod's other addresses are freed all the same
                # (a CNI DEL that failed here would be retried for ever).
                log.warning("releasing %s: %s; its address there stays held until the block is "
                            "repaired", handle_id, err)
                unreadable = True
        # Decrements delete the handle at zero; one that overstated (a crash between handle and
        # block writes) is deleted here. Written together with its blocks, it is known gone.
        if handles[handle_id].stored is not None and not unreadable:
            await self._delete_quietly(key)
        return released

    async def _release_in_block(
        self, cidr: str, choose: Callable[..., tuple[dict[int, str], dict[int, int]]],
        pools: list[IPPool], handles: dict[str, _Handle] | None = None, *, cooldown: bool = True,
    ) -> ReleaseResult:
        """Release what `choose(spec)` picks in one block: {ordinal: address} and the sequence
        numbers to hold some of them to. Raises NotFound when there is no such block.

        With multi-key transactions the block and the decrements of its handles are one write;
        `handles` holds what is known of them (read here when missing) and is kept current.

        This process's releases in one block take turns: a node's pods share its block, and 40
        DELs at once, each writing the block against the revision it read, made 40 + 39 + ...
        transactions of which all but one per round lost (a burst took 2.5 times bridge's
        wall time, and a DEL could run out of retries). Other processes' writes are still met
        by compare-and-swap."""
        async with self._release_locks[cidr]:
            return await self._release_in_block_now(cidr, choose, pools, handles,
                                                    cooldown=cooldown)

    async def _release_in_block_now(
        self, cidr: str, choose: Callable[..., tuple[dict[int, str], dict[int, int]]],
        pools: list[IPPool], handles: dict[str, _Handle] | None, *, cooldown: bool,
    ) -> ReleaseResult:
        key = Key("IPAMBlock", block_name(cidr))
        current: KVPair | None = None
        checked = self.authority is self.store
        write_together = writes_together(self.store)
        handles = {} if handles is None else handles
        cooldown_seconds = (await self.get_config()).ip_cooldown_seconds if cooldown else 0
        for _ in range(self.retries):
            if current is None:
                try:
                    current = await self.store.get(key)  # NotFound: the caller decides
                except NotFound:
                    if self.authority is self.store:
                        raise
                    # A view may lag a block just made, or leave out one it cannot read: ask
                    # the store before the handle is taken to overstate and deleted.
                    current = await self.authority.get(key)
            # A block that cannot be read raises here, naming it: the release fails whole and
            # its handle stays, rather than the handle going while the block holds the address.
            spec = current.value.spec
            ordinals, guard = choose(spec)
            outcome = blocks.release(spec, ordinals, guard, cooldown_seconds=cooldown_seconds,
                                     now=self.clock())
            result = ReleaseResult(
                [ordinals[o] for o in outcome.released],
                [ordinals[o] for o in outcome.already_free],
                [ordinals[o] for o in outcome.stale],
            )
            if not outcome.released:
                if not checked:
                    # Nothing to free by a view that may lag: an address another process handed
                    # out a moment ago would leak if we stopped here. Make sure in the store.
                    checked = True
                    current = await self.authority.get(key)
                    continue
                return result
            drop = blocks.is_empty(outcome.spec) and (
                spec.affinity is None or not self._pool_still_serves(spec.network, pools))
            block_write = (Delete(key, current.revision) if drop else
                           Update(current.value.model_copy(update={"spec": outcome.spec}),
                                  current.revision))
            # etcd takes at most 128 operations in a transaction: a release touching more handles
            # than that (a large block, a GC sweep) takes the two-step path.
            together = write_together if len(outcome.by_handle) < MAX_HANDLES_PER_TXN else None
            if together is not None:
                written, current = await self._release_with_handles(
                    together, block_write, current, cidr, outcome.by_handle, handles)
                if not written:
                    continue
            else:
                try:
                    if isinstance(block_write, Delete):
                        await self.store.delete(key, revision=block_write.revision)
                    else:
                        await self.store.update(block_write.value, revision=block_write.revision)
                except Conflict as err:
                    self.conflicts += 1
                    current = err.current
                    continue
                except NotFound:
                    current = None
                    continue
            if drop and spec.affinity_node:
                await self._delete_quietly(Key("BlockAffinity", affinity_name(spec.affinity_node, cidr)))
            if together is None:
                for handle_id, count in outcome.by_handle.items():
                    await self._add_to_handle(handle_id, cidr, -count)
            return result
        raise TooManyConflicts()

    async def _release_with_handles(
        self, write_together: WriteTogether, block_write: Update | Delete, block: KVPair,
        cidr: str, by_handle: Mapping[str, int], handles: dict[str, _Handle],
    ) -> tuple[bool, KVPair | None]:
        """Write the block (`block_write`, compared with `block` as read) and take the freed
        addresses off their handles, in one transaction. Returns whether it was written, and the
        block as it stands now when not (None: gone)."""
        for handle_id in by_handle:
            if handle_id and handle_id not in handles:
                handle = handles[handle_id] = _Handle(handle_id)
                try:
                    handle.stored = await self.store.get(Key("IPAMHandle", handle_id))
                except NotFound:
                    pass  # an address without a handle object: nothing to take off
        writes: list[Create | Update | Delete] = [block_write]
        touched: list[_Handle] = []
        for handle_id, count in by_handle.items():
            write = handles[handle_id].write_removing(cidr, count) if handle_id else None
            if write is not None:
                writes.append(write)
                touched.append(handles[handle_id])
        try:
            done = await write_together(writes)
        except TransactionConflict as err:
            for handle in touched:
                handle.stored = err.current[Key("IPAMHandle", handle.id)]
            if block.key not in err.failed:
                return False, block  # only a handle had moved on: same block, once more
            self.conflicts += 1
            return False, err.current[block.key]
        for handle, write, kv in zip(touched, writes[1:], done[1:], strict=True):
            handle.stored = None if isinstance(write, Delete) else kv
        return True, None

    @staticmethod
    def _pool_still_serves(network: Network, pools: list[IPPool]) -> bool:
        """An empty affine block stays with its node only while an enabled pool still covers it."""
        return _in_pools(network, [p for p in pools if not p.spec.disabled])

    async def collect_cooled(self, cidr: str, now: datetime | None = None) -> int:
        """Free the addresses of block `cidr` whose cooldown has passed and write the block back
        (compare-and-swap); how many were freed. An unaffine block left empty is deleted, as a
        release would. Every allocation from a block does the first part itself; this is for
        blocks no one allocates from (percale-controllers' rounds)."""
        key = Key("IPAMBlock", block_name(cidr))
        cooldown = (await self.get_config()).ip_cooldown_seconds
        for _ in range(self.retries):
            try:
                current = await self.authority.get(key)
            except NotFound:
                return 0
            spec = current.value.spec
            collected = blocks.collect_cooled(spec, cooldown, now or self.clock())
            if collected is spec:
                return 0
            try:
                if spec.affinity is None and blocks.is_empty(collected):
                    await self.store.delete(key, revision=current.revision)
                else:
                    await self.store.update(current.value.model_copy(update={"spec": collected.model_copy(
                        update={"sequence_number": spec.sequence_number + 1})}),
                        revision=current.revision)
            except Conflict:
                self.conflicts += 1
                continue
            except NotFound:
                return 0
            return len(collected.unallocated) - len(spec.unallocated)
        raise TooManyConflicts()

    # -- reading -------------------------------------------------------------------------------

    async def get_allocation(self, address: str) -> Allocation | None:
        """Who holds `address`, or None when it is free or in no block."""
        ip = ipaddress.ip_address(address)
        pools = await self.pools()
        pool = pool_of(pools, str(ip))
        candidates = [str(block_of(pool, str(ip)))] if pool is not None else []
        for _ in range(2):
            for cidr in candidates:
                try:
                    spec = (await self.store.get(Key("IPAMBlock", block_name(cidr)))).value.spec
                except NotFound:
                    continue
                if spec.deleted:
                    continue
                index = blocks.ordinal(spec, ip)
                slot = spec.allocations[index]
                if slot is None or blocks.cooling_down(spec, index):
                    return None  # free, or released and cooling down: held by no one
                attribute = spec.attributes[slot]
                return Allocation(
                    str(ip), cidr, attribute.handle_id, dict(attribute.secondary),
                    spec.sequence_number_for_allocation.get(str(index)), spec.affinity,
                )
            # Not where the pool says: its pool is gone or was cut at another block size.
            candidates = list(await self._blocks_holding([str(ip)]))
        return None

    async def ips_by_handle(self, handle_id: str) -> list[str]:
        try:
            handle = await self.store.get(Key("IPAMHandle", handle_id))
        except NotFound:
            return []
        return [str(blocks.address(spec, o)) async for _, spec in self._blocks_of(handle)
                for o in blocks.ordinals_of_handle(spec, handle_id)]

    async def holding(self, handle_id: str) -> Holding | None:
        """`handle_id`'s handle and each address its blocks hold for it, with the allocation's
        attributes and sequence number (an address cooling down is no one's); None when there
        is no handle. The handle read here can be released as read (`release_by_handle`)."""
        try:
            handle = await self.store.get(Key("IPAMHandle", handle_id))
        except NotFound:
            return None
        found = []
        async for cidr, spec in self._blocks_of(handle):
            if spec.deleted:
                continue
            for index in blocks.ordinals_of_handle(spec, handle_id):
                if blocks.cooling_down(spec, index):
                    continue
                attribute = spec.attributes[spec.allocations[index]]
                found.append(Allocation(
                    str(blocks.address(spec, index)), cidr, handle_id, dict(attribute.secondary),
                    spec.sequence_number_for_allocation.get(str(index)), spec.affinity))
        return Holding(handle, found)

    async def _blocks_of(self, handle: KVPair) -> AsyncIterator[tuple[str, IPAMBlockSpec]]:
        """The blocks a handle counts addresses in, as (CIDR, spec); those gone are left out."""
        for cidr in handle.value.spec.block:
            try:
                block = await self.store.get(Key("IPAMBlock", block_name(cidr)))
            except NotFound:
                continue
            yield cidr, block.value.spec

    # -- helpers -------------------------------------------------------------------------------

    async def pools(self) -> list[IPPool]:
        return await read_pools(self.store, _leave_out_pool)

    async def _reservations(self) -> Reservations:
        return await read_reservations(
            self.store, lambda err: log.warning("IPAM leaves out a reservation it cannot read: %s", err))

    async def _owned(self, node: str) -> list[str]:
        """The blocks `node` holds a confirmed affinity for (a pending one counts as absent)."""
        affinities = (await self.store.list("BlockAffinity", node=node)).items
        return [kv.value.spec.cidr for kv in affinities if kv.value.spec.state == "confirmed"]

    async def _node_labels(self, node: str) -> dict[str, str]:
        try:
            return (await self.store.get(Key("Node", node))).value.metadata.labels
        except NotFound:
            return {}  # a node not registered yet: only all() pools select it

    async def _namespace_labels(self, namespace: str | None) -> dict[str, str]:
        """What a pool's namespaceSelector sees of `namespace`: the labels of its Profile
        kns.<namespace> (on Kubernetes, the Namespace's own) and its name; {} for none."""
        if namespace is None:
            return {}
        key = Key("Profile", namespace_profile_name(namespace))
        profile: KVPair | None = None
        try:
            profile = await self.store.get(key)
        except NotFound:
            if self.authority is not self.store:
                # The view may lag a namespace made (or labelled) a moment before its first pod;
                # a wrong answer here would put the pod in another pool for good.
                try:
                    profile = await self.authority.get(key)
                except NotFound:
                    pass
        return labels_of_namespace(namespace, profile.value if profile is not None else None)

    async def _add_to_handle(self, handle_id: str, cidr: str, delta: int) -> None:
        key = Key("IPAMHandle", handle_id)
        # Most handles are new (one per pod): try to create before reading.
        try_create = delta > 0
        for _ in range(self.retries):
            if try_create:
                handle = IPAMHandle(metadata=ObjectMeta(name=handle_id),
                                    spec=IPAMHandleSpec(handle_id=handle_id, block={cidr: delta}))
                try:
                    await self.store.create(handle)
                    return
                except AlreadyExists:
                    try_create = False
            try:
                current = await self.store.get(key)
            except NotFound:
                if delta <= 0:
                    return
                try_create = True
                continue
            counts = dict(current.value.spec.block)
            counts[cidr] = counts.get(cidr, 0) + delta
            if counts[cidr] <= 0:
                del counts[cidr]
            try:
                if counts:
                    spec = current.value.spec.model_copy(update={"block": counts})
                    await self.store.update(current.value.model_copy(update={"spec": spec}),
                                            revision=current.revision)
                else:
                    await self.store.delete(key, revision=current.revision)
                return
            except Conflict:
                self.conflicts += 1
            except NotFound:
                continue
        raise TooManyConflicts()

    async def _delete_quietly(self, key: Key) -> None:
        try:
            await self.store.delete(key)
        except NotFound:
            pass


async def read_pools(store: Datastore, unreadable: Callable[[DatastoreError], None],
                     ) -> list[IPPool]:
    """Every IPPool in `store` that can be read. One that cannot (written by kubectl past what
    its CRD checks, or by hand) is handed to `unreadable` and left out: it must not fail every
    pod's ADD, every release and every `ipam show`."""
    pools: list[IPPool] = []
    for kv in (await store.list("IPPool", defer_errors=True)).items:
        try:
            pools.append(kv.value)
        except DatastoreError as err:
            unreadable(err)
    return pools


def _leave_out_pool(err: DatastoreError) -> None:
    log.warning("IPAM leaves out a pool it cannot read: %s", err)


async def read_reservations(
    store: Datastore, unreadable: Callable[[DatastoreError], None],
) -> Reservations:
    """Every IPReservation's CIDRs in `store` (read here: ipam.reservations does no I/O). One
    object that cannot be read is handed to `unreadable` (to log or print) and left out: it must
    not stop every allocation."""
    cidrs: list[str] = []
    for kv in (await store.list("IPReservation", defer_errors=True)).items:
        try:
            cidrs += kv.value.spec.reserved_cidrs
        except DatastoreError as err:
            unreadable(err)
    return Reservations(cidrs)


def _by_cidr(listed: list[KVPair]) -> dict[str, KVPair]:
    """Blocks by the CIDR their names spell. A name that spells none (written by hand) belongs
    to no block IPAM can serve; it is logged and left out."""
    found = {}
    for kv in listed:
        try:
            found[block_cidr(kv.key.name)] = kv
        except ValueError as err:
            log.warning("IPAM leaves alone %s: %s", kv.key, err)
    return found


def _readable(block: KVPair) -> IPAMBlockSpec | None:
    """A block's spec, or None (logged) when its stored value cannot be read. One block written
    wrongly (by hand, by another tool) must not stop every node from claiming or borrowing: it
    is left alone, neither written nor cut over, until someone repairs or deletes it."""
    try:
        return block.value.spec
    except DatastoreError as err:
        log.warning("IPAM leaves alone a block it cannot read: %s", err)
        return None


@functools.lru_cache(maxsize=65536)
def _block_in_pools(cidr: str, pool_cidrs: tuple[str, ...]) -> bool:
    """Whether block `cidr` lies in one of the pools (by their CIDRs), remembered: asked for
    every block of the node on every allocation."""
    network = network_of(cidr)
    return any(network.version == pool.version and network.subnet_of(pool)  # type: ignore[arg-type]
               for pool in map(network_of, pool_cidrs))


def _stored_cidr(pool: KVPair) -> Network | None:
    """The network an unreadable pool's stored spec.cidr names, read from the stored JSON alone
    (as Calico's delete parses it, cnet.ParseCIDR: host bits masked); None when that JSON is
    not at hand or names no CIDR.

    The datastore contract has no read of a value's raw form. etcd and memory hand out a pair
    whose pending decoder holds the stored bytes (KVPair.later with functools.partial), and
    they are read from there; Kubernetes hands out only why it could not read the object
    (KVPair.unreadable), so there nothing is found and no affinity is given up."""
    decoder = getattr(pool, "_decode", None)
    data = next((arg for arg in getattr(decoder, "args", ())
                 if isinstance(arg, (bytes, bytearray))), None)
    if data is None:
        return None
    try:
        cidr = json.loads(data)["spec"]["cidr"]
        if not isinstance(cidr, str) or "/" not in cidr:
            return None
        return ipaddress.ip_network(cidr, strict=False)
    except (ValueError, KeyError, TypeError):
        return None


def _in_pools(network: Network, pools: list[IPPool]) -> bool:
    return _block_in_pools(str(network), tuple(p.spec.cidr for p in pools))


def _requested(pools: list[IPPool], requested: list[str] | None, node: str, version: int,
               namespace: str | None, namespace_labels: Mapping[str, str]) -> list[IPPool]:
    """Of the usable pools, those the request named (by name or CIDR), whatever their
    assignmentMode; naming none, the automatic ones (pools.automatic)."""
    if not requested:
        chosen = automatic(pools, namespace_labels)
        if not chosen:
            raise NoPools(f"no configured percale IPv{version} pools for node {node}"
                          + _left_out(pools, namespace, namespace_labels))
        return chosen
    chosen = [p for p in pools if p.metadata.name in requested or p.spec.cidr in requested]
    missing = sorted(set(requested) - {p.metadata.name for p in chosen} - {p.spec.cidr for p in chosen})
    if missing:
        raise NoPools(f"the requested pools {missing} are not usable by node {node} "
                      "(missing, disabled, wrong family or not selecting the node)")
    return chosen


def _left_out(pools: list[IPPool], namespace: str | None, namespace_labels: Mapping[str, str]) -> str:
    """Why usable pools served no automatic request: what the user would otherwise look for."""
    reasons = []
    for pool in pools:
        if pool.spec.assignment_mode != "Automatic":
            reasons.append(f"{pool.metadata.name} (assignmentMode {pool.spec.assignment_mode}: "
                           "used only when a request names it)")
        elif not selects_namespace(pool, namespace_labels):
            whose = f"namespace {namespace}" if namespace is not None else "a request without a namespace"
            reasons.append(f"{pool.metadata.name} (its namespaceSelector does not select {whose})")
    return f"; left out: {', '.join(reasons)}" if reasons else ""
