"""percale's BGP agent against GoBGP: sessions from the datastore (through the agent's view),
blocks announced as IPAM claims them and withdrawn as it gives them up, or as their pool's
disableBGPExport says."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import time
from contextlib import asynccontextmanager

import pytest

from percale.bgpd import speaker as exabgp_speaker
from percale.bgpd.agent import BGPAgent
from percale.datastore.cache import Cache
from percale.datastore.etcd import EtcdDatastore
from percale.ipam.allocator import IPAM
from percale.api import parse
from percale.datastore import Key
from tests.helpers.bgp_lab import Lab
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.interop


def resource(kind: str, name: str, spec: dict, **meta) -> object:
    return parse({"apiVersion": "percale.io/v1", "kind": kind,
                  "metadata": {"name": name, **meta}, "spec": spec})


PEER = {"peerIP": "10.99.0.3", "asNumber": 64512}


@asynccontextmanager
async def agent_of_node_a(lab: Lab, endpoint: str):
    """node-a (10.99.0.1) with pool 10.244.0.0/16 and a BGPPeer for GoBGP in the datastore, and
    its BGP agent running in the lab's namespace: (store, agent), both stopped at the end."""
    store = EtcdDatastore([endpoint])
    await add_pool(store, "pods", "10.244.0.0/16")
    await store.create(resource("Node", "node-a", {"bgp": {"ipv4Address": "10.99.0.1/24"}}))
    await store.create(resource("BGPPeer", "gobgp", PEER))
    cache = Cache(store, node="node-a")
    agent = BGPAgent(cache, "node-a", lab.workdir / "percale", netns=lab.a)
    following = asyncio.create_task(cache.run())
    running = asyncio.create_task(agent.run())
    try:
        yield store, agent
    finally:
        running.cancel()
        following.cancel()
        await asyncio.gather(running, following, return_exceptions=True)
        await store.close()


def test_blocks_are_announced_as_claimed_and_withdrawn_as_released(etcd):
    lab = Lab().up()
    try:
        lab.gobgp([("10.99.0.1", 64512)])

        async def scenario():
            async with agent_of_node_a(lab, etcd.endpoint) as (store, _):
                deadline = time.monotonic() + 30
                while not lab_peer_up(lab) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert lab_peer_up(lab), "the session to GoBGP never came up"

                ipam = IPAM(store)
                claimed_at = time.monotonic()
                got = await ipam.auto_assign("node-a", handle_id="pod-1", num4=1)
                block = str(got.ipv4[0].network)
                while block not in lab.gobgp_rib() and time.monotonic() - claimed_at < 5:
                    await asyncio.sleep(0.02)
                # How fast is measured by bench/bgp.py; here only that it arrives.
                assert block in lab.gobgp_rib()

                await ipam.release_by_handle("pod-1")
                await ipam.release_host_affinities("node-a")
                deadline = time.monotonic() + 5
                while block in lab.gobgp_rib() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert block not in lab.gobgp_rib()

        asyncio.run(scenario())
    finally:
        lab.down()


def test_a_pool_with_disable_bgp_export_is_not_announced_until_the_flag_is_cleared(etcd):
    """disableBGPExport on the pool: GoBGP loses the node's block (BIRD's export filter rejects
    the pool in Calico), the node still holds it; cleared, GoBGP receives it again."""
    lab = Lab().up()
    try:
        lab.gobgp([("10.99.0.1", 64512)])

        async def until(condition, seconds: float, what: str) -> None:
            deadline = time.monotonic() + seconds
            while not condition():
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.05)

        async def set_disable_bgp_export(store, flag: bool) -> None:
            current = await store.get(Key("IPPool", "pods"))
            spec = current.value.spec.model_copy(update={"disable_bgp_export": flag})
            await store.update(current.value.model_copy(update={"spec": spec}),
                               revision=current.revision)

        async def scenario():
            async with agent_of_node_a(lab, etcd.endpoint) as (store, agent):
                await until(lambda: lab_peer_up(lab), 30, "the session to GoBGP never came up")
                got = await IPAM(store).auto_assign("node-a", handle_id="pod-1", num4=1)
                block = str(got.ipv4[0].network)
                await until(lambda: block in lab.gobgp_rib(), 10, "the block was never announced")

                await set_disable_bgp_export(store, True)
                await until(lambda: block not in lab.gobgp_rib(), 10,
                            "GoBGP still has the block of a pool with disableBGPExport")
                assert block in agent.desired.blocks  # still the node's: its blackhole stays

                await set_disable_bgp_export(store, False)
                await until(lambda: block in lab.gobgp_rib(), 10,
                            "the block was not announced again once disableBGPExport was cleared")

        asyncio.run(scenario())
    finally:
        lab.down()


def test_a_peer_configured_again_before_its_session_ended_sends_its_routes_again(etcd, monkeypatch):
    """A BGPPeer deleted and created again while ExaBGP never performed the reload that would
    have ended the session (here: ExaBGP stopped meanwhile). Its routes were dropped when it
    went; on a session that stays up the peer would never send them again, so the agent
    restarts that session and learns them anew."""
    monkeypatch.setattr(exabgp_speaker, "RELOAD_ATTEMPTS", 1)  # give up on a stopped ExaBGP soon
    route = ipaddress.ip_network("10.244.99.0/26")
    lab = Lab().up()
    try:
        lab.gobgp([("10.99.0.1", 64512)])
        lab.exec(lab.b, "gobgp", "global", "rib", "add", str(route), "-a", "ipv4")

        async def until(condition, seconds: float, what: str) -> None:
            deadline = time.monotonic() + seconds
            while not condition():
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.05)

        async def scenario():
            async with agent_of_node_a(lab, etcd.endpoint) as (store, agent):
                def learned() -> bool:
                    return agent.rib is not None and route in agent.rib.fib

                await until(learned, 30, "GoBGP's route was never learned")
                exabgp = agent.speaker.process.pid
                os.kill(exabgp, signal.SIGSTOP)
                try:
                    await store.delete(Key("BGPPeer", "gobgp"))
                    await until(lambda: not learned(), 10, "the removed peer's route stayed")
                    await store.create(resource("BGPPeer", "gobgp", PEER))
                    # The file ExaBGP will read when it runs again names the peer once more.
                    await until(lambda: "10.99.0.3" in agent.speaker.config_path.read_text(), 20,
                                "the peer never came back into ExaBGP's configuration")
                finally:
                    os.kill(exabgp, signal.SIGCONT)
                await until(learned, 20, "the route of the peer configured again never came back")

        asyncio.run(scenario())
    finally:
        lab.down()


def lab_peer_up(lab: Lab) -> bool:
    out = subprocess.run(["ip", "netns", "exec", lab.b, "gobgp", "neighbor"],
                         capture_output=True, text=True).stdout
    return "Establ" in out
