"""IPAM garbage collection: release leaked addresses, repair handles, give back empty blocks.

Two callers share what is here:
  * `percalectl ipam release --from-report` (ctl/ipam_check.py), with a report a user
    took earlier;
  * the agent's periodic collector, `GarbageCollector.run_once(now)`, with the time injected so
    that tests drive the clock.

Calico makes `release --from-report` safe by locking the datastore for the whole check/release
(calico.md §1.9). percale has no lock. Instead, nothing is released on the strength of an old
scan: just before releasing, the check runs again, and an address is released only if it is
still allocated to the same handle with the same sequence number and still used by no one; the
release itself carries that sequence number, so an address freed and handed out again between
the re-check and the write is refused by the block's compare-and-swap (`blocks.release`).
Handles are repaired the same way: only if the re-check finds the handle as the report did (same
UID and revision, or the same counts less what this run released) and still wrong, and the write
is a compare-and-swap on the revision the re-check read.

What the collector adds, after Calico's kube-controllers (calico.md §1.9, issue #5044 for why):
  * a candidate leak is confirmed only after `grace_period` (15 minutes), or at once when the
    address's node is gone; a grace period of 0 turns leak collection off, as Calico's
    `leakGracePeriod: 0` does (candidates are still counted and logged, and a gone node's
    addresses are still released);
  * a node is gone when it has no Node: at once if an earlier round saw its Node; if none did
    (the Node was deleted while this collector was down or moving, or the node never
    registered), when a read of its Node made after the round's scan finds none, and then only
    for allocations older than `UNREGISTERED_NODE_MARGIN` (a minute: the allocator serves a
    node before its Node exists, and an ADD in flight writes its endpoint within that);
  * release is all-or-nothing per handle: if any address of a handle is still in use, or not
    yet confirmed, none of the handle's addresses is released;
  * an empty block is released only after two consecutive rounds saw it empty with the same
    sequence number; never the last block of a node that exists. A gone node's blocks go, last
    one included, with their affinities, in the round that empties them (Calico gives up a
    deleted node's affinities in the pass that finds nothing valid in them); for a node no
    round saw, a block it held empty before the round waits until seen empty for the margin;
  * an address that an object which cannot be read may own (a Node, a Pod's endpoint, a handle:
    `check.py`) is held back, never released, and the object is logged by name; a Node whose
    read fails (anything but "not found") is not taken for gone;
  * addresses released into a cooldown (IPAMConfig ipCooldownSeconds) are freed once it has
    passed, in blocks no allocation would otherwise touch.

Blocks and affinities are written only through `IPAM` (`release_ips`, whose handle decrements
keep handles right, and `_release_block_affinity`). The one write made here is `repair_handle`,
used by `--from-report`: a compare-and-swap delete or count correction of an IPAMHandle that a
crash left overstated. Not done yet: the collector leaves handles to `ipam check`/`release`.

A gone node's affinities that have no block (a claim cut short between writing the affinity and
its block) are released too, at once, or for a node no round saw once seen without a block for
the margin: Calico releases every affinity of a deleted node, and such an affinity otherwise
keeps its CIDR from every other node for good (a claim skips a CIDR some affinity names).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal, Protocol

from percale.api import IPAMBlockSpec
from percale.api.fields import parse_time
from percale.api.ipam import block_name
from percale.datastore import Conflict, Datastore, DatastoreError, Key, NotFound
from percale.ipam import blocks
from percale.ipam.allocator import IPAM
from percale.ipam.check import AllocationInfo, HandleInfo, Report, check

log = logging.getLogger(__name__)

DEFAULT_GRACE_PERIOD = timedelta(minutes=15)

# How old an allocation on a node without a Node (one no round saw) must be before the node
# counts as gone for it, and how long such a node's empty block or blockless affinity must have
# been seen so. The allocator serves a node before its Node exists (`IPAM._node_labels`; on etcd
# an agent started with IP=none and nothing else to write never registers one), and an ADD
# allocates first and writes the pod's endpoint after: in between, its address is unused on a
# node with no Node. That takes well under a second (a claim of a block, between its writes,
# likewise); a minute leaves room for a slow datastore or a busy node and is still "at once"
# next to the 15-minute grace period. Timestamps are the allocating node's clock: one behind
# the collector's by more than this shortens it.
UNREGISTERED_NODE_MARGIN = timedelta(seconds=60)


class LeakRef(Protocol):
    """What identifies one allocation of an address: a report entry or an AllocationInfo."""

    ip: str
    handle: str | None
    sequence_number: int | None


# --------------------------------------------------------------------------------------------
# Releasing leaked addresses


@dataclass
class LeakRelease:
    released: list[AllocationInfo] = field(default_factory=list)
    # Free already when re-checked or released: someone cleaned them up first.
    already_free: list[str] = field(default_factory=list)
    # Re-allocated (another handle or sequence number) or in use again: left alone.
    changed: list[str] = field(default_factory=list)
    # Unused, but an object that may own them cannot be read now (check.py): left alone.
    held_back: list[str] = field(default_factory=list)


def still_leaked(
    leak: LeakRef, fresh: Report,
) -> AllocationInfo | Literal["free", "changed", "held back"]:
    """The allocation `leak` names as the fresh scan sees it, if it is still the same allocation
    and still unused; else why not."""
    now = fresh.allocations.get(leak.ip)
    if not now:
        return "free"
    same = [a for a in now if a.handle == leak.handle and a.sequence_number == leak.sequence_number]
    if not same or same[0].in_use:
        return "changed"
    if same[0].unreadable_owner is not None:
        return "held back"
    return same[0]


async def release_leaks(ipam: IPAM, leaks: Iterable[LeakRef], fresh: Report) -> LeakRelease:
    """Release the addresses of `leaks` that `fresh` (a scan taken just now) still finds leaked,
    each held to its sequence number."""
    result = LeakRelease()
    confirmed: dict[str, AllocationInfo] = {}
    for leak in leaks:
        found = still_leaked(leak, fresh)
        if found == "free":
            result.already_free.append(leak.ip)
        elif found == "changed":
            result.changed.append(leak.ip)
        elif found == "held back":
            result.held_back.append(leak.ip)
        else:
            confirmed[found.ip] = found
    if not confirmed:
        return result
    outcome = await ipam.release_ips(
        list(confirmed),
        sequence_numbers={ip: a.sequence_number for ip, a in confirmed.items()
                          if a.sequence_number is not None},
    )
    result.released += [confirmed[ip] for ip in outcome.released]
    result.already_free += outcome.unallocated
    result.changed += outcome.stale
    return result


# --------------------------------------------------------------------------------------------
# Repairing handles


HandleOutcome = Literal["deleted", "corrected", "skipped"]


@dataclass(frozen=True)
class HandleResult:
    handle: str
    outcome: HandleOutcome | Literal["error"]
    error: str | None = None


def _minus(counts: Mapping[str, int], released: Mapping[str, int]) -> dict[str, int]:
    left = {cidr: n - released.get(cidr, 0) for cidr, n in counts.items()}
    return {cidr: n for cidr, n in left.items() if n > 0}


def _unchanged(reported: HandleInfo, now: HandleInfo, released: Mapping[str, int]) -> bool:
    """Whether the handle is as the report saw it, apart from this run's own releases."""
    if now.uid != reported.uid:
        return False  # deleted and created again since: a different handle
    if not released:
        return now.revision == reported.revision
    # Our releases changed the revision; the counts tell whether anyone else wrote.
    return (dict(now.recorded) == _minus(reported.recorded, released)
            and dict(now.actual) == _minus(reported.actual, released))


