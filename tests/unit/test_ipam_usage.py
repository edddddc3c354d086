"""What `ipam show` counts and prints, from IPPool and IPAMBlock values alone: usage per pool and
block, orphan blocks, borrowed addresses, and the Go number formats calicoctl prints them in."""

from __future__ import annotations

import pytest

from percale.ctl.ipam_show import (
    allocation_report,
    borrowed_report,
    configuration_rows,
    go_count,
    usage_row,
    usage_rows,
)
from percale.ipam import blocks
from percale.ipam.allocator import Allocation
from percale.ipam.usage import BlockUsage, Borrowing, BorrowedAddress, borrowed, usage
from percale.api import IPAMBlock, IPAMConfigSpec, IPPool, parse

pytestmark = pytest.mark.unit


def pool(name: str, cidr: str, **spec) -> IPPool:
    return parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
                  "spec": {"cidr": cidr, **spec}})


def block(cidr: str, owner: str | None = None, *allocated: tuple[int, dict[str, str]],
          deleted: bool = False) -> IPAMBlock:
    """A block with `count` addresses allocated per (count, attributes) pair, in order."""
    b = IPAMBlock.empty(cidr, f"host:{owner}" if owner else None, sequence_number=1)
    spec = b.spec
    for i, (count, attrs) in enumerate(allocated):
        spec, _ = blocks.assign(spec, count, f"h{i}", attrs)
    return b.model_copy(update={"spec": spec.model_copy(update={"deleted": deleted})})


# -- usage ---------------------------------------------------------------------------------------


def test_usage_counts_per_block_and_sums_blocks_per_pool():
    pools = [pool("a", "10.0.0.0/24"), pool("b", "fd00::/120")]
    found = usage(pools, [
        block("10.0.0.128/26", "n2", (1, {})),
        block("10.0.0.64/26", "n1", (2, {}), (1, {})),
        block("fd00::40/122", "n1", (5, {})),
    ])
    assert [(p.name, p.cidr, p.capacity, p.in_use, p.free) for p in found.pools] == [
        ("a", "10.0.0.0/24", 256, 4, 252),
        ("b", "fd00::/120", 256, 5, 251),
    ]
    # Address order, not key order (where 10.0.0.128 sorts before 10.0.0.64).
    assert found.pools[0].blocks == (BlockUsage("10.0.0.64/26", 64, 3), BlockUsage("10.0.0.128/26", 64, 1))
    assert found.pools[1].blocks == (BlockUsage("fd00::40/122", 64, 5),)
    assert found.orphans == ()


def test_blocks_in_no_pool_are_orphans_of_both_families_and_deleted_blocks_are_gone():
    found = usage([pool("a", "10.0.0.0/24")], [
        block("fd00::/122", None, (1, {})),
        block("192.168.0.0/26", None, (2, {})),
        block("10.0.0.0/26", "n1", (1, {}), deleted=True),
    ])
    assert found.pools[0].blocks == () and found.pools[0].in_use == 0
    assert found.orphans == (BlockUsage("192.168.0.0/26", 64, 2), BlockUsage("fd00::/122", 64, 1))


def test_a_block_counts_once_under_the_first_pool_it_overlaps():
    # Overlapping pools cannot be created, but a block outlives the pool it was cut from; Calico
    # counts it under the first pool that overlaps it.
    pools = [pool("wide", "10.0.0.0/16"), pool("narrow", "10.0.0.0/24")]
    found = usage(pools, [block("10.0.0.0/26", "n1", (3, {}))])
    assert [p.in_use for p in found.pools] == [3, 0]


def test_no_pools_and_no_blocks():
    found = usage([], [])
    assert found.pools == () and found.orphans == ()


# -- borrowed ------------------------------------------------------------------------------------


def test_borrowed_addresses_are_those_whose_node_is_not_the_block_owner():
    pod = {"node": "n2", "namespace": "web", "pod": "api-1", "timestamp": "t"}
    tunnel = {"node": "n3", "type": "vxlanTunnelAddress"}
    found = borrowed([
        block("10.0.0.64/26", "n1", (2, {"node": "n1", "pod": "own"}), (1, pod), (1, tunnel),
              (1, {"node": "n4"})),
        block("10.0.0.0/26", None, (1, {"node": "n1", "namespace": "db", "pod": "pg"})),
        block("10.0.0.128/26", "n1", (2, {"pod": "old"})),   # written before node was recorded
    ])
    assert found == Borrowing((
        BorrowedAddress("10.0.0.0", "n1", "10.0.0.0/26", "", "pod", "db/pg"),
        BorrowedAddress("10.0.0.66", "n2", "10.0.0.64/26", "n1", "pod", "web/api-1"),
        BorrowedAddress("10.0.0.67", "n3", "10.0.0.64/26", "n1", "vxlanTunnelAddress", ""),
        BorrowedAddress("10.0.0.68", "n4", "10.0.0.64/26", "n1", "", ""),
    ), unclassified=2)


