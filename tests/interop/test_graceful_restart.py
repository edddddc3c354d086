"""Restarts that must not cost a route or a packet: percale-node stopped and started again
(graceful restart, against GoBGP and BIRD), its ExaBGP killed and restarted by the agent, routes
withdrawn while the node was away, and a continuous ping between pods on two meshed nodes while
one node's agent restarts.

While a restart is under way a sampler thread reads the peer's RIB and the node's kernel every
100 ms, so a route that disappears for a moment is caught, not only one that stays away. Each
restart (`Restart`: agent or ExaBGP, against GoBGP or BIRD) runs once and is judged twice: does
the peer keep the node's block, does the node's kernel keep the peer's route.

Several of these tests caught bugs in bgpd when they were written; they stay as guards.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import ClassVar, Self

import pytest

from percale.dataplane.route_owners import RouteProtocol

from tests.helpers.bgp_lab import (
    BirdPeer,
    Router,
    bird_config,
    block_of,
    diagnose,
    far_block,
    resource,
    setup_store,
    wait_for,
)
from tests.helpers.cni_node import CNINode

pytestmark = pytest.mark.interop

NODE_IP = "10.99.0.1"
CLUSTER_AS = 64512
PROTO_BGP = RouteProtocol.BGP


class Sampler:
    """Calls `probe` every `interval` seconds on a thread until stopped; keeps (time, result)."""

    def __init__(self, probe: Callable[[], object], interval: float = 0.1):
        self.probe, self.interval = probe, interval
        self.samples: list[tuple[float, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.probe()))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def failures(self, ok: Callable[[object], bool]) -> list[tuple[float, object]]:
        start = self.samples[0][0] if self.samples else 0
        return [(round(t - start, 2), r) for t, r in self.samples if not ok(r)]


# -- the peer: GoBGP or BIRD, behind one interface ------------------------------------------------


class GoBGP:
    name = "gobgp"

    def __init__(self, router: Router):
        self.router = router

    def start(self, pool_route: str) -> None:
        self.router.gobgp([(NODE_IP, CLUSTER_AS)])
        self.announce(pool_route)

    def announce(self, prefix: str) -> None:
        self.router.exec(self.router.ns, "gobgp", "global", "rib", "add", "-a", "ipv4", prefix,
                         "nexthop", self.router.ip)

    def withdraw(self, prefix: str) -> None:
        self.router.exec(self.router.ns, "gobgp", "global", "rib", "del", "-a", "ipv4", prefix)

    def established(self) -> bool:
        return self.router.gobgp_established(NODE_IP)

    def route(self, prefix: str) -> str | None:
        """'fresh', 'stale' or None: GoBGP marks what graceful restart keeps."""
        paths = [p for p in self.router.gobgp_rib().get(prefix, []) if p.get("neighbor-ip") == NODE_IP]
        if not paths:
            return None
        return "stale" if paths[0].get("stale") else "fresh"


class Bird:
    name = "bird"

    def __init__(self, router: Router):
        self.router = router
        self.static: list[str] = []

    def config(self) -> str:
        return bird_config(self.router.ip, [
            BirdPeer("node_a", self.router.ip, CLUSTER_AS, NODE_IP, CLUSTER_AS, export="static",
                     debug=True),
        ], static=self.static)

    def start(self, pool_route: str) -> None:
        self.static = [pool_route]
        self.router.bird(self.config())

    def withdraw(self, prefix: str) -> None:
        self.static.remove(prefix)
        self.router.bird_reconfigure(self.config())

    def established(self) -> bool:
        return self.router.bird_established("node_a")

    def route(self, prefix: str) -> str | None:
        # BIRD 2.0.12 does not show which routes graceful restart keeps: only present or not.
        return "fresh" if prefix in self.router.bird_routes("node_a") else None


def bird_flushed(log: str, block: str) -> str | None:
    """What went wrong for `block` in BIRD's trace of a session coming back after our restart,
    or None. Graceful restart done right: the node's UPDATE for the block reaches BIRD before the
    node's End-of-RIB, so the stale route is refreshed ("ignored": unchanged) and never removed.
    An End-of-RIB first makes BIRD sweep it ("removed"), however briefly; whether the sweep runs
    before the UPDATE lands is a race, the order of the two messages is not."""
    lines = log.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if "BGP session established" in line)
    except ValueError:
        return "the session never came back"
    lines = lines[start:]
    if any("removed" in line and f" {block} " in line for line in lines):
        return f"BIRD removed {block}"
    eor = next((i for i, line in enumerate(lines) if "Got END-OF-RIB" in line), None)
    route = next((i for i, line in enumerate(lines)
                  if f" {block} " in line and re.search(r"> (added|ignored|updated)", line)), None)
    if route is None:
        return f"the node never re-announced {block}"
    if eor is not None and eor < route:
        return f"End-of-RIB before the UPDATE for {block}:\n" + "\n".join(lines[:route + 1])
    return None


def node_with_peer(etcd, router: Router, node: CNINode, peer) -> tuple[str, str]:
    """The node on the router's segment, peering with `peer` (iBGP); a pod on it. Returns (the
    node's block, a pool route the peer announces), both already where they belong."""
    router.up()
    node.start()
    router.attach(node.netns, f"{NODE_IP}/24")
    pool_route = far_block(node.name)
    peer.start(pool_route)
    setup_store(
        etcd,
        resource("Node", node.name, {"bgp": {"ipv4Address": f"{NODE_IP}/24"}}),
        resource("BGPPeer", "peer", {"peerIP": router.ip, "asNumber": CLUSTER_AS}),
    )
    assert wait_for(peer.established, 15), diagnose(router, node)
    _, pod_ip = node.add_pod()
    block = block_of(pod_ip)
    assert wait_for(lambda: peer.route(block) == "fresh", 10), diagnose(router, node)
    assert wait_for(lambda: node.routes(PROTO_BGP).get(pool_route) == router.ip, 10), (
        diagnose(router, node))
    return block, pool_route


