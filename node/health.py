"""percale-node's health and metrics over HTTP: /livez, /readyz and /metrics.

    /livez    200 while the agent's event loop answers at all: from the moment the address is
              bound, so an agent waiting for its datastore at start is alive, not restarted
    /readyz   200 once the agent's view of the datastore is listed, its BGP configuration is
              applied, the kernel was reconciled at least once, and every configured BGP peer is
              Established (ExaBGP running: a dead one's sessions are not); else 503 and the
              reasons, among them "starting" until the agent's parts are attached
    /metrics  Prometheus text: percale_bgp_sessions{state}, percale_bgp_routes_learned,
              percale_bgp_routes_programmed, percale_bgp_sync_seconds (one pass from a change
              of the node's blocks to its announcements sent: the claim-to-announce delay);
              percale_datastore_requests_total{method} (every request to etcd: Range, Txn,
              Watch, ...), percale_datastore_view_events_total, percale_datastore_view_lists_total,
              percale_datastore_view_polls_total, percale_datastore_view_unreadable_objects{kind}
              (stored objects the view leaves out because they cannot be read; the log says why);
              503 while starting

A tiny asyncio server (two paths and a text body do not need a web framework); the metrics are
read from the agent's parts when asked, so nothing can drift. They are read on the event loop,
the only thread that changes those parts; only nft's counters are read in a worker thread.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from percale.bgpd.status import BGPState, NodeView, view_of

SYNC_SECONDS = Histogram(
    "percale_bgp_sync_seconds", "Time of one pass from the datastore to ExaBGP (announcements sent)",
    registry=None, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class BGPHealth(BGPState, Protocol):
    """What health reads of the BGP agent (bgpd.agent.BGPAgent, or bgpd.status.NoBGP): what
    `node status` reads, and how far it got."""

    @property
    def fib(self) -> Any: ...
    @property
    def synced(self) -> bool: ...
    @property
    def reconciled(self) -> bool: ...


def sessions(bgp: BGPHealth, view: NodeView | None = None) -> dict[str, bool]:
    """Each configured session's peer address -> whether it is Established, as `node status`
    sees it (bgpd.status.view_of): /readyz and /metrics both read this. The peer table alone
    kept saying Established after ExaBGP died, since a dead ExaBGP says `down` for nothing; a
    session is up only while ExaBGP runs and last said so."""
    configured = list(bgp.peers)
    if not configured:
        return {}  # nothing to hold, whether or not ExaBGP runs
    view = view or view_of(bgp)
    if not view.bgp_running:
        return dict.fromkeys(configured, False)
    return {row.address: row.state == "up" for row in view.peers}


class _BGPCollector:
    def __init__(self, bgp: BGPHealth):
        self.bgp = bgp

    def collect(self):
        by_state = GaugeMetricFamily("percale_bgp_sessions", "BGP sessions by state",
                                     labels=["state"])
        established = list(sessions(self.bgp).values())
        by_state.add_metric(["established"], established.count(True))
        by_state.add_metric(["not_established"], established.count(False))
        yield by_state
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
    """Packets and bytes per policy rule, from the nft counters of the node's table (`counters`,
    read beforehand: nft is a process to wait for, so it is read off the event loop)."""

    def __init__(self, policy: Any, counters: Mapping[str, tuple[int, int]]):
        self.policy, self.counters = policy, counters

    def collect(self):
        packets = CounterMetricFamily("percale_policy_packets", "Packets that matched a policy rule",
                                      labels=["policy", "rule", "action"])
        size = CounterMetricFamily("percale_policy_bytes", "Bytes that matched a policy rule",
                                   labels=["policy", "rule", "action"])
        applied = self.policy.table.applied
        shortened = applied.shortened if applied else {}
        for comment, (count, octets) in sorted(self.counters.items()):
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


def registry_for(bgp: BGPHealth, datastore: Any = None, cache: Any = None) -> CollectorRegistry:
    """The agent's metrics but the policy counters (`metrics_text` adds those)."""
    registry = CollectorRegistry()
    registry.register(_BGPCollector(bgp))
    registry.register(_DatastoreCollector(datastore, cache))
    registry.register(SYNC_SECONDS)
    return registry


