"""percale-node's /livez, /readyz and /metrics, over real HTTP on loopback.

The BGP driver is stood in for by a plain object with the same attributes (speaker, peers, rib,
fib, router_id, synced, reconciled): the endpoints only read those; the real agent where what
it does with ExaBGP's events matters."""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from percale.bgpd.agent import BGPAgent
from percale.bgpd.exabgp_json import RibFeed
from percale.bgpd.peering import MESH, Session
from percale.bgpd.peers import PeerStatus
from percale.bgpd.rib import Rib
from percale.datastore import Key, MemoryDatastore
from percale.datastore.cache import Cache
from percale.node import health
from tests.helpers.etcd_server import free_port
from tests.unit.test_exabgp_json import state

pytestmark = pytest.mark.unit

SESSION = Session(name="Mesh_10_0_0_2", kind=MESH, family=4, peer_address="10.0.0.2",
                  peer_port=179, peer_as=64512, local_as=64512, local_address="10.0.0.1")


def running(returncode: int | None = None) -> SimpleNamespace:
    """The agent's ExaBGP as status reads it: running, or exited with `returncode`."""
    return SimpleNamespace(process=SimpleNamespace(returncode=returncode), started_at=None,
                           reconfigured_at=None)


def driver(state: str = "start", *, speaker: SimpleNamespace | None = None,
           synced: bool = True, reconciled: bool = True) -> SimpleNamespace:
    info = "Established" if state == "up" else "Connect"
    return SimpleNamespace(speaker=speaker or running(),
                           peers={"10.0.0.2": PeerStatus(SESSION, state, info)},
                           rib=None, fib=None, router_id="10.0.0.1", synced=synced,
                           reconciled=reconciled)


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = (await reader.read()).decode()
    writer.close()
    head, _, body = data.partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_live_ready_and_metrics():
    bgp = driver(synced=False, reconciled=False)
    bgp.rib = SimpleNamespace(fib={"10.244.1.0/26": {1}})
    bgp.fib = SimpleNamespace(programmed={"10.244.1.0/26": {1}})
    peer = bgp.peers["10.0.0.2"]
    port = free_port()
    server = await health.serve(bgp, "127.0.0.1", port)
    try:
        assert await get(port, "/livez") == (200, "ok\n")
        status, body = await get(port, "/readyz")
        assert status == 503
        assert "not been configured" in body and "not been reconciled" in body
        assert "BGP not established with 10.0.0.2" in body

        bgp.synced = bgp.reconciled = True
        peer.set("up", "Established")
        assert await get(port, "/readyz") == (200, "ok\n")

        status, metrics = await get(port, "/metrics")
        assert status == 200
        assert 'percale_bgp_sessions{state="established"} 1.0' in metrics
        assert "percale_bgp_routes_learned 1.0" in metrics
        assert "percale_bgp_routes_programmed 1.0" in metrics
        assert "percale_bgp_sync_seconds_bucket" in metrics
        assert (await get(port, "/nope"))[0] == 404
    finally:
        server.close()
        await server.wait_closed()


def sessions_metric(text: str) -> tuple[str, str]:
    """percale_bgp_sessions' two lines: established, then not_established."""
    lines = [line for line in text.splitlines() if line.startswith("percale_bgp_sessions{")]
    return (next(line for line in lines if '"established"' in line),
            next(line for line in lines if '"not_established"' in line))


async def metrics_of(bgp) -> str:
    return (await health.metrics_text(bgp)).decode()


@pytest.mark.parametrize("speaker", [running(returncode=1), SimpleNamespace(
    process=None, started_at=None, reconfigured_at=None)], ids=["exited", "never started"])
async def test_sessions_of_an_exabgp_that_does_not_run_are_not_established(speaker):
    """The peer table still says up (a dead ExaBGP says `down` for nothing); /readyz and
    /metrics go by what `node status` shows: ExaBGP not running, no session Established."""
    bgp = driver("up", speaker=speaker)
    assert health.readiness(bgp) == ["the BGP backend process (ExaBGP) is not running",
                                     "BGP not established with 10.0.0.2"]
    assert sessions_metric(await metrics_of(bgp)) == (
        'percale_bgp_sessions{state="established"} 0.0',
        'percale_bgp_sessions{state="not_established"} 1.0')
    # Running again, it is what the peer table says.
    bgp.speaker = running()
    assert health.readiness(bgp) == []
    assert sessions_metric(await metrics_of(bgp))[0] == (
        'percale_bgp_sessions{state="established"} 1.0')


