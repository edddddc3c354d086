"""Block arithmetic: the pure part of allocation and release, on IPAMBlockSpec values.

Every function returns a new spec and never changes the one it was given: the allocator keeps the
value it read until its compare-and-swap succeeds (Calico learned this in PR 12697, where a
mutated cached block outlived a failed write).

IP cooldown (IPAMConfig ipCooldownSeconds, as Calico has it): an address released while the
cooldown is above 0 is not freed but pointed at an entry of its own that holds only the time of
its release (`releasedAt`), and belongs to no handle. It goes back on the free list once the
cooldown has passed (`collect_cooled`), which every allocation from the block does first, so
an address a pod just left is not handed to the next pod at once.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from percale.api.fields import format_time, parse_time
from percale.api.ipam import AllocationAttribute, IPAMBlockSpec

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def ordinal(spec: IPAMBlockSpec, address: str | Address) -> int:
    """The index of `address` in the block; ValueError if the block does not hold it."""
    ip = ipaddress.ip_address(address)
    net = spec.network
    if ip not in net:
        raise ValueError(f"{ip} is not in block {spec.cidr}")
    return int(ip) - int(net.network_address)


def address(spec: IPAMBlockSpec, index: int) -> Address:
    return spec.network.network_address + index


def interface(spec: IPAMBlockSpec, index: int) -> Interface:
    """The address at `index` with the block's prefix length (10.0.0.5/26), as IPAM hands it out."""
    net = spec.network
    # Built from integers: parsing "10.0.0.5/26" back from its text cost more than the rest of
    # an allocation's block arithmetic.
    cls = ipaddress.IPv4Interface if net.version == 4 else ipaddress.IPv6Interface
    return cls((int(net.network_address) + index, net.prefixlen))


def free_count(spec: IPAMBlockSpec, reserved: Collection[int] = ()) -> int:
    """Free addresses that may be handed out: not the `reserved` ordinals (IPReservations)."""
    if not reserved:
        return len(spec.unallocated)
    return sum(1 for o in spec.unallocated if o not in reserved)


def is_empty(spec: IPAMBlockSpec) -> bool:
    return len(spec.unallocated) == len(spec.allocations)


def handle_of(spec: IPAMBlockSpec, index: int) -> str | None:
    slot = spec.allocations[index]
    return None if slot is None else spec.attributes[slot].handle_id


def ordinals_of_handle(spec: IPAMBlockSpec, handle_id: str) -> list[int]:
    return [i for i, slot in enumerate(spec.allocations)
            if slot is not None and spec.attributes[slot].handle_id == handle_id]


def handle_counts(spec: IPAMBlockSpec) -> Counter[str]:
    """How many addresses each handle holds in the block (addresses cooling down belong to no
    handle)."""
    return Counter(spec.attributes[slot].handle_id for slot in spec.allocations
                   if slot is not None and spec.attributes[slot].released_at is None)


def cooling_down(spec: IPAMBlockSpec, index: int) -> bool:
    """Whether the address at `index` was released and waits out the cooldown."""
    slot = spec.allocations[index]
    return slot is not None and spec.attributes[slot].released_at is not None


def earliest_release(spec: IPAMBlockSpec) -> datetime | None:
    """When the longest-cooling address of the block was released; None if none is cooling."""
    times = [parse_time(a.released_at) for a in spec.attributes if a.released_at is not None]
    return min(times, default=None)


def collect_cooled(spec: IPAMBlockSpec, cooldown_seconds: int, now: datetime) -> IPAMBlockSpec:
    """The block with every address whose cooldown has passed put back on the free list (to the
    back, as a release would have); `spec` itself when there is none."""
    released = [a.released_at for a in spec.attributes]
    if not any(released):
        return spec  # the common case: one look at the block's few entries
    cutoff = now - timedelta(seconds=cooldown_seconds)
    cooled = {slot for slot, at in enumerate(released) if at is not None and parse_time(at) <= cutoff}
    if not cooled:
        return spec
    allocations = list(spec.allocations)
    unallocated = list(spec.unallocated)
    per_ordinal = dict(spec.sequence_number_for_allocation)
    for o, slot in enumerate(allocations):
        if slot in cooled:
            allocations[o] = None
            unallocated.append(o)
            per_ordinal.pop(str(o), None)
    attributes, allocations = _compact(spec.attributes, allocations)
    return spec.model_copy(update={"allocations": allocations, "unallocated": unallocated,
                                   "attributes": attributes,
                                   "sequence_number_for_allocation": per_ordinal})


def _with_attribute(
    attributes: list[AllocationAttribute], handle_id: str, secondary: Mapping[str, str]
) -> tuple[list[AllocationAttribute], int]:
    """The attribute list holding (handle, secondary) once, and its index: allocations made
    together share one entry, as Calico's findOrAddAttribute keeps them."""
    for i, existing in enumerate(attributes):
        # Plain field comparisons: this runs over every attribute of the block per allocation.
        if existing.handle_id == handle_id and existing.secondary == secondary:
            return attributes, i
    wanted = AllocationAttribute(handle_id=handle_id, secondary=dict(secondary))
    return [*attributes, wanted], len(attributes)