async def repair_handle(
    ipam: IPAM, reported: HandleInfo, fresh: Report, released: Mapping[str, int] | None = None,
) -> HandleResult:
    """Delete a handle that holds no address, or lower its counts to what the blocks hold, if
    `fresh` finds it as `reported` (less `released`: what this run released from it, per
    block) and still wrong. Compare-and-swap on the revision `fresh` read."""
    now = fresh.handles.get(reported.id)
    if now is None or not _unchanged(reported, now, released or {}) or not now.overstated:
        return HandleResult(reported.id, "skipped")
    key = Key("IPAMHandle", now.id)
    try:
        if not now.actual:
            await ipam.store.delete(key, revision=now.revision)
            return HandleResult(now.id, "deleted")
        current = await ipam.store.get(key)
        if current.revision != now.revision:
            return HandleResult(now.id, "skipped")
        spec = current.value.spec.model_copy(update={"block": dict(now.actual)})
        await ipam.store.update(current.value.model_copy(update={"spec": spec}),
                                revision=now.revision)
        return HandleResult(now.id, "corrected")
    except (Conflict, NotFound):
        return HandleResult(now.id, "skipped")
    except DatastoreError as err:
        return HandleResult(now.id, "error", str(err))


# --------------------------------------------------------------------------------------------
# The periodic collector


