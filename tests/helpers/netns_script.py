"""Run a Python script in a network namespace made for it and removed after, whatever happens:
for tests of code that writes a namespace's kernel state (nftables, routes) from Python."""

from __future__ import annotations

import subprocess
import sys
import uuid


def run_in_new_netns(prefix: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The finished `python -c script` run inside a fresh namespace named `prefix` + 6 hex."""
    netns = f"{prefix}{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
