"""The blackhole routes for a node's own blocks (bgpd/blackholes.py), in a namespace of their
own: exactly the blocks, other routes untouched, and a route deleted behind its back put back
when the agent's periodic check asks for it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from percale.dataplane.route_owners import RouteProtocol

pytestmark = pytest.mark.netns

SCRIPT = """
import json, sys
from percale.dataplane.blackholes import Blackholes
holes = Blackholes()
for line in sys.stdin:
    step = json.loads(line)
    holes.sync(step["blocks"], check=step["check"])
    print(json.dumps(sorted(holes.current())), flush=True)
"""


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "ip", *args], check=True,
                          capture_output=True, text=True).stdout


def test_blackholes_follow_the_blocks_and_the_check_repairs():
    ns = f"bh{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    agent = None
    try:
        ip(ns, "link", "set", "lo", "up")
        # Other owners' routes, including another blackhole: never touched.
        ip(ns, "route", "add", "10.9.0.0/26", "dev", "lo", "proto", str(RouteProtocol.BGP))
        ip(ns, "route", "add", "blackhole", "10.8.0.0/26")
        agent = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def sync(blocks, check=False):
            agent.stdin.write(json.dumps({"blocks": blocks, "check": check}) + "\n")
            agent.stdin.flush()
            return json.loads(agent.stdout.readline())

        assert sync(["10.244.0.0/26", "fd00:10::/122"]) == ["10.244.0.0/26", "fd00:10::/122"]
        assert sync(["10.244.0.0/26", "10.244.0.64/26"]) == ["10.244.0.0/26", "10.244.0.64/26"]
        ip(ns, "route", "del", "blackhole", "10.244.0.0/26", "proto", str(RouteProtocol.BLACKHOLE))
        # Without a check it trusts what it installed; the periodic check repairs.
        assert sync(["10.244.0.0/26", "10.244.0.64/26"]) == ["10.244.0.64/26"]
        assert sync(["10.244.0.0/26", "10.244.0.64/26"], check=True) == [
            "10.244.0.0/26", "10.244.0.64/26"]
        # A block of one address (blockSize 32 or 128) gets none: that route is its pod's.
        assert sync(["10.244.0.0/26", "10.244.7.5/32", "fd00:244::5/128"]) == ["10.244.0.0/26"]
        assert sync([]) == []
        assert "10.9.0.0/26 dev lo proto 202" in ip(ns, "route")
        assert "blackhole 10.8.0.0/26" in ip(ns, "route")
    finally:
        if agent is not None:
            agent.stdin.close()
            agent.wait(10)
        subprocess.run(["ip", "netns", "del", ns], check=False)
