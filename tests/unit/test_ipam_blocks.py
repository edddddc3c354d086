"""Block arithmetic, pure: assignment and release on IPAMBlock values, with hypothesis."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from percale.ipam import blocks
from percale.api.ipam import IPAMBlock

pytestmark = pytest.mark.unit


def fresh(cidr: str = "10.0.0.0/28"):
    return IPAMBlock.empty(cidr, affinity="host:n1", sequence_number=100).spec


def valid(spec) -> None:
    """The stored form must pass the model's own checks (partition, indices, lengths)."""
    type(spec).model_validate(spec.model_dump())


def test_assign_takes_from_the_front_and_records_sequence_numbers():
    spec, taken = blocks.assign(fresh(), 3, "h1", {"pod": "a"})
    assert taken == [0, 1, 2]
    assert spec.unallocated[:2] == [3, 4]
    assert spec.sequence_number == 101
    assert spec.sequence_number_for_allocation == {"0": 101, "1": 101, "2": 101}
    assert len(spec.attributes) == 1  # one request shares one attribute entry
    assert [str(blocks.address(spec, o)) for o in taken] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    valid(spec)


def test_the_given_block_is_never_changed():
    original = fresh()
    before = original.model_dump()
    spec, _ = blocks.assign(original, 2, "h1", {})
    blocks.release(spec, [0])
    assert original.model_dump() == before


def test_release_goes_to_the_back_and_frees_unused_attributes():
    spec, _ = blocks.assign(fresh(), 2, "h1", {})
    spec, _ = blocks.assign(spec, 1, "h2", {})
    out = blocks.release(spec, [0, 1])
    assert out.released == [0, 1] and out.by_handle == {"h1": 2}
    assert out.spec.unallocated[-2:] == [0, 1]  # freed addresses queue at the back (FIFO)
    assert [a.handle_id for a in out.spec.attributes] == ["h2"]
    assert out.spec.allocations[2] == 0
    valid(out.spec)


def test_release_is_idempotent_and_honours_sequence_numbers():
    spec, _ = blocks.assign(fresh(), 2, "h1", {})
    once = blocks.release(spec, [0])
    twice = blocks.release(once.spec, [0])
    assert twice.released == [] and twice.already_free == [0] and twice.spec == once.spec
    guarded = blocks.release(spec, [1], {1: 999})
    assert guarded.stale == [1] and guarded.released == []
    ok = blocks.release(spec, [1], {1: spec.sequence_number_for_allocation["1"]})
    assert ok.released == [1]


@pytest.mark.parametrize("cidr", ["10.0.0.0/28", "10.1.2.252/30", "fd00::/124", "::/124"])
def test_interface_is_the_address_with_the_block_prefix(cidr):
    # Built from integers: the same value as parsing the text, of the block's family even for a
    # low IPv6 block whose integers would fit IPv4.
    spec = fresh(cidr)
    for o in range(len(spec.allocations)):
        got = blocks.interface(spec, o)
        assert got == ipaddress.ip_interface(f"{blocks.address(spec, o)}/{spec.network.prefixlen}")
        assert got.version == spec.network.version and got.network == spec.network


def test_ordinal_outside_the_block_is_refused():
    with pytest.raises(ValueError):
        blocks.ordinal(fresh(), "10.0.1.1")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["assign", "release"]), st.integers(0, 20),
                          st.sampled_from(["h1", "h2", "h3"])), max_size=40))
def test_random_operations_keep_the_block_consistent(ops):
    """Whatever the sequence, every address has at most one owner, the free list and the
    allocations partition the block, and handle counts add up."""
    spec = fresh()
    owners: dict[int, str] = {}
    for op, n, handle in ops:
        if op == "assign":
            count = min(n, blocks.free_count(spec))
            spec, taken = blocks.assign(spec, count, handle, {"n": str(n)})
            for o in taken:
                assert o not in owners
                owners[o] = handle
        else:
            chosen = [o for o in range(16) if (o * 7 + n) % 3 == 0]
            out = blocks.release(spec, chosen)
            for o in out.released:
                del owners[o]
            spec = out.spec
        valid(spec)
        assert {o: blocks.handle_of(spec, o) for o in range(16) if spec.allocations[o] is not None} == owners
        assert sum(blocks.handle_counts(spec).values()) == len(owners)
        assert len(set(spec.sequence_number_for_allocation)) == len(owners)
