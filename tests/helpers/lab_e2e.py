"""For the end-to-end lab tests (tests/lab/): a topology brought up with the runner percalectl uses,
and always brought down again (also after a failure, and left over from a crashed run)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

from percale.dataplane.route_owners import RouteProtocol
from percale.lab import pods
from percale.lab.runner import Lab, open_lab

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


@contextlib.contextmanager
def running(topology: str | Path) -> Iterator[Lab]:
    """The lab of `topology` (a path, or a name under topologies/) up for the block's length."""
    path = Path(topology)
    if not path.is_absolute() and not path.exists():
        path = TOPOLOGIES / f"{topology}.clab.yml"
    lab = open_lab(path)
    lab.down()  # a crashed earlier run's leftovers
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def wait_for(check, timeout: float, interval: float = 0.25):
    """Poll until `check()` is truthy; returns its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def node_status(lab: Lab, node: str) -> dict[str, tuple[str, str]]:
    """`percalectl node status` in the node: peer address -> (STATE, INFO), read off the table
    a user sees."""
    out = lab.exec(node, ["percalectl", "node", "status"], capture=True).stdout
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.match(r"^[0-9a-f.:]+$", cells[0]):
            rows[cells[0]] = (cells[2], cells[4])
    return rows


def all_established(lab: Lab, node: str, expected: int) -> bool:
    rows = node_status(lab, node)
    return len(rows) == expected and all(info == "Established" for _, info in rows.values())


def kernel_routes(lab: Lab, node: str, proto: int = RouteProtocol.BGP) -> dict[str, str | None]:
    """The node's IPv4 routes of one protocol: prefix -> gateway."""
    import json

    out = lab.exec(node, ["ip", "-j", "-4", "route", "show", "proto", str(proto)],
                   capture=True).stdout
    found = json.loads(out or "[]")
    return {r["dst"] if "/" in r["dst"] else f"{r['dst']}/32": r.get("gateway") for r in found}


def failed_pairs(lab: Lab) -> list[tuple[str, str]]:
    return sorted(pair for pair, ok in pods.ping_matrix(lab).items() if not ok)


def every_pod_reaches_every_pod(lab: Lab, timeout: float = 30) -> list[tuple[str, str]]:
    """[] once every pod pings every other pod; else the pairs still failing at the timeout."""
    failing: list = []

    def check():
        failing[:] = failed_pairs(lab)
        return not failing

    wait_for(check, timeout, interval=0.5)
    return failing

