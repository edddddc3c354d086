"""Stopping the agent's ExaBGP when it has just exited on its own.

asyncio learns of a child's exit in two steps: its watcher thread reaps the process, and a turn
of the event loop later sets returncode. A stop() or reload landing in between saw a process that
looked alive, signalled a pid that no longer existed, and ended in ProcessLookupError (CI met it
once: the agent's shutdown would have been a traceback)."""

from __future__ import annotations

import os
import time

import pytest

from percale.bgpd.speaker import ExaBGP

pytestmark = pytest.mark.unit


def wait_reaped_without_the_loop_noticing(pid: int) -> None:
    # time.sleep holds the event loop, so the watcher thread can reap the child but the loop
    # cannot yet run the callback that records its exit.
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{pid}"), "the child was never reaped"


async def test_stop_after_exabgp_exited_but_before_asyncio_noticed(tmp_path):
    speaker = ExaBGP(tmp_path, lambda line: None, exabgp="true")  # exits at once
    await speaker.start("")
    assert speaker.process is not None
    wait_reaped_without_the_loop_noticing(speaker.process.pid)
    assert speaker.process.returncode is None  # the window this test is about

    await speaker.stop()

    assert speaker.process.returncode == 0
    assert not speaker.socket_path.exists()