@dataclass
class GCRound:
    """What one round did. percale-controllers exports the candidates and held-back counts of
    the last round, and the released addresses and blocks summed over rounds, as
    percale_ipam_* metrics (controllers/main.py, GCMetrics) when given --metrics-listen."""

    candidates: int = 0        # addresses allocated but unused (ipam_allocations_gc_candidates)
    confirmed: int = 0         # of which past their grace period, or their node is gone
    released: int = 0          # addresses released (ipam_allocations_gc_reclamations)
    changed: int = 0           # confirmed, but in use again or re-allocated at the re-check
    held_back: int = 0         # unused, but an object that may own them cannot be read
    skipped_handles: int = 0   # handles left whole: an address still valid or not confirmed
    empty_blocks: int = 0      # affine blocks seen empty this round
    released_blocks: int = 0   # empty blocks given back
    kept_last_blocks: int = 0  # empty blocks kept: their node's last, and it is not gone
    released_affinities: int = 0  # a gone node's affinities that had no block
    cooled: int = 0            # released addresses freed at the end of their cooldown


@dataclass(frozen=True)
class _Candidate:
    first_seen: datetime
    node: str | None


_CandidateKey = tuple[str, str | None, int | None]  # ip, handle, sequence number


def _key(a: AllocationInfo) -> _CandidateKey:
    return a.ip, a.handle, a.sequence_number


@dataclass(frozen=True)
class _EmptySighting:
    sequence_number: int
    since: datetime  # the first of the consecutive rounds that saw it empty at that number


def _allocated_before(a: AllocationInfo, moment: datetime) -> bool:
    """Whether `a` was allocated before `moment`, by the timestamp the allocator records with
    it. One with no timestamp it can read was not made by an ADD of percale's in flight (every
    one records it): it counts as old."""
    stamp = a.attributes.get("timestamp")
    try:
        allocated = parse_time(stamp) if stamp else None
    except ValueError:
        return True
    if allocated is None:
        return True
    if allocated.tzinfo is None:
        allocated = allocated.replace(tzinfo=timezone.utc)
    return allocated <= moment


NodeState = Literal["present", "gone", "missing"]


class _Nodes:
    """What one round knows of a node: present (in the scan, or it cannot be told), gone (an
    earlier round saw its Node, this round's scan did not) or missing (no round saw its Node,
    and a read made after the scan finds none).

    Why the read after the scan, and not the scan's Node list: check.py reads the blocks first
    and the Nodes after, so everything this round judges (allocations, blocks) was read, and
    made, before this read. A NotFound here then means the node had no Node at a moment after
    all it is judged on: a node that has registered by now, however long after it allocated,
    is seen and left alone, including one that registered between the scan's Node list and
    here; and it would stay so if check.py read the Nodes first, where a node registering
    between the two lists would look gone. What is left is a node that has not registered
    yet; an agent registers before it serves CNI (node/main.py), so that is one that never
    will, and UNREGISTERED_NODE_MARGIN covers its ADD in flight.
    """

    def __init__(self, store: Datastore, report: Report, gone: set[str]):
        self._store = store
        self._present = report.nodes
        self._gone = gone
        self._missing: dict[str, bool] = {}  # read once per round

    async def state(self, node: str | None) -> NodeState:
        if not node or node in self._present:
            return "present"
        if node in self._gone:
            return "gone"
        if node not in self._missing:
            self._missing[node] = await self._has_no_node(node)
        return "missing" if self._missing[node] else "present"

    async def _has_no_node(self, node: str) -> bool:
        try:
            await self._store.get(Key("Node", node))
        except NotFound:
            return True
        except DatastoreError as err:
            # Unavailable, forbidden, ...: it may well exist. Only "not found" says it does not.
            log.warning("IPAM GC: cannot read Node %s (%s); not taking it for gone", node, err)
            return False
        return False  # registered since the scan