async def test_a_node_without_sessions_needs_no_exabgp():
    bgp = driver(speaker=SimpleNamespace(process=None, started_at=None, reconfigured_at=None))
    bgp.peers = {}
    assert health.readiness(bgp) == []


async def test_after_exabgp_restarts_no_session_is_established_until_it_says_so_again():
    """A new ExaBGP's helper connects (_on_connect): every session of the old one ended, and
    one the new ExaBGP never reaches gets no `down` event. Its peer waits, as at first start."""
    agent = BGPAgent(Cache(MemoryDatastore(), node="n1"), "n1", Path(tempfile.mkdtemp()))
    agent.peers.configure([SESSION])
    agent.rib = Rib(router_id="10.0.0.1", pools=["10.244.0.0/16"], own_addresses=["10.0.0.1"],
                    own_blocks=frozenset(), service_cidrs=[])
    agent.feed = RibFeed(agent.rib)
    agent.synced = True
    agent.speaker.process = SimpleNamespace(returncode=None)
    agent._event(state("connected", peer="10.0.0.2"))
    agent._event(state("up", peer="10.0.0.2"))
    assert health.readiness(agent) == []

    agent.speaker.started_at = 1.0
    agent._on_connect()  # the first ExaBGP's bridge
    agent._event(state("up", peer="10.0.0.2"))
    assert health.readiness(agent) == []
    # Its bridge died and ExaBGP started another: the sessions went on.
    agent._on_connect()
    assert agent.peers["10.0.0.2"].state == "up" and health.readiness(agent) == []

    agent.speaker.process = SimpleNamespace(returncode=None)  # the new ExaBGP
    agent.speaker.started_at = 2.0
    agent._on_connect()
    peer = agent.peers["10.0.0.2"]
    assert (peer.state, peer.info) == ("start", "Connect")
    assert health.readiness(agent) == ["BGP not established with 10.0.0.2"]
    assert sessions_metric(await metrics_of(agent))[0] == (
        'percale_bgp_sessions{state="established"} 0.0')

    agent._event(state("up", peer="10.0.0.2"))
    assert health.readiness(agent) == []


async def test_livez_answers_from_bind_and_readyz_says_starting_until_attached():
    """The agent binds, then registers, waiting as long as the datastore is unreachable:
    kubelet's liveness probe must get its 200 meanwhile, or it restarts a healthy agent."""
    port = free_port()
    endpoints = health.Endpoints()
    await endpoints.bind("127.0.0.1", port)
    try:
        assert await get(port, "/livez") == (200, "ok\n")
        assert await get(port, "/readyz") == (503, health.STARTING + "\n")
        assert (await get(port, "/metrics"))[0] == 503
        assert (await get(port, "/nope"))[0] == 404
        endpoints.attach(driver("up"))
        assert await get(port, "/readyz") == (200, "ok\n")
        assert (await get(port, "/metrics"))[0] == 200
    finally:
        endpoints.close()


