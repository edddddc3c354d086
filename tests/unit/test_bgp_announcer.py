"""The node's own announcements said to ExaBGP (bgpd/announcer.py): to every neighbour at once,
or, once a session filters its exports, to each neighbour its own table, and back."""

from __future__ import annotations

import asyncio

import pytest

from percale.bgpd.announcer import Announcer

pytestmark = pytest.mark.unit

A, B, C = "10.244.1.0/26", "10.244.2.0/26", "10.245.0.0/26"


class ExaBGP:
    """Each neighbour's table as ExaBGP keeps it: a route per prefix, a global command applied to
    every neighbour; and every route a neighbour was ever sent."""

    def __init__(self, neighbours):
        self.tables = {n: {} for n in neighbours}
        self.ever: dict[str, set[str]] = {n: set() for n in neighbours}

    async def send(self, command: str, timeout: float = 30) -> None:
        words = command.split()
        if "eor" in words:
            return  # End-of-RIB: no route
        targets = [words[1]] if words[0] == "neighbor" else list(self.tables)
        verb, prefix = (words[2], words[4]) if words[0] == "neighbor" else (words[0], words[2])
        for n in targets:
            if verb == "announce":
                self.tables[n][prefix] = " ".join(words[words.index(prefix) + 1:])
                self.ever[n].add(prefix)
            else:
                self.tables[n].pop(prefix, None)


def announce(announcer, want, per_peer=None):
    asyncio.run(announcer.announce(want, [], per_peer))


def test_per_neighbour_tables_while_filtered_and_one_table_again_after():
    exabgp = ExaBGP(["x", "y"])
    announcer = Announcer(exabgp)
    announce(announcer, {A: "next-hop self"})
    assert exabgp.tables == {"x": {A: "next-hop self"}, "y": {A: "next-hop self"}}
    # y's filter rejects B and accepts the withheld C: B never reaches y, not even for a moment.
    want = {A: "next-hop self", B: "next-hop self"}
    announce(announcer, want, {"x": want, "y": {A: "next-hop self", C: "next-hop self"}})
    assert exabgp.tables == {"x": want, "y": {A: "next-hop self", C: "next-hop self"}}
    assert B not in exabgp.ever["y"] and C not in exabgp.ever["x"]
    assert announcer.per_peer == exabgp.tables
    # The filter goes: one table for all again, and C, which only y had, is withdrawn.
    announce(announcer, want)
    assert exabgp.tables == {"x": want, "y": want}
    assert announcer.per_peer is None and announcer.announced == want


def test_a_session_coming_up_is_told_its_own_table():
    exabgp = ExaBGP(["x", "y"])
    announcer = Announcer(exabgp)
    announce(announcer, {A: "next-hop self", B: "next-hop self"},
             {"x": {A: "next-hop self"}, "y": {A: "next-hop self", B: "next-hop self"}})
    exabgp.tables["x"].clear()
    asyncio.run(announcer.announce_to("x"))
    assert exabgp.tables["x"] == {A: "next-hop self"}