def test_route_withdrawn_while_agent_down_leaves_the_kernel(etcd):
    router, node = Router(), CNINode(etcd.unix_endpoint)
    peer = GoBGP(router)
    try:
        block, pool_route = node_with_peer(etcd, router, node, peer)
        node.stop_agent()
        peer.withdraw(pool_route)
        node.start_agent()
        assert wait_for(peer.established, 15), diagnose(router, node)
        assert wait_for(lambda: peer.route(block) == "fresh", 10), diagnose(router, node)
        # GoBGP sent its End-of-RIB with the new session; the route is not in it.
        assert wait_for(lambda: pool_route not in node.routes(PROTO_BGP), 5), (
            f"{pool_route} still in the kernel: {node.routes(PROTO_BGP)}")
    finally:
        node.stop()
        router.down()


class SlowDatastore:
    """From the moment the node's (new) ExaBGP is running, etcd answers nothing for `pause`
    seconds (SIGSTOP, SIGCONT): the agent's first pass after a restart, which reads the node's
    blocks to re-announce them, then surely ends after the session is back. Without it the two
    race (a restart against BIRD sends End-of-RIB first in about 5 runs of 6)."""

    def __init__(self, etcd, node: CNINode, old_exabgp: int | None, pause: float = 1.0):
        self.etcd, self.node, self.old, self.pause = etcd, node, old_exabgp, pause
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.paused = False

    def _run(self) -> None:
        if not wait_for(lambda: self.node.exabgp_pid() not in (None, self.old), 20, interval=0.005):
            return
        os.kill(self.etcd.process.pid, signal.SIGSTOP)
        self.paused = True
        try:
            time.sleep(self.pause)
        finally:
            os.kill(self.etcd.process.pid, signal.SIGCONT)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join()