class GarbageCollector:
    """Finds and releases leaked addresses and surplus empty blocks, one round per call.

    State kept between rounds: when each candidate was first seen, which empty blocks were
    seen (with their sequence numbers, and since when) last round, which nodes have been seen,
    and which unreadable objects have been logged. A node whose Node an earlier round saw and
    this round's scan lacks is gone at once. A node no round saw (its Node deleted while this
    collector restarted or moved, often because the deleted node ran it; or never registered)
    is gone only if a read of its Node made after the scan finds none (`_Nodes`), and since the
    allocator serves a node before its Node exists (`IPAM._node_labels`), only for what has
    been so for UNREGISTERED_NODE_MARGIN: allocations older than that, blocks and blockless
    affinities seen so for that long, and blocks this round's release emptied. Such a node's
    addresses go in the first round, at any grace period, as Calico's kube-controllers does.
    """

    def __init__(self, ipam: IPAM, *, grace_period: timedelta = DEFAULT_GRACE_PERIOD):
        self.ipam = ipam
        self.grace_period = grace_period
        self._candidates: dict[_CandidateKey, _Candidate] = {}
        self._empty_last_round: dict[str, _EmptySighting] = {}
        self._known_nodes: set[str] = set()
        # Affinities seen without their block: since when (see _release_blockless_affinities).
        self._blockless_since: dict[Key, datetime] = {}
        self._unreadable_told: dict[Key, str] = {}
        self.last_round = GCRound()
        self.total_released = 0
        self.total_released_blocks = 0

    async def run_once(self, now: datetime) -> GCRound:
        done = GCRound()
        report = await check(self.ipam.store)
        gone = self._known_nodes - report.nodes
        self._known_nodes |= report.nodes
        nodes = _Nodes(self.ipam.store, report, gone)

        self._tell_unreadable(report, done)
        confirmed = await self._track_candidates(report, now, nodes, done)
        emptied: set[str] = set()
        if confirmed:
            emptied = await self._release_confirmed(confirmed, done)
        await self._release_empty_blocks(report, now, nodes, emptied, done)
        await self._release_blockless_affinities(report, now, nodes, done)
        await self._collect_cooled(report, now, done)

        self.last_round = done
        self.total_released += done.released
        self.total_released_blocks += done.released_blocks
        return done

    def _tell_unreadable(self, report: Report, done: GCRound) -> None:
        """Log each object that cannot be read, once while it stays so, with the addresses it
        holds back: an operator has to mend it before they can be collected."""
        held: Counter[Key] = Counter(a.unreadable_owner for a in report.held_back
                                     if a.unreadable_owner is not None)
        done.held_back = len(report.held_back)
        for key, why in report.unreadable.items():
            if self._unreadable_told.get(key) != why:
                # `why` names the object: "Node(node-b) (revision 5) cannot be read: ...".
                log.warning("IPAM GC: %s; holding back the %d unused addresses it may own",
                            why, held[key])
        self._unreadable_told = dict(report.unreadable)

    async def _track_candidates(
        self, report: Report, now: datetime, nodes: _Nodes, done: GCRound,
    ) -> set[_CandidateKey]:
        seen: dict[_CandidateKey, _Candidate] = {}
        confirmed: set[_CandidateKey] = set()
        for a in report.leaked:
            key = _key(a)
            candidate = self._candidates.get(key)
            if candidate is None:
                candidate = _Candidate(now, a.node)
                log.info("Candidate IP leak handle=%s ip=%s node=%s pod=%s",
                         a.handle, a.ip, a.node, a.attributes.get("pod"))
            seen[key] = candidate
            state = await nodes.state(a.node)
            if state == "gone" or (
                    state == "missing"
                    and _allocated_before(a, now - UNREGISTERED_NODE_MARGIN)):
                log.info("Confirmed IP leak: node %s is gone handle=%s ip=%s",
                         a.node, a.handle, a.ip)
                confirmed.add(key)
            elif self.grace_period and now - candidate.first_seen >= self.grace_period:
                log.info("Confirmed IP leak after %s handle=%s ip=%s node=%s",
                         self.grace_period, a.handle, a.ip, a.node)
                confirmed.add(key)
        # A candidate that is gone, re-allocated (new sequence number) or in use starts over.
        self._candidates = seen
        done.candidates, done.confirmed = len(seen), len(confirmed)
        return confirmed

    async def _release_confirmed(self, confirmed: set[_CandidateKey], done: GCRound) -> set[str]:
        """Release the confirmed leaks, whole handles only; the blocks it released from."""
        fresh = await check(self.ipam.store)
        by_handle: dict[str | None, list[AllocationInfo]] = defaultdict(list)
        for allocs in fresh.allocations.values():
            for a in allocs:
                by_handle[a.handle].append(a)
        to_release: list[AllocationInfo] = []
        skipped: set[str | None] = set()
        for handle in {handle for _, handle, _ in confirmed}:
            group = by_handle.get(handle, [])
            if handle is None:
                # Without a handle there is nothing to group by: each address stands alone.
                to_release += [a for a in group if _key(a) in confirmed]
            elif any(a.in_use or _key(a) not in confirmed for a in group):
                log.info("Skipping handle %s: some of its addresses are still valid", handle)
                skipped.add(handle)
            else:
                to_release += group
        # Confirmed, but the re-check no longer finds them as they were: freed, re-allocated or
        # in use again.
        kept = {_key(a) for a in to_release}
        done.changed += sum(1 for key in confirmed if key[1] not in skipped and key not in kept)
        done.skipped_handles += len(skipped)
        if not to_release:
            return set()
        result = await release_leaks(self.ipam, to_release, fresh)
        done.released += len(result.released)
        done.changed += len(result.changed) + len(result.already_free)
        done.held_back += len(result.held_back)
        for a in result.released:
            self._candidates.pop(_key(a), None)
            log.info("Released leaked IP %s handle=%s node=%s", a.ip, a.handle, a.node)
        return {a.block for a in result.released}

    async def _collect_cooled(self, report: Report, now: datetime, done: GCRound) -> None:
        """Free the addresses whose cooldown has passed in blocks no allocation touches (every
        allocation frees its block's own first), as Calico's kube-controllers does: a block
        waiting for no one would otherwise hold them, and look full, for good."""
        cooldown: timedelta | None = None
        for spec in report.blocks:
            earliest = blocks.earliest_release(spec)
            if earliest is None:
                continue
            if cooldown is None:
                cooldown = timedelta(seconds=(await self.ipam.get_config()).ip_cooldown_seconds)
            if earliest + cooldown <= now:
                done.cooled += await self.ipam.collect_cooled(spec.cidr, now)

    async def _release_empty_blocks(
        self, report: Report, now: datetime, nodes: _Nodes, emptied: set[str], done: GCRound,
    ) -> None:
        """Release empty blocks: a gone node's at once (Calico's releaseNodes), a missing
        node's once empty for the margin or emptied by this round's release, any other node's
        once two rounds saw them empty, and never the last block of a present node."""
        owned: Counter[str] = Counter(b.affinity_node for b in report.blocks if b.affinity_node)
        empty = {b.cidr: b for b in report.blocks if b.affinity_node and blocks.is_empty(b)}
        # The scan saw these holding what this round released: read again, for a gone or missing
        # node's may go now, held to the sequence number read here.
        for cidr in sorted(emptied - empty.keys()):
            spec = await self._read_block(cidr)
            if (spec is not None and spec.affinity_node and blocks.is_empty(spec)
                    and await nodes.state(spec.affinity_node) != "present"):
                empty[cidr] = spec
        done.empty_blocks = len(empty)
        sightings: dict[str, _EmptySighting] = {}
        seen_twice: set[str] = set()
        for cidr, b in empty.items():
            last = self._empty_last_round.get(cidr)
            if last is not None and last.sequence_number == b.sequence_number:
                sightings[cidr] = last
                seen_twice.add(cidr)
            else:
                sightings[cidr] = _EmptySighting(b.sequence_number, now)
        self._empty_last_round = sightings
        # Highest first, IPv6 after IPv4: Python orders no IPv4 network against an IPv6 one, and
        # a dual-stack cluster's collector stopped there with a TypeError on every round.
        for spec in sorted(empty.values(), key=lambda b: (b.network.version, b.network),
                           reverse=True):
            node = spec.affinity_node or ""
            state = await nodes.state(node)
            if state == "gone" or (state == "missing" and (
                    spec.cidr in emptied
                    or now - sightings[spec.cidr].since >= UNREGISTERED_NODE_MARGIN)):
                pass  # its last block included, in this round
            elif spec.cidr not in seen_twice:
                continue
            elif owned[node] <= 1:
                done.kept_last_blocks += 1
                continue
            released = await self.ipam._release_block_affinity(
                node, spec.cidr, require_empty=True, required_sequence=spec.sequence_number)
            if released:
                owned[node] -= 1
                done.released_blocks += 1
                self._empty_last_round.pop(spec.cidr, None)
                log.info("Released empty block %s of node %s", spec.cidr, node)

    async def _read_block(self, cidr: str) -> IPAMBlockSpec | None:
        try:
            spec = (await self.ipam.store.get(Key("IPAMBlock", block_name(cidr)))).value.spec
        except DatastoreError:
            return None  # released already, or unreadable: nothing to give back here
        return None if spec.deleted else spec

    async def _release_blockless_affinities(
        self, report: Report, now: datetime, nodes: _Nodes, done: GCRound,
    ) -> None:
        """Release the affinities of gone nodes whose block does not exist: at once, or for a
        missing node once seen so for the margin (a claim writes the affinity before the
        block). A block that exists but cannot be read is not missing: its affinity stays.
        The release reads the block again and deletes the affinity only while it is still
        missing (or empty)."""
        have = {spec.cidr for spec in report.blocks} | set(report.unreadable_blocks)
        seen: dict[Key, datetime] = {}
        for kv in (await self.ipam.store.list("BlockAffinity", defer_errors=True)).items:
            try:
                spec = kv.value.spec
            except DatastoreError:
                continue  # `ipam check` names it; nothing here can tell whose it is
            if spec.cidr in have or spec.node in report.nodes:
                continue
            since = seen[kv.key] = self._blockless_since.get(kv.key, now)
            state = await nodes.state(spec.node)
            if state == "present" or (
                    state == "missing" and now - since < UNREGISTERED_NODE_MARGIN):
                continue
            try:
                released = await self.ipam._release_block_affinity(
                    spec.node, spec.cidr, require_empty=True)
            except DatastoreError as err:
                log.warning("IPAM GC: cannot release affinity %s of gone node %s: %s",
                            spec.cidr, spec.node, err)
                continue
            if released:
                seen.pop(kv.key, None)
                done.released_affinities += 1
                log.info("Released affinity %s of gone node %s: it had no block",
                         spec.cidr, spec.node)
        self._blockless_since = seen


def released_by_handle(results: Sequence[AllocationInfo]) -> dict[str, dict[str, int]]:
    """Per handle, per block, how many addresses were released: what `repair_handle` subtracts."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for a in results:
        if a.handle is not None:
            out[a.handle][a.block] = out[a.handle].get(a.block, 0) + 1
    return dict(out)