def test_borrowed_report_is_the_table_then_a_note_on_unclassified_allocations():
    report = borrowed_report(Borrowing(
        (BorrowedAddress("10.0.0.66", "n2", "10.0.0.64/26", "n1", "pod", "web/api-1"),), 2))
    assert report == (
        "+-----------+----------------+--------------+-------------+------+--------------+\n"
        "|    IP     | BORROWING-NODE |    BLOCK     | BLOCK OWNER | TYPE | ALLOCATED-TO |\n"
        "+-----------+----------------+--------------+-------------+------+--------------+\n"
        "| 10.0.0.66 | n2             | 10.0.0.64/26 | n1          | pod  | web/api-1    |\n"
        "+-----------+----------------+--------------+-------------+------+--------------+\n"
        "\n"
        "Note: found 2 IP allocations without an explicit node association. "
        "Unable to determine if they are borrowed.\n"
    )
    assert "Note" not in borrowed_report(Borrowing((), 0))


# -- Go number formats ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "shown"), [
    (0, "0"), (64, "64"), (65536, "65536"), (99999, "99999"), (100000, "1e+05"),
    (131072, "1.3107e+05"), (2**24, "1.6777e+07"), (2**80, "1.2089e+24"),
])
def test_counts_print_like_gos_percent_5g(n, shown):
    assert go_count(float(n)) == shown


@pytest.mark.parametrize(("in_use", "used", "free"), [
    (1, "1 (0%)", "199 (100%)"),     # 0.5% and 99.5%: halves round to even, as Go's %.f
    (3, "3 (2%)", "197 (98%)"),      # 1.5% and 98.5%
    (5, "5 (2%)", "195 (98%)"),      # 2.5% and 97.5%
    (0, "0 (0%)", "200 (100%)"),
])
def test_percentages_round_like_gos_percent_f(in_use, used, free):
    assert usage_row("Block", "x", 200, in_use)[3:] == [used, free]


def test_a_slash_8_pool_shows_its_size_in_exponent_form_everywhere():
    assert usage_row("IP Pool", "10.0.0.0/8", 2**24, 3) == [
        "IP Pool", "10.0.0.0/8", "1.6777e+07", "3 (0%)", "1.6777e+07 (100%)"]


def test_usage_rows_put_blocks_after_their_pool_and_orphans_last_without_a_pool_row():
    found = usage([pool("a", "10.0.0.0/24")], [
        block("10.0.0.0/26", "n1", (2, {})), block("192.168.0.0/26", None, (1, {}))])
    assert [r[:2] for r in usage_rows(found, show_blocks=False)] == [["IP Pool", "10.0.0.0/24"]]
    assert [r[:2] for r in usage_rows(found, show_blocks=True)] == [
        ["IP Pool", "10.0.0.0/24"], ["Block", "10.0.0.0/26"], ["Block", "192.168.0.0/26"]]


# -- --ip and --show-configuration -----------------------------------------------------------------


def test_allocation_report():
    assert allocation_report("10.0.0.9", None) == "10.0.0.9 is not assigned\n"
    held = Allocation("10.0.0.9", "10.0.0.0/26", "k8s-pod-network.abc",
                      {"pod": "api-1", "namespace": "web", "node": "n1"}, 7, "host:n1")
    assert allocation_report("10.0.0.9", held) == (
        "IP 10.0.0.9 is in use\n"
        "Handle ID: k8s-pod-network.abc\n"
        "Active Owner Attributes:\n"
        "  namespace: web\n"
        "  node: n1\n"
        "  pod: api-1\n"
    )
    bare = Allocation("10.0.0.9", "10.0.0.0/26", None, {}, None, None)
    assert allocation_report("10.0.0.9", bare) == (
        "IP 10.0.0.9 is in use\nHandle ID: <none>\nNo Active Owner attributes defined\n")


def test_configuration_rows_print_go_values_and_the_stored_block_cap():
    assert configuration_rows(IPAMConfigSpec()) == [
        ["StrictAffinity", "false"], ["AutoAllocateBlocks", "true"], ["MaxBlocksPerHost", "0"],
        ["IPCooldownSeconds", "0"]]
    strict = IPAMConfigSpec(strict_affinity=True, max_blocks_per_host=4)
    assert configuration_rows(strict)[0] == ["StrictAffinity", "true"]
    assert configuration_rows(strict)[2] == ["MaxBlocksPerHost", "4"]