class Restart:
    """One run of a restart on the node while it peers with GoBGP or BIRD, the peer's RIB and
    the node's kernel sampled every 100 ms throughout:
      * "agent": SIGTERM percale-node, a second away, start it again;
      * "exabgp": SIGKILL the agent's ExaBGP; the agent starts a new one.
    Two tests judge each run, the peer's side and the kernel's, so it runs once per case.
    Against BIRD the datastore is slow just after ExaBGP starts (SlowDatastore): BIRD takes a
    session at once, and this makes the order of session and re-announcement certain."""

    runs: ClassVar[dict[tuple[str, str], Restart]] = {}

    def __init__(self, etcd, how: str, peer_kind):
        router, node = Router(), CNINode(etcd.unix_endpoint)
        peer = peer_kind(router)
        self.router_ip, self.stale_seen, self.bird_problem = router.ip, False, None
        try:
            self.block, pool_route = node_with_peer(etcd, router, node, peer)
            old = node.exabgp_pid()
            assert old is not None, node.agent_children()
            mark = len(router.bird_log()) if isinstance(peer, Bird) else 0

            def probe():
                return peer.route(self.block), node.routes(PROTO_BGP).get(pool_route)

            with Sampler(probe) as self.sampler:
                time.sleep(0.3)
                slow = SlowDatastore(etcd, node, old) if isinstance(peer, Bird) else nullcontext()
                if how == "agent":
                    node.stop_agent()
                    assert wait_for(lambda: not peer.established(), 5)
                    time.sleep(1)  # the agent stays away a while
                    assert node.routes(PROTO_BGP).get(pool_route) == router.ip
                    with slow:
                        node.start_agent()
                else:
                    with slow:
                        os.kill(old, signal.SIGKILL)
                        assert wait_for(lambda: node.exabgp_pid() not in (None, old), 10), (
                            node.agent_children())
                assert wait_for(peer.established, 15), diagnose(router, node)
                assert wait_for(lambda: peer.route(self.block) == "fresh", 10), diagnose(router, node)
                fresh_at = time.monotonic()
                time.sleep(1)  # and a while after, for anything swept late
            # The sampler ran throughout: before the restart, and for the second after it. (A
            # count of samples said the same until restarts got quick enough to fall under it.)
            times = [t for t, _ in self.sampler.samples]
            assert times and times[0] < fresh_at - 0.25, times[:3]
            assert times[-1] > fresh_at + 0.5, (fresh_at, times[-3:])
            assert node.agent.poll() is None, "the agent died"
            assert not isinstance(slow, SlowDatastore) or slow.paused, "etcd was never paused"
            self.stale_seen = any(r[0] == "stale" for _, r in self.sampler.samples)
            if isinstance(peer, Bird):
                self.bird_problem = bird_flushed(router.bird_log()[mark:], self.block)
        finally:
            node.stop()
            router.down()

    @classmethod
    def run(cls, etcd, how: str, peer_kind) -> Restart:
        key = (how, peer_kind.name)
        if key not in cls.runs:
            cls.runs[key] = cls(etcd, how, peer_kind)
        return cls.runs[key]


def case(how, peer_kind):
    return pytest.param(how, peer_kind, id=f"{how}-{peer_kind.name}")


@pytest.mark.parametrize("how,peer_kind", [
    case("agent", GoBGP), case("agent", Bird),
    case("exabgp", GoBGP), case("exabgp", Bird),
])
def test_restart_peer_keeps_the_nodes_block(etcd, how, peer_kind):
    """Graceful restart, the node restarting: the peer keeps the node's block all along, stale
    while the node is away (GoBGP shows it), refreshed, never swept, not even for a moment."""
    run = Restart.run(etcd, how, peer_kind)
    missing = run.sampler.failures(lambda r: r[0] is not None)
    assert not missing, f"the peer lost {run.block} at (s, (peer, kernel)): {missing[:10]}"
    assert run.bird_problem is None, run.bird_problem
    if peer_kind is GoBGP:
        assert run.stale_seen, "GoBGP never marked the block stale"


