"""percale-node's health and metrics over HTTP: /livez, /readyz and /metrics.

    /livez    200 while the agent's event loop answers at all
    /readyz   200 once the datastore answered the last sync, the kernel was reconciled at least
              once, and every configured BGP peer is Established; else 503 and the reasons
    /metrics  Prometheus text: percale_bgp_sessions{state}, percale_bgp_routes_learned,
              percale_bgp_routes_programmed, percale_bgp_sync_seconds (a sync ends with the
              node's announcements sent, so it bounds the claim-to-announce delay)

A tiny asyncio server (two paths and a text body do not need a web framework); the metrics are
read from the BGP driver when asked, so nothing can drift.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

SYNC_SECONDS = Histogram(
    "percale_bgp_sync_seconds", "Time of one pass from the datastore to ExaBGP (announcements sent)",
    registry=None, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class _BGPCollector:
    def __init__(self, bgp: Any):
        self.bgp = bgp

    def collect(self):
        sessions = GaugeMetricFamily("percale_bgp_sessions", "BGP sessions by state", labels=["state"])
        counts: dict[str, int] = {}
        for status in self.bgp.peers.values():
            state = "established" if status.state == "up" else "not_established"
            counts[state] = counts.get(state, 0) + 1
        for state in ("established", "not_established"):
            sessions.add_metric([state], counts.get(state, 0))
        yield sessions
        learned = len(self.bgp.rib.fib) if self.bgp.rib is not None else 0
        yield GaugeMetricFamily("percale_bgp_routes_learned", "Prefixes the RIB wants in the kernel",
                                value=learned)
        programmed = len(self.bgp.fib.programmed) if self.bgp.fib is not None else 0
        yield GaugeMetricFamily("percale_bgp_routes_programmed", "BGP routes percale holds in the kernel",
                                value=programmed)


def registry_for(bgp: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_BGPCollector(bgp))
    registry.register(SYNC_SECONDS)
    return registry


def readiness(bgp: Any) -> list[str]:
    """Why the node is not ready; [] when it is."""
    problems = []
    if not bgp.synced:
        problems.append("the datastore has not answered a sync yet")
    if bgp.fib is not None and not bgp.reconciled:
        problems.append("the kernel's routes have not been reconciled yet")
    down = [a for a, s in sorted(bgp.peers.items()) if s.state != "up"]
    if down:
        problems.append("BGP not established with " + ", ".join(down))
    return problems


async def serve(bgp: Any, host: str, port: int) -> asyncio.AbstractServer:
    registry = registry_for(bgp)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readline()).decode(errors="replace").split()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed
            path = request[1] if len(request) > 1 else "/"
            if path == "/livez":
                status, body, kind = 200, b"ok\n", "text/plain"
            elif path == "/readyz":
                problems = readiness(bgp)
                status = 503 if problems else 200
                body = ("\n".join(problems) + "\n" if problems else "ok\n").encode()
                kind = "text/plain"
            elif path == "/metrics":
                status, body, kind = 200, generate_latest(registry), "text/plain; version=0.0.4"
            else:
                status, body, kind = 404, b"not found\n", "text/plain"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)