async def metrics_text(bgp: BGPHealth, *, datastore: Any = None, cache: Any = None,
                       policy: Any = None) -> bytes:
    """/metrics' body. Collected on the event loop, which alone changes what the collectors
    read (the peer table, the view's unreadable objects, the etcd client's request counts):
    collected in a worker thread, a scrape iterating one of them while the loop changed it
    died of "dictionary changed size during iteration", and Prometheus got no answer. The nft
    counters, a process to wait for, are read in a thread first."""
    registry = registry_for(bgp, datastore, cache)
    if policy is not None:
        counters = await asyncio.to_thread(policy.table.counters)
        registry.register(_PolicyCollector(policy, counters))
    return generate_latest(registry)


def readiness(bgp: BGPHealth, cache: Any = None) -> list[str]:
    """Why the node is not ready; [] when it is."""
    problems = []
    if cache is not None and not cache.synced:
        problems.append("the agent's view of the datastore is not listed yet")
    if not bgp.synced:
        problems.append("BGP has not been configured from the datastore yet")
    if bgp.fib is not None and not bgp.reconciled:
        problems.append("the kernel's routes have not been reconciled yet")
    view = view_of(bgp)
    held = sessions(bgp, view)
    if held and not view.bgp_running:
        problems.append("the BGP backend process (ExaBGP) is not running")
    down = [address for address, up in sorted(held.items()) if not up]
    if down:
        problems.append("BGP not established with " + ", ".join(down))
    return problems


# What /readyz says until the agent's parts are attached: it registers the node first, and
# waits as long as the datastore is unreachable.
STARTING = "starting: registering the node (waiting for the datastore to be reachable)"


class Endpoints:
    """The health and metrics listener, in two steps: `bind` takes the address when the node
    starts, so one it cannot have (not on this machine, in use) stops it before it registers,
    and answers from then on: /livez 200, /readyz and /metrics 503 "starting". `attach` hands
    it the parts it reports on, once they exist.

    Answering from bind time is what keeps kubelet's liveness probe from killing an agent that
    waits for its datastore (register_when_reachable waits as long as it takes): a refused
    connection counts as a failed probe, and six of them restarted it, CrashLoopBackOff."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self._answer: Handler = _answering(None)

    async def bind(self, host: str, port: int) -> None:
        """OSError if this machine cannot listen there."""
        self.server = await asyncio.start_server(self._connected, host, port)

    def attach(self, bgp: BGPHealth, *, datastore: Any = None, cache: Any = None,
               policy: Any = None) -> None:
        self._answer = _answering(_Parts(bgp, datastore, cache, policy))

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
    endpoints.attach(bgp, datastore=datastore, cache=cache, policy=policy)
    assert endpoints.server is not None
    return endpoints.server


@dataclass(frozen=True)
class _Parts:
    """What the endpoints report on, once the agent has it."""

    bgp: BGPHealth
    datastore: Any
    cache: Any
    policy: Any


def _answering(parts: _Parts | None) -> Handler:
    """The handler of each connection; `parts` None: the agent is still starting."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readline()).decode(errors="replace").split()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed
            path = request[1] if len(request) > 1 else "/"
            if path == "/livez":
                status, body, kind = 200, b"ok\n", "text/plain"
            elif path not in ("/readyz", "/metrics"):
                status, body, kind = 404, b"not found\n", "text/plain"
            elif parts is None:
                status, body, kind = 503, f"{STARTING}\n".encode(), "text/plain"
            elif path == "/readyz":
                problems = readiness(parts.bgp, parts.cache)
                status = 503 if problems else 200
                body = ("\n".join(problems) + "\n" if problems else "ok\n").encode()
                kind = "text/plain"
            else:
                body = await metrics_text(parts.bgp, datastore=parts.datastore,
                                          cache=parts.cache, policy=parts.policy)
                status, kind = 200, "text/plain; version=0.0.4"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        finally:
            writer.close()

    return answer