@pytest.mark.parametrize("how,peer_kind", [
    case("agent", GoBGP), case("agent", Bird),
    case("exabgp", GoBGP), case("exabgp", Bird),
])
def test_restart_kernel_keeps_the_peers_route(etcd, how, peer_kind):
    """The node's kernel keeps the route it learned from the peer all along: protocol 202 routes
    outlive the agent and are adopted when it starts; a new ExaBGP changes nothing."""
    run = Restart.run(etcd, how, peer_kind)
    missing = run.sampler.failures(lambda r: r[1] == run.router_ip)
    assert not missing, f"the kernel lost the peer's route at (s, (peer, kernel)): {missing[:10]}"


def test_route_withdrawn_while_exabgp_is_dead_leaves_the_kernel(etcd):
    router, node = Router(), CNINode(etcd.unix_endpoint)
    peer = Bird(router)  # BIRD takes the new session at the first attempt
    try:
        block, pool_route = node_with_peer(etcd, router, node, peer)
        old = node.exabgp_pid()
        # Frozen, ExaBGP cannot read the withdraw; killed, it never will.
        os.kill(old, signal.SIGSTOP)
        peer.withdraw(pool_route)
        time.sleep(0.5)
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: node.exabgp_pid() not in (None, old), 10), node.agent_children()
        assert wait_for(peer.established, 15), diagnose(router, node)
        assert wait_for(lambda: peer.route(block) == "fresh", 10), diagnose(router, node)
        assert wait_for(lambda: pool_route not in node.routes(PROTO_BGP), 5), (
            f"{pool_route} still in the kernel: {node.routes(PROTO_BGP)}")
    finally:
        node.stop()
        router.down()


def test_continuous_ping_while_an_agent_restarts(etcd):
    """Two meshed nodes, a pod on each; a ping every 50 ms from A's pod to B's while A's agent
    is stopped and started again: not one packet lost."""
    switch = Router()  # only the L2 segment: no router runs in it
    a, b = CNINode(etcd.unix_endpoint), CNINode(etcd.unix_endpoint)
    try:
        switch.up()
        a.start(), b.start()
        switch.attach(a.netns, "10.99.0.1/24")
        switch.attach(b.netns, "10.99.0.2/24")
        setup_store(etcd,
                    resource("Node", a.name, {"bgp": {"ipv4Address": "10.99.0.1/24"}}),
                    resource("Node", b.name, {"bgp": {"ipv4Address": "10.99.0.2/24"}}))
        pod_a, ip_a = a.add_pod()
        _, ip_b = b.add_pod()
        assert wait_for(lambda: a.routes(PROTO_BGP).get(block_of(ip_b)) == "10.99.0.2"
                        and b.routes(PROTO_BGP).get(block_of(ip_a)) == "10.99.0.1", 20), (
            diagnose(switch, a, b))

        count = 240  # 12 s at 50 ms
        ping = subprocess.Popen(["ip", "netns", "exec", pod_a, "ping", "-i", "0.05", "-c", str(count),
                                 "-W", "1", str(ip_b)], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1)
            started = time.monotonic()
            a.restart_agent()
            # Back: the session with B is up again and A has re-announced (B's RIB has it fresh).
            assert wait_for(lambda: bgp_established(a), 15), diagnose(switch, a, b)
            back_after = time.monotonic() - started
            out, _ = ping.communicate(timeout=30)
        finally:
            if ping.poll() is None:
                ping.kill()
                ping.wait()
        sent, received = ping_counts(out)
        assert sent == count, out
        assert back_after < count * 0.05 - 2, "the restart did not fit inside the ping"
        assert received == sent, (f"{sent - received} of {sent} lost; the agent was back after "
                                  f"{back_after:.1f}s\n{out}")
        # Still routed both ways afterwards.
        assert a.routes(PROTO_BGP).get(block_of(ip_b)) == "10.99.0.2"
        assert b.routes(PROTO_BGP).get(block_of(ip_a)) == "10.99.0.1"
    finally:
        a.stop()
        b.stop()
        switch.down()


def bgp_established(node: CNINode) -> bool:
    out = node.exec("ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )",
                    check=False).stdout
    return bool(out.strip())


def ping_counts(out: str) -> tuple[int, int]:
    found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert found, out
    return int(found.group(1)), int(found.group(2))
