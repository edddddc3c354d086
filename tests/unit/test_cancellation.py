"""Stopping stops: a percale task that is cancelled ends, even when what it waited for arrived in
the same turn of the event loop.

Python 3.11's `asyncio.wait_for` returns the awaited result in that case and drops the
cancellation. A loop built on it then runs on, and whoever cancelled it (percale-node told to
stop, a test ending its BGP agent) waits for it for ever: one CI run hung for 90 minutes in
tests/interop/test_bgp_agent.py. `async with asyncio.timeout(...)` keeps the cancellation, so
percale's packages use that, and this file holds them to it.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from percale.bgpd.speaker import ExaBGP
from percale.datastore import Key, KVPair, MemoryDatastore
from percale.datastore.cache import Cache
from percale.node.policy_agent import NOT_STORED, POLICY_KINDS, PolicyAgent
from tests.unit.test_layers import PACKAGES, ROOT
from tests.unit.test_policy_agent import RecordingTable, endpoint

pytestmark = pytest.mark.unit


async def test_a_command_cancelled_as_exabgp_acknowledges_it_ends_cancelled(tmp_path):
    sending: asyncio.Task | None = None

    def on_event(line: str) -> None:
        # Read from the same chunk as the acknowledgement, so called in the very step that
        # resolved it: the cancellation lands before the sender runs again.
        assert sending is not None
        sending.cancel()

    speaker = ExaBGP(tmp_path, on_event, exabgp="true")  # no ExaBGP: this test is the bridge
    await speaker.start("")
    reader, writer = await asyncio.open_unix_connection(str(speaker.socket_path))
    try:
        await speaker.wait_connected(5)
        sending = asyncio.create_task(speaker.send("announce route 10.244.0.0/26 next-hop self"))
        assert await asyncio.wait_for(reader.readline(), 5) == (
            b"announce route 10.244.0.0/26 next-hop self\n")
        writer.write(b'done\n{"type": "state"}\n')
        with pytest.raises(asyncio.CancelledError):
            await sending
    finally:
        writer.close()
        await speaker.stop()


async def test_the_policy_agent_cancelled_as_an_endpoint_is_announced_stops():
    """The shape of percale's waiting loops (the policy agent here; the BGP agent's
    housekeeping, the IPAM GC and registration's retries are the same): wait for work or a
    deadline, then go on. Work that arrives in the step that cancels the loop must not keep it
    running."""
    cache = Cache(MemoryDatastore(), POLICY_KINDS, node="node1")
    table = RecordingTable()
    agent = PolicyAgent(cache, "node1", table=table)
    following = asyncio.create_task(cache.run())
    running = asyncio.create_task(agent.run())
    try:
        for _ in range(200):  # until the first ruleset is written and the agent waits again
            if table.history:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert table.history, "the policy agent never wrote its first ruleset"
        announced = endpoint("web", "pcl000000000001")
        agent.endpoint_written(KVPair(Key.of(announced), announced, NOT_STORED))
        running.cancel()
        done, _ = await asyncio.wait([running], timeout=2)
        assert done and running.cancelled(), "the policy agent went on after it was cancelled"
    finally:
        running.cancel()
        following.cancel()
        await asyncio.wait([following], timeout=2)


def wait_for_calls(path: Path) -> list[int]:
    """Lines of `path` that call asyncio.wait_for (as `asyncio.wait_for` or imported by name)."""
    tree = ast.parse(path.read_text(), str(path))
    imported = {alias.asname or alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module == "asyncio"
                for alias in node.names if alias.name == "wait_for"}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called = node.func
        if (isinstance(called, ast.Attribute) and called.attr == "wait_for"
                and isinstance(called.value, ast.Name) and called.value.id == "asyncio") or (
                isinstance(called, ast.Name) and called.id in imported):
            lines.append(node.lineno)
    return lines


def test_percale_never_waits_with_asyncio_wait_for():
    found = {str(path.relative_to(ROOT)): lines
             for folder in PACKAGES for path in sorted((ROOT / folder).rglob("*.py"))
             if (lines := wait_for_calls(path))}
    assert not found, f"asyncio.wait_for can swallow a cancellation (see this file): {found}"


def test_the_check_finds_wait_for_in_both_spellings(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import asyncio\nfrom asyncio import wait_for as w\n"
                      "async def f(e):\n    await asyncio.wait_for(e.wait(), 1)\n"
                      "    await w(e.wait(), 1)\n")
    assert wait_for_calls(source) == [4, 5]
