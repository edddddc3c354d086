"""bgpd/programmer.py: the RIB's changes reach the route table as one batch of prefix -> next
hops (None withdraws), whichever shape of batch they arrive in: a load, a flush, a mix, and
prefixes another owner takes over."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from percale.bgpd.programmer import FibProgrammer
from percale.bgpd.rib import FibChanges

pytestmark = pytest.mark.unit

HOPS = frozenset({ipaddress.ip_address("10.0.0.2")})
OTHER = frozenset({ipaddress.ip_address("10.0.0.3")})


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(text)


@dataclass
class Outcome:
    failed: dict = field(default_factory=dict)


class RecordingTable:
    """A route table that keeps what it was told, read the way dataplane/fib.py reads it."""

    def __init__(self) -> None:
        self.batches: list[dict[Any, Any]] = []

    def apply(self, changes):
        assert len(changes) == len(list(changes.items()))
        self.batches.append(dict(changes.items()))
        return Outcome()


def applied(changes: FibChanges, claimed=None) -> list[dict]:
    table = RecordingTable()
    programmer = FibProgrammer(table, None, claimed=claimed)
    asyncio.run(programmer.apply(changes))
    return table.batches


def test_a_load_is_handed_over_as_it_is():
    added = {net("10.244.1.0/26"): HOPS, net("10.244.2.0/26"): HOPS}
    assert applied(FibChanges(added=added)) == [added]


def test_a_flush_withdraws_exactly_the_removed_prefixes():
    removed = frozenset(net(f"10.244.{i}.0/26") for i in range(100))
    (batch,) = applied(FibChanges(removed=removed))
    assert batch == dict.fromkeys(removed)


def test_a_mixed_batch_carries_every_change():
    changes = FibChanges(added={net("10.244.1.0/26"): HOPS}, changed={net("10.244.2.0/26"): OTHER},
                         removed=frozenset({net("10.244.3.0/26")}))
    assert applied(changes) == [{net("10.244.1.0/26"): HOPS, net("10.244.2.0/26"): OTHER,
                                 net("10.244.3.0/26"): None}]


@pytest.mark.parametrize("others", [0, 10])  # claims fewer than the changes, and more
def test_what_another_owner_takes_is_withdrawn_not_installed(others):
    vxlan, changed = net("10.99.0.0/26"), net("10.99.0.64/26")
    claimed = {vxlan, changed, *(net(f"10.98.{i}.0/26") for i in range(others))}
    changes = FibChanges(added={net("10.244.1.0/26"): HOPS, vxlan: HOPS}, changed={changed: OTHER},
                         removed=frozenset({net("10.244.3.0/26")}))
    (batch,) = applied(changes, claimed=lambda: claimed)
    assert batch == {net("10.244.1.0/26"): HOPS, vxlan: None, changed: None,
                     net("10.244.3.0/26"): None}


def test_a_load_with_nothing_claimed_among_it_is_handed_over_as_it_is():
    added = {net("10.244.1.0/26"): HOPS}
    assert applied(FibChanges(added=added), claimed=lambda: {net("10.99.0.0/26")}) == [added]


def test_nothing_to_do_tells_the_table_nothing():
    assert applied(FibChanges()) == []
