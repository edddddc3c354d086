"""percale's BGP agent against GoBGP: sessions from the datastore (through the agent's view),
blocks announced as IPAM claims them and withdrawn as it gives them up."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from percale.bgpd.agent import BGPAgent
from percale.datastore.cache import Cache
from percale.datastore.etcd import EtcdDatastore
from percale.ipam.allocator import IPAM
from percale.api import parse
from tests.helpers.bgp_lab import Lab
from tests.helpers.ipam_world import add_pool

pytestmark = pytest.mark.interop


def resource(kind: str, name: str, spec: dict, **meta) -> object:
    return parse({"apiVersion": "percale.io/v1", "kind": kind,
                  "metadata": {"name": name, **meta}, "spec": spec})


def test_blocks_are_announced_as_claimed_and_withdrawn_as_released(etcd):
    lab = Lab().up()
    try:
        lab.gobgp([("10.99.0.1", 64512)])

        async def scenario():
            store = EtcdDatastore([etcd.endpoint])
            await add_pool(store, "pods", "10.244.0.0/16")
            await store.create(resource("Node", "node-a", {"bgp": {"ipv4Address": "10.99.0.1/24"}}))
            await store.create(resource("BGPPeer", "gobgp", {"peerIP": "10.99.0.3", "asNumber": 64512}))
            cache = Cache(store, node="node-a")
            agent = BGPAgent(cache, "node-a", lab.workdir / "percale", netns=lab.a)
            following = asyncio.create_task(cache.run())
            running = asyncio.create_task(agent.run())
            try:
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
            finally:
                running.cancel()
                following.cancel()
                await asyncio.gather(running, following, return_exceptions=True)
                await store.close()

        asyncio.run(scenario())
    finally:
        lab.down()


def lab_peer_up(lab: Lab) -> bool:
    out = subprocess.run(["ip", "netns", "exec", lab.b, "gobgp", "neighbor"],
                         capture_output=True, text=True).stdout
    return "Establ" in out
