"""percale-node's health and metrics over HTTP: /livez, /readyz and /metrics.

    /livez    200 while the agent's event loop answers at all
    /readyz   200 once the agent's view of the datastore is listed, its BGP configuration is
              applied, the kernel was reconciled at least once, and every configured BGP peer is
              Established; else 503 and the reasons
    /metrics  Prometheus text: percale_bgp_sessions{state}, percale_bgp_routes_learned,
              percale_bgp_routes_programmed, percale_bgp_sync_seconds (one pass from a change
              of the node's blocks to its announcements sent: the claim-to-announce delay);
              percale_datastore_requests_total{method} (every request to etcd: Range, Txn,
              Watch, ...), percale_datastore_view_events_total, percale_datastore_view_lists_total,
              percale_datastore_view_polls_total, percale_datastore_view_unreadable_objects{kind}
              (stored objects the view leaves out because they cannot be read; the log says why)

A tiny asyncio server (two paths and a text body do not need a web framework); the metrics are
read from the agent's parts when asked, so nothing can drift.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

SYNC_SECONDS = Histogram(
    "percale_bgp_sync_seconds", "Time of one pass from the datastore to ExaBGP (announcements sent)",
    registry=None, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class PeerState(Protocol):
    state: str


class BGPHealth(Protocol):
    """What health reads of the BGP agent (bgpd.agent.BGPAgent)."""

    @property
    def peers(self) -> Mapping[str, PeerState]: ...
    @property
    def rib(self) -> Any: ...
    @property
    def fib(self) -> Any: ...
    @property
    def synced(self) -> bool: ...
    @property
    def reconciled(self) -> bool: ...


class _BGPCollector:
    def __init__(self, bgp: BGPHealth):
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


class _DatastoreCollector:
    def __init__(self, datastore: Any, cache: Any):
        self.datastore, self.cache = datastore, cache

    def collect(self):
        requests = CounterMetricFamily("percale_datastore_requests",
                                       "Requests this agent made to the datastore", labels=["method"])
        counts = getattr(getattr(self.datastore, "client", None), "requests", {})
        for method, count in sorted(counts.items()):
            requests.add_metric([method], count)
        yield requests
        if self.cache is not None:
            yield CounterMetricFamily("percale_datastore_view_events",
                                      "Watch events applied to the agent's view", value=self.cache.events)
            yield CounterMetricFamily("percale_datastore_view_lists",
                                      "Lists that filled the agent's view (one per kind, and one per "
                                      "kind whose history was compacted)", value=self.cache.lists)
            yield CounterMetricFamily("percale_datastore_view_polls",
                                      "Reads of what changed in a kind that was too busy to follow "
                                      "event by event", value=self.cache.polls)
            unreadable = GaugeMetricFamily(
                "percale_datastore_view_unreadable_objects",
                "Stored objects the agent's view leaves out because their value cannot be decoded "
                "or validated (the agent's log names each and says why)", labels=["kind"])
            counts = Counter(key.kind for key in self.cache.unreadable)
            for kind in self.cache.kinds:
                unreadable.add_metric([kind], counts.get(kind, 0))
            yield unreadable


# A policy rule's nft comment: "<Kind>/<id> <direction> <index> <action>" (policy/compile.py).
_RULE_COMMENT = re.compile(r"(?P<policy>\S+) (?P<direction>ingress|egress) (?P<index>\d+) (?P<action>Allow|Deny|Pass|Log)")


class _PolicyCollector:
    """Packets and bytes per policy rule, read from the nft counters of the node's table."""

    def __init__(self, policy: Any):
        self.policy = policy

    def collect(self):
        packets = CounterMetricFamily("percale_policy_packets", "Packets that matched a policy rule",
                                      labels=["policy", "rule", "action"])
        size = CounterMetricFamily("percale_policy_bytes", "Bytes that matched a policy rule",
                                   labels=["policy", "rule", "action"])
        applied = self.policy.table.applied
        shortened = applied.shortened if applied else {}
        for comment, (count, octets) in sorted(self.policy.table.counters().items()):
            match = _RULE_COMMENT.fullmatch(comment)
            if match:
                # A name too long for nft's comment was cut there (policy.compile); whole here.
                policy = shortened.get(match["policy"], match["policy"])
                labels = [policy, f"{match['direction']} {match['index']}", match["action"]]
                packets.add_metric(labels, count)
                size.add_metric(labels, octets)
        yield packets
        yield size
        yield GaugeMetricFamily("percale_policy_endpoints", "Local endpoints with policy chains",
                                value=len(applied.from_endpoint) if applied else 0)
        yield GaugeMetricFamily("percale_policy_last_apply_seconds",
                                "How long the last nft transaction took", value=self.policy.last_apply_seconds)


