"""A FIB inside a network namespace, driven from outside: the netns tests and bench/fib.py use it.

`FibNamespace` makes a namespace with a veth uplink whose two ends both stay inside it
(10.0.0.1/24 and 2001:db8::1/64 on `uplink`, so next hops on those subnets resolve), and removes it
by name. `FibWorker` runs this file as a process inside that namespace (`ip netns exec`), where
it holds one `percale.dataplane.fib.FIB` and answers one JSON command per line on stdin:

    {"op": "open", "adopt": true, "table": 254}        a new FIB (closing the previous one)
    {"op": "apply", "changes": {prefix: [hop, ...] | null}}
    {"op": "replace_all", "routes": {prefix: [hop, ...]}}
    {"op": "reconcile"} | {"op": "adopt"} | {"op": "desired"}
    {"op": "install", "count": n, "base": "11.0.0.0/8", "prefixlen": 26, "via": "10.0.0.2"}
        n prefixes built first, then one timed apply(): "seconds" is apply() alone

A hop is an address string or {"gateway": ..., "dev": ..., "onlink": ...}. Every answer is one
JSON line: {"ok": true, ...} with the Outcome, or {"ok": false, "error": ..., "type": ...}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[2]
UPLINK = "uplink"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


class FibNamespace:
    def __init__(self, prefix: str = "pfib") -> None:
        self.name = f"{prefix}{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def create(self) -> FibNamespace:
        sh("ip", "netns", "add", self.name)
        try:
            self.ip("link", "set", "lo", "up")
            self.ip("link", "add", UPLINK, "type", "veth", "peer", "name", f"{UPLINK}-peer")
            self.ip("link", "set", UPLINK, "up")
            self.ip("link", "set", f"{UPLINK}-peer", "up")
            self.ip("addr", "add", "10.0.0.1/24", "dev", UPLINK)
            self.ip("-6", "addr", "add", "2001:db8::1/64", "dev", UPLINK, "nodad")
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.name, *args, check=check)

    def routes(self, proto: int | str, family: int = 4, table: str = "main") -> list[dict]:
        out = self.ip(f"-{family}", "-json", "route", "show", "table", table,
                      "proto", str(proto)).stdout
        return json.loads(out or "[]")

    def ifindex(self, name: str = UPLINK) -> int:
        return json.loads(self.ip("-json", "link", "show", name).stdout)[0]["ifindex"]

    def worker(self) -> FibWorker:
        return FibWorker(self.name)


class FibWorker:
    """One worker process in `netns`; call(op, **args) returns its answer, raising on an error."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.helpers.fib_worker"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, op: str, **args: object) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fib worker exited ({self.proc.wait()}) during {op}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"{answer['type']}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the worker side, run inside the namespace -------------------------------------------------

def _hop(spec):
    import socket

    from percale.dataplane.fib import NextHop

    if isinstance(spec, str):
        return NextHop(spec)
    ifindex = socket.if_nametoindex(spec["dev"]) if spec.get("dev") else 0
    return NextHop(spec["gateway"], ifindex, bool(spec.get("onlink")))


def _routes(spec: dict) -> dict:
    return {prefix: None if hops is None else [_hop(h) for h in hops]
            for prefix, hops in spec.items()}


def _outcome(outcome) -> dict:
    return {"added": outcome.added, "replaced": outcome.replaced, "deleted": outcome.deleted,
            "adopted": outcome.adopted, "failed": {str(p): r for p, r in outcome.failed.items()}}


def _serve() -> None:
    import ipaddress

    from percale.dataplane.fib import FIB, NextHop

    fib = None
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            answer: dict = {"ok": True}
            if op == "open":
                if fib is not None:
                    fib.close()
                started = time.perf_counter()
                fib = FIB(**command)
                answer["seconds"] = time.perf_counter() - started
                answer["desired"] = len(fib.desired)
            elif op == "apply":
                answer["outcome"] = _outcome(fib.apply(_routes(command["changes"])))
            elif op == "replace_all":
                answer["outcome"] = _outcome(fib.replace_all(_routes(command["routes"])))
            elif op == "reconcile":
                started = time.perf_counter()
                answer["outcome"] = _outcome(fib.reconcile())
                answer["seconds"] = time.perf_counter() - started
            elif op == "adopt":
                answer["outcome"] = _outcome(fib.adopt())
            elif op == "desired":
                answer["desired"] = {str(p): sorted(str(h.gateway) for h in hops)
                                     for p, hops in fib.desired.items()}
            elif op == "install":
                base = ipaddress.ip_network(command["base"])
                hops = frozenset({NextHop(command["via"])})
                subnets = base.subnets(new_prefix=command["prefixlen"])
                changes = {next(subnets): hops for _ in range(command["count"])}
                started = time.perf_counter()
                outcome = fib.apply(changes)
                answer["seconds"] = time.perf_counter() - started
                answer["outcome"] = _outcome(outcome)
            else:
                raise ValueError(f"unknown op {op}")
        except Exception as err:  # noqa: BLE001 - reported to the caller, which fails with it
            answer = {"ok": False, "error": str(err), "type": type(err).__name__}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    if fib is not None:
        fib.close()


if __name__ == "__main__":
    _serve()
