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
  * release is all-or-nothing per handle: if any address of a handle is still in use, or not
    yet confirmed, none of the handle's addresses is released;
  * an empty block is released only after two consecutive rounds saw it empty with the same
    sequence number; never the last block of a node that exists, but a gone node's last block
    goes too, with its affinity (Calico gives up a deleted node's affinities once nothing valid
    remains in them). "Gone" is judged as for its addresses: at once for a node an earlier round
    saw; for a node no round has seen (not registered yet, or this collector restarted) only
    once the block has stayed empty for `grace_period` (never, with a grace period of 0);
  * an address that an object which cannot be read may own (a Node, a Pod's endpoint, a handle:
    `check.py`) is held back, never released, and the object is logged by name;
  * addresses released into a cooldown (IPAMConfig ipCooldownSeconds) are freed once it has
    passed, in blocks no allocation would otherwise touch.

Blocks and affinities are written only through `IPAM` (`release_ips`, whose handle decrements
keep handles right, and `_release_block_affinity`). The one write made here is `repair_handle`,
used by `--from-report`: a compare-and-swap delete or count correction of an IPAMHandle that a
crash left overstated. Not done yet: the collector leaves handles to `ipam check`/`release`.

A gone node's affinities that have no block (a claim cut short between writing the affinity and
its block) are released too, judged gone as for its last block: Calico releases every affinity
of a deleted node, and such an affinity otherwise keeps its CIDR from every other node for good
(a claim skips a CIDR some affinity names).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

from percale.datastore import Conflict, DatastoreError, Key, NotFound
from percale.ipam import blocks
from percale.ipam.allocator import IPAM
from percale.ipam.check import AllocationInfo, HandleInfo, Report, check

log = logging.getLogger(__name__)

DEFAULT_GRACE_PERIOD = timedelta(minutes=15)


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


class GarbageCollector:
    """Finds and releases leaked addresses and surplus empty blocks, one round per call.

    State kept between rounds: when each candidate was first seen, which empty blocks were
    seen (with their sequence numbers, and since when) last round, which nodes have been seen,
    and which unreadable objects have been logged. A node counts as gone only if an earlier
    round saw its Node resource: the allocator serves a node before it registers
    (`IPAM._node_labels`), so "no Node" alone could mean "not yet". After a restart the
    collector falls back to the grace period for such nodes.
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

        self._tell_unreadable(report, done)
        confirmed = self._track_candidates(report, now, gone, done)
        if confirmed:
            await self._release_confirmed(confirmed, done)
        await self._release_empty_blocks(report, now, gone, done)
        await self._release_blockless_affinities(report, now, gone, done)
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

    def _track_candidates(
        self, report: Report, now: datetime, gone: set[str], done: GCRound,
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
            if a.node in gone:
                log.info("Confirmed IP leak: node %s is gone handle=%s ip=%s", a.node, a.handle, a.ip)
                confirmed.add(key)
            elif self.grace_period and now - candidate.first_seen >= self.grace_period:
                log.info("Confirmed IP leak after %s handle=%s ip=%s node=%s",
                         self.grace_period, a.handle, a.ip, a.node)
                confirmed.add(key)
        # A candidate that is gone, re-allocated (new sequence number) or in use starts over.
        self._candidates = seen
        done.candidates, done.confirmed = len(seen), len(confirmed)
        return confirmed

    async def _release_confirmed(self, confirmed: set[_CandidateKey], done: GCRound) -> None:
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
            return
        result = await release_leaks(self.ipam, to_release, fresh)
        done.released += len(result.released)
        done.changed += len(result.changed) + len(result.already_free)
        done.held_back += len(result.held_back)
        for a in result.released:
            self._candidates.pop(_key(a), None)
            log.info("Released leaked IP %s handle=%s node=%s", a.ip, a.handle, a.node)

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
        self, report: Report, now: datetime, gone: set[str], done: GCRound,
    ) -> None:
        owned: Counter[str] = Counter(b.affinity_node for b in report.blocks if b.affinity_node)
        empty = {b.cidr: b for b in report.blocks if b.affinity_node and blocks.is_empty(b)}
        done.empty_blocks = len(empty)
        sightings: dict[str, _EmptySighting] = {}
        seen_twice = []
        for cidr, b in empty.items():
            last = self._empty_last_round.get(cidr)
            if last is not None and last.sequence_number == b.sequence_number:
                sightings[cidr] = last
                seen_twice.append(b)
            else:
                sightings[cidr] = _EmptySighting(b.sequence_number, now)
        self._empty_last_round = sightings
        # Highest first, IPv6 after IPv4: Python orders no IPv4 network against an IPv6 one, and
        # a dual-stack cluster's collector stopped there with a TypeError on every round.
        for spec in sorted(seen_twice, key=lambda b: (b.network.version, b.network), reverse=True):
            node = spec.affinity_node or ""
            if owned[node] <= 1 and not self._node_gone(node, report, gone,
                                                         sightings[spec.cidr].since, now):
                done.kept_last_blocks += 1
                continue
            released = await self.ipam._release_block_affinity(
                node, spec.cidr, require_empty=True, required_sequence=spec.sequence_number)
            if released:
                owned[node] -= 1
                done.released_blocks += 1
                self._empty_last_round.pop(spec.cidr, None)
                log.info("Released empty block %s of node %s", spec.cidr, node)

    async def _release_blockless_affinities(
        self, report: Report, now: datetime, gone: set[str], done: GCRound,
    ) -> None:
        """Release the affinities of gone nodes whose block does not exist. A block that
        exists but cannot be read is not missing: its affinity stays. The release reads the
        block again and deletes the affinity only while it is still missing (or empty)."""
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
            if not self._node_gone(spec.node, report, gone, since, now):
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

    def _node_gone(
        self, node: str, report: Report, gone: set[str], empty_since: datetime, now: datetime,
    ) -> bool:
        """Whether `node` is gone, for its last block: as for its addresses, at once if an
        earlier round saw it; if none did, once the block has been empty for the grace period
        (a node not registered yet has its first block claimed before its Node exists)."""
        if node in report.nodes:
            return False
        if node in gone:
            return True
        return bool(self.grace_period) and now - empty_since >= self.grace_period


def released_by_handle(results: Sequence[AllocationInfo]) -> dict[str, dict[str, int]]:
    """Per handle, per block, how many addresses were released: what `repair_handle` subtracts."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for a in results:
        if a.handle is not None:
            out[a.handle][a.block] = out[a.handle].get(a.block, 0) + 1
    return dict(out)