class Watched(dict):
    """A dict that notes which threads read it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.readers: set[int] = set()

    def __iter__(self):
        self.readers.add(threading.get_ident())
        return super().__iter__()

    def items(self):
        self.readers.add(threading.get_ident())
        return super().items()


async def test_metrics_read_the_agents_state_on_the_event_loop_and_nft_off_it():
    """The event loop keeps changing the peer table, the view's unreadable objects and the etcd
    client's request counts: a worker thread iterating them died of "dictionary changed size
    during iteration", and the scrape got no answer. Only the nft counters are read off it."""
    bgp = driver("up")
    bgp.peers = Watched(bgp.peers)
    unreadable = Watched({Key("IPPool", "bad"): None})
    cache = SimpleNamespace(events=0, lists=0, polls=0, kinds=["IPPool"], unreadable=unreadable,
                            synced=True)
    requests = Watched({"Range": 3})
    datastore = SimpleNamespace(client=SimpleNamespace(requests=requests))
    nft_readers = set()

    def counters():
        nft_readers.add(threading.get_ident())
        return {"GlobalNetworkPolicy/default.web ingress 0 Allow": (3, 180)}

    policy = SimpleNamespace(table=SimpleNamespace(applied=None, counters=counters),
                             last_apply_seconds=0.01)
    port = free_port()
    server = await health.serve(bgp, "127.0.0.1", port, datastore=datastore, cache=cache,
                                policy=policy)
    try:
        status, metrics = await get(port, "/metrics")
    finally:
        server.close()
        await server.wait_closed()
    assert status == 200
    assert 'percale_datastore_view_unreadable_objects{kind="IPPool"} 1.0' in metrics
    assert 'percale_datastore_requests_total{method="Range"} 3.0' in metrics
    assert ('percale_policy_packets_total{action="Allow",policy="GlobalNetworkPolicy/default.web",'
            'rule="ingress 0"} 3.0') in metrics
    loop = threading.get_ident()
    assert bgp.peers.readers == unreadable.readers == requests.readers == {loop}
    assert nft_readers and loop not in nft_readers


async def test_an_agent_waiting_for_its_datastore_is_alive_and_not_ready(tmp_path):
    """percale-node started while etcd is down: registering waits as long as it takes, and
    kubelet's liveness probe meanwhile gets 200, its readiness probe 503 saying why."""
    from percale.datastore.options import datastore_settings
    from percale.node import main as node_main

    port = free_port()
    options = node_main.Options(node="n1", cni_socket=str(tmp_path / "cni.sock"),
                                status_socket=str(tmp_path / "status.sock"),
                                health_listen=("127.0.0.1", port), bgp_dir=tmp_path / "bgp")
    nobody = f"http://127.0.0.1:{free_port()}"  # no etcd listens there
    agent = asyncio.create_task(node_main.run(
        options, datastore_settings(None, nobody, None, None, None),
        (ipaddress.ip_interface("10.0.0.1/24"), None, None)))  # an address: a Node to write
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    assert await get(port, "/livez") == (200, "ok\n")
                    break
                except ConnectionRefusedError:
                    await asyncio.sleep(0.05)  # not bound yet
        await asyncio.sleep(1.5)  # a retry or two later, still waiting
        assert not agent.done()
        assert await get(port, "/livez") == (200, "ok\n")
        assert await get(port, "/readyz") == (503, health.STARTING + "\n")
    finally:
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)


GR_2S = ('"64": { "name": "graceful restart", "time": 2, "address-family-flags": '
         '{ "ipv4/unicast": [ "restart" ] }, "restart-flags": [ ]  }')


async def test_a_peers_stale_routes_go_when_its_restart_time_is_up_not_at_the_next_check():
    """A peer lost gracefully, restart time 2 s: its stale paths left only when the housekeeping
    loop woke for its full check (resync, 10 s here, 30 by default), traffic black-holed
    meanwhile. A session going down now wakes it, so the deadline is held."""
    from tests.unit.test_exabgp_json import announce_v4, open_

    agent = BGPAgent(Cache(MemoryDatastore(), node="n1"), "n1", Path(tempfile.mkdtemp()),
                     resync=10)
    agent.rib = Rib(router_id="10.99.0.1", pools=["10.244.0.0/16"])
    agent.feed = RibFeed(agent.rib)
    agent.programmer.swept = True  # past the start-up sweep
    now = time.monotonic()
    for line in (open_(GR_2S), state("up", peer="10.99.0.2"), announce_v4("10.244.1.0/26")):
        agent.feed.feed(line, now)
    housekeeping = asyncio.ensure_future(agent._housekeeping())
    try:
        await asyncio.sleep(0.3)
        down = time.monotonic()
        agent._event(state("down", "closing connection", peer="10.99.0.2"))
        while agent.rib.fib and time.monotonic() - down < 8:
            await asyncio.sleep(0.05)
        assert not agent.rib.fib and time.monotonic() - down < 3.5
    finally:
        housekeeping.cancel()
