"""percale-node refuses bad settings at start with one line naming the option, before it
touches the datastore or the kernel: a bogus MTU interface pattern, a non-numeric MTU, an unknown
networking backend, a router ID that is none. (A pool with VXLAN and IPIP both on is refused by
the resource model: tests/unit/test_resources.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli

AGENT = str(Path(sys.executable).parent / "percale-node")


def start(*args: str) -> subprocess.CompletedProcess:
    # An etcd nobody runs: a bad option must be refused before the agent would wait for it.
    return subprocess.run([AGENT, "--etcd-endpoints", "http://127.0.0.1:1", *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args, words", [
    (["--mtu-iface-pattern", "(eth"], "--mtu-iface-pattern: '(eth' is not a regular expression"),
    (["--mtu", "lots"], "Invalid value for '--mtu'"),
    (["--mtu", "70000"], "Invalid value for '--mtu'"),
    (["--networking-backend", "calico"], "--networking-backend: 'calico' is not bgp, vxlan or none"),
    (["--router-id", "node-1"], "--router-id: 'node-1' is neither 'hash' nor an IPv4 address"),
])
def test_bad_options_are_refused_at_start_naming_the_option(args, words):
    done = start(*args)
    assert done.returncode != 0
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
