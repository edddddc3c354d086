"""percale-node starting after a killed agent stops the ExaBGP that agent left
(bgpd/speaker.py's _stop_leftover), then waits for it to exit. A killed process whose parent is
gone stays a zombie until init reaps it: the wait took it for alive and held the new agent's
event loop, and every CNI request sent to it (the runtime's retries of the ADDs the killed
agent cut short), for seconds, up to 5."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from percale.bgpd.speaker import ExaBGP

pytestmark = pytest.mark.unit


def test_a_leftover_exabgp_is_waited_for_until_it_exits_not_until_it_is_reaped(tmp_path):
    speaker = ExaBGP(tmp_path, lambda line: None)
    speaker.config_path.write_text("")
    # Stands for the leftover ExaBGP: its command line names the configuration, it runs in a
    # session of its own; this test, its parent, never reaps it, as the killed agent cannot.
    leftover = subprocess.Popen(["sleep", "60", str(speaker.config_path)],
                                start_new_session=True)
    try:
        speaker.pid_path.write_text(f"{leftover.pid}\n")
        started = time.monotonic()
        speaker._stop_leftover()
        assert time.monotonic() - started < 1
        try:
            state = open(f"/proc/{leftover.pid}/stat").read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            state = "gone"  # reaped by something else of this test session meanwhile
        assert state in ("Z", "gone")  # killed
    finally:
        if leftover.poll() is None:
            os.kill(leftover.pid, 9)
        leftover.wait()
