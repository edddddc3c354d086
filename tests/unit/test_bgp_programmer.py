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


class FollowingTable(RecordingTable):
    """A route table that resolves next hops through other routes: its `underlay_events` is
    one end of a socket pair, the test writes the kernel's notifications into the other."""

    def __init__(self) -> None:
        super().__init__()
        import socket

        self.kernel, self.events = socket.socketpair()
        self.events.setblocking(False)
        self.followed = 0

    @property
    def underlay_events(self) -> int:
        return self.events.fileno()

    def follow_underlay(self):
        while True:  # as the FIB does: reads every notification waiting
            try:
                self.events.recv(4096)
            except BlockingIOError:
                break
        self.followed += 1
        return Outcome(failed={net("10.244.9.0/26"): "next hop 172.16.5.5 unreachable"})


def test_a_change_of_the_underlay_is_followed_once_per_burst(caplog):
    table = FollowingTable()
    programmer = FibProgrammer(table, None)

    async def scenario() -> list[int]:
        following = asyncio.ensure_future(programmer.follow_underlay())
        seen = []
        await asyncio.sleep(0.1)
        seen.append(table.followed)  # nothing changed: nothing followed
        for _ in range(5):  # a burst: a link down takes its addresses and routes along
            table.kernel.send(b"x")
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        seen.append(table.followed)
        table.kernel.send(b"x")  # the reader is watching again after a pass
        await asyncio.sleep(0.2)
        seen.append(table.followed)
        following.cancel()
        with pytest.raises(asyncio.CancelledError):
            await following
        return seen

    assert asyncio.run(scenario()) == [0, 1, 2]
    assert "10.244.9.0/26" in caplog.text


def test_a_table_that_resolves_nothing_has_nothing_to_follow():
    programmer = FibProgrammer(RecordingTable(), None)
    asyncio.run(asyncio.wait_for(programmer.follow_underlay(), 1))  # returns at once
    asyncio.run(asyncio.wait_for(FibProgrammer(None, None).follow_underlay(), 1))