def registry_for(bgp: BGPHealth, datastore: Any = None, cache: Any = None,
                 policy: Any = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_BGPCollector(bgp))
    registry.register(_DatastoreCollector(datastore, cache))
    if policy is not None:
        registry.register(_PolicyCollector(policy))
    registry.register(SYNC_SECONDS)
    return registry


def readiness(bgp: BGPHealth, cache: Any = None) -> list[str]:
    """Why the node is not ready; [] when it is."""
    problems = []
    if cache is not None and not cache.synced:
        problems.append("the agent's view of the datastore is not listed yet")
    if not bgp.synced:
        problems.append("BGP has not been configured from the datastore yet")
    if bgp.fib is not None and not bgp.reconciled:
        problems.append("the kernel's routes have not been reconciled yet")
    down = [a for a, s in sorted(bgp.peers.items()) if s.state != "up"]
    if down:
        problems.append("BGP not established with " + ", ".join(down))
    return problems


class Endpoints:
    """The health and metrics listener, in two steps: `bind` takes the address when the node
    starts, so one it cannot have (not on this machine, in use) stops it before it registers,
    and `serve` begins answering once the parts it reports on exist."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self._answer: Handler | None = None

    async def bind(self, host: str, port: int) -> None:
        """OSError if this machine cannot listen there."""
        self.server = await asyncio.start_server(self._connected, host, port, start_serving=False)

    async def serve(self, bgp: BGPHealth, *, datastore: Any = None, cache: Any = None,
                    policy: Any = None) -> None:
        assert self.server is not None, "bind() first"
        self._answer = _answering(registry_for(bgp, datastore, cache, policy), bgp, cache)
        await self.server.start_serving()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._answer is not None  # connections are accepted only once serve() set it
        await self._answer(reader, writer)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(bgp: BGPHealth, host: str, port: int, *, datastore: Any = None,
                cache: Any = None, policy: Any = None) -> asyncio.AbstractServer:
    """Bind and answer at once."""
    endpoints = Endpoints()
    await endpoints.bind(host, port)
    await endpoints.serve(bgp, datastore=datastore, cache=cache, policy=policy)
    assert endpoints.server is not None
    return endpoints.server


def _answering(registry: CollectorRegistry, bgp: BGPHealth, cache: Any) -> Handler:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readline()).decode(errors="replace").split()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed
            path = request[1] if len(request) > 1 else "/"
            if path == "/livez":
                status, body, kind = 200, b"ok\n", "text/plain"
            elif path == "/readyz":
                problems = readiness(bgp, cache)
                status = 503 if problems else 200
                body = ("\n".join(problems) + "\n" if problems else "ok\n").encode()
                kind = "text/plain"
            elif path == "/metrics":
                # The policy counters come from nft: off the event loop.
                body = await asyncio.to_thread(generate_latest, registry)
                status, kind = 200, "text/plain; version=0.0.4"
            else:
                status, body, kind = 404, b"not found\n", "text/plain"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        finally:
            writer.close()

    return answer