def assign(
    spec: IPAMBlockSpec, count: int, handle_id: str, secondary: Mapping[str, str],
    ordinals: Iterable[int] | None = None, reserved: Collection[int] = (),
) -> tuple[IPAMBlockSpec, list[int]]:
    """Allocate `count` addresses from the front of the free list, passing over the `reserved`
    ordinals, which keep their place (or exactly `ordinals`).

    Returns the new spec and the ordinals taken. Each taken ordinal records the new sequence
    number, which no other allocation in this block will ever share.
    """
    if ordinals is None:
        taken = (spec.unallocated[:count] if not reserved else
                 [o for o in spec.unallocated if o not in reserved][:count])
    else:
        taken = list(ordinals)
        if any(spec.allocations[o] is not None for o in taken):
            raise ValueError("an ordinal to assign is already allocated")
    attributes, slot = _with_attribute(list(spec.attributes), handle_id, secondary)
    allocations = list(spec.allocations)
    sequence = spec.sequence_number + 1
    per_ordinal = dict(spec.sequence_number_for_allocation)
    for o in taken:
        allocations[o] = slot
        per_ordinal[str(o)] = sequence
    chosen = set(taken)
    new = spec.model_copy(update={
        "allocations": allocations,
        "unallocated": [o for o in spec.unallocated if o not in chosen],
        "attributes": attributes,
        "sequence_number": sequence,
        "sequence_number_for_allocation": per_ordinal,
    })
    return new, taken


@dataclass(frozen=True)
class Released:
    spec: IPAMBlockSpec
    released: list[int]        # ordinals freed now
    already_free: list[int]    # ordinals that were free already (release is idempotent)
    stale: list[int]           # ordinals refused: their sequence number no longer matches
    by_handle: Counter[str]    # addresses freed per handle, to decrement the handles


def release(
    spec: IPAMBlockSpec, ordinals: Iterable[int], sequence_numbers: Mapping[int, int] | None = None,
    *, cooldown_seconds: int = 0, now: datetime | None = None,
) -> Released:
    """Free `ordinals`. An ordinal given with a sequence number is freed only if it still carries
    that number: the address was not released and handed out again since it was observed.

    With `cooldown_seconds` above 0 the ordinals are released into the cooldown instead (see
    the module docstring), stamped `now`; an address already cooling down counts as free."""
    now = now or _utcnow()
    allocations = list(spec.allocations)
    unallocated = list(spec.unallocated)
    per_ordinal = dict(spec.sequence_number_for_allocation)
    attributes = list(spec.attributes)
    sequence = spec.sequence_number + 1
    cooling_slot: int | None = None
    released, already_free, stale = [], [], []
    by_handle: Counter[str] = Counter()
    for o in dict.fromkeys(ordinals):
        slot = allocations[o]
        if slot is None or spec.attributes[slot].released_at is not None:
            already_free.append(o)
            continue
        if sequence_numbers is not None and o in sequence_numbers \
                and per_ordinal.get(str(o)) != sequence_numbers[o]:
            stale.append(o)
            continue
        by_handle[spec.attributes[slot].handle_id or ""] += 1
        released.append(o)
        if cooldown_seconds > 0:
            if cooling_slot is None:
                cooling_slot = len(attributes)
                attributes.append(AllocationAttribute(released_at=format_time(now)))
            allocations[o] = cooling_slot
            # A new number: whoever observed the allocation cannot release the cooling address.
            per_ordinal[str(o)] = sequence
        else:
            allocations[o] = None
            unallocated.append(o)  # to the back: the longest-free address is reused first
            per_ordinal.pop(str(o), None)
    if not released:
        return Released(spec, [], already_free, stale, by_handle)
    attributes, allocations = _compact(attributes, allocations)
    new = spec.model_copy(update={
        "allocations": allocations,
        "unallocated": unallocated,
        "attributes": attributes,
        "sequence_number": sequence,
        "sequence_number_for_allocation": per_ordinal,
    })
    # Whatever else has cooled long enough goes back now too (the cooldown may have been
    # shortened, or set to 0, since those addresses were released).
    return Released(collect_cooled(new, cooldown_seconds, now), released,
                    already_free, stale, by_handle)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _compact(
    attributes: list[AllocationAttribute], allocations: list[int | None]
) -> tuple[list[AllocationAttribute], list[int | None]]:
    """Drop attributes no allocation points at any more, renumbering the allocations."""
    used = sorted({slot for slot in allocations if slot is not None})
    renumber = {old: new for new, old in enumerate(used)}
    return [attributes[i] for i in used], [None if s is None else renumber[s] for s in allocations]
