"""BGPPeers changing under a running percale node, against BIRD 2 and a second node: a deleted
BGPPeer ends its session with a Cease NOTIFICATION (and the router drops the node's routes at
once, graceful restart or not), a rotated or late password secret reaches the session, and two
BGPPeers at one address on two ports cost the node none of its other sessions. Also ExaBGP itself
refusing a configuration: the agent's speaker says so and keeps what ExaBGP runs.

Each test builds its own lab as tests/interop/test_bird.py does (a router namespace holding
BIRD and a bridge, percale nodes joined to it), with every namespace named NETNS_PREFIX...: the
leftovers of an interrupted run are found and removed by that name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from percale.bgpd.exabgp_config import Neighbor
from percale.bgpd.speaker import ExaBGP
from percale.datastore.contract import Key
from tests.helpers.bgp_lab import (
    BirdPeer,
    Router,
    bird_config,
    block_of,
    diagnose,
    resource,
    setup_store,
    sh,
    wait_for,
)
from tests.helpers.cni_node import CNINode
from tests.helpers.store import with_store

pytestmark = pytest.mark.interop

NETNS_PREFIX = "pbc-"
NODE_AS, TOR_AS = 64513, 64600
# BIRD's graceful-restart wait for a peer that closed without a NOTIFICATION: it keeps the
# peer's routes (stale) this long, where a Cease makes it drop them at once.
RESTART_TIME = 120


@dataclass
class PrefixedRouter(Router):
    @property
    def ns(self) -> str:
        return f"{NETNS_PREFIX}r{self.tag}"


def new_node(etcd, **options) -> CNINode:
    return CNINode(etcd.unix_endpoint, name=f"{NETNS_PREFIX}n{uuid.uuid4().hex[:6]}", **options)


def delete(etcd, kind: str, name: str) -> None:
    async def work(store):
        current = await store.get(Key(kind, name))
        await store.delete(Key(kind, name), revision=current.revision)

    with_store(etcd.endpoint, work)


def agent_log(node: CNINode) -> str:
    return (node.workdir / "agent.log").read_text(errors="replace")


def exabgp_config(node: CNINode) -> str:
    return (node.workdir / "bgp" / "exabgp.conf").read_text()


def established_with(node: CNINode, address: str) -> bool:
    """A BGP connection between the node and `address` is established (the kernel's view)."""
    out = node.exec("ss", "-Htn", "state", "established", "dst", address, check=False).stdout
    return bool(out.strip())


@pytest.mark.parametrize("graceful_restart", [True, False], ids=["gr", "no-gr"])
def test_a_deleted_bgppeer_ends_its_session_with_a_cease_and_the_router_drops_its_routes(
        etcd, graceful_restart):
    """With graceful restart negotiated (BIRD: restart time 120 s), ExaBGP closed a removed
    neighbour's session without a NOTIFICATION, so BIRD took it for a restart ("Neighbor
    graceful restart detected") and kept the node's block as stale for 120 s, routing to a node
    that no longer peered with it. Now the session ends with a Cease, subcode 3 "Peer
    De-configured" (RFC 4486), as Calico's BIRD ends it, and BIRD drops the block at once; the
    same Cease without graceful restart. An agent restart still closes silently, so with
    graceful restart the block stays at BIRD while the agent is away."""
    router, node = PrefixedRouter(), new_node(etcd)
    try:
        router.up()
        node.start()
        router.attach(node.netns, "10.99.0.1/24")
        router.bird(bird_config(router.ip, [
            BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1", NODE_AS, export="none",
                     debug=True, graceful_restart=graceful_restart)], precise_since=True))
        setup_store(
            etcd,
            resource("Node", node.name, {"bgp": {"ipv4Address": "10.99.0.1/24",
                                                 "asNumber": NODE_AS}}),
            resource("BGPPeer", "tor", {"peerIP": router.ip, "asNumber": TOR_AS}))
        assert wait_for(lambda: router.bird_established("node_a"), 20), diagnose(router, node)
        _, pod_ip = node.add_pod()
        block = block_of(pod_ip)
        assert wait_for(lambda: block in router.bird_routes("node_a"), 15), diagnose(router, node)
        if graceful_restart:
            shown = router.birdc("show protocols all node_a")
            assert "Neighbor graceful restart" not in shown  # not yet: nothing has restarted
            assert f"Restart time: {RESTART_TIME}" in shown, shown
            # The agent going away keeps graceful restart's promise: no NOTIFICATION, routes
            # kept.
            node.stop_agent()
            assert wait_for(lambda: not router.bird_established("node_a"), 10), (
                diagnose(router, node))
            assert "Neighbor graceful restart detected" in router.bird_log()
            assert block in router.bird_routes("node_a")
            assert "Peer de-configured" not in router.bird_log()
            node.start_agent()
            assert wait_for(lambda: router.bird_established("node_a"), 30), (
                diagnose(router, node))
            assert wait_for(lambda: block in router.bird_routes("node_a"), 15), (
                diagnose(router, node))

        delete(etcd, "BGPPeer", "tor")
        # Seconds, not the 120 s of a restart: the reload signal is confirmed, then the Cease.
        assert wait_for(lambda: block not in router.bird_routes(), 8), diagnose(router, node)
        log = router.bird_log()
        assert "Received: Peer de-configured" in log, log[-3000:]
    finally:
        node.stop()
        router.down()


def mount_secret(secrets_dir: Path, name: str, key: str, value: str, version: int) -> None:
    """A secret as the kubelet mounts it and updates it: the keys in a directory of their own,
    the `..data` symlink swapped to it by an atomic rename, each key a symlink through it."""
    secret = secrets_dir / name
    data = secret / f"..2026_{version:02d}"
    data.mkdir(parents=True)
    (data / key).write_text(value)
    (secret / "..data_tmp").symlink_to(data.name)
    os.replace(secret / "..data_tmp", secret / "..data")
    if not (secret / key).is_symlink():
        (secret / key).symlink_to(f"..data/{key}")


def test_a_password_secret_mounted_late_or_rotated_reaches_the_session(etcd, tmp_path):
    """The agent read a BGPPeer's password secret only when the datastore changed: a secret
    mounted after the BGPPeer, or rotated, never reached ExaBGP, and the session stayed down
    with BIRD holding the new password. Now the agent looks at the secret files (at least every
    10 s while a session uses one) and configures again when they change."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    router = PrefixedRouter()
    node = new_node(etcd, agent_args=["--secrets-dir", str(secrets)])

    def config(password: str) -> str:
        return bird_config(router.ip, [BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1",
                                                NODE_AS, password=password)])

    def md5_lines() -> list[str]:
        return [line.strip() for line in exabgp_config(node).splitlines() if "md5" in line]

    try:
        router.up()
        node.start()
        router.attach(node.netns, "10.99.0.1/24")
        router.bird(config("first-pw"))
        setup_store(
            etcd,
            resource("Node", node.name, {"bgp": {"ipv4Address": "10.99.0.1/24",
                                                 "asNumber": NODE_AS}}),
            resource("BGPPeer", "tor", {
                "peerIP": router.ip, "asNumber": TOR_AS,
                "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}}}))
        # The secret is not mounted yet: the session goes without a password, and BIRD, which
        # has one, refuses it.
        assert wait_for(lambda: (node.workdir / "bgp" / "exabgp.conf").exists(), 20)
        assert md5_lines() == []

        mount_secret(secrets, "bgp", "tor", "first-pw\n", 1)
        assert wait_for(lambda: router.bird_established("node_a"), 30), diagnose(router, node)
        assert md5_lines() == ['md5-password "first-pw";']

        mount_secret(secrets, "bgp", "tor", "second-pw\n", 2)
        router.bird_reconfigure(config("second-pw"))
        assert wait_for(lambda: md5_lines() == ['md5-password "second-pw";'], 20), md5_lines()
        assert wait_for(lambda: router.bird_established("node_a"), 30), diagnose(router, node)
        assert "BGP password secret bgp changed" in agent_log(node)
    finally:
        node.stop()
        router.down()


def test_two_bgppeers_at_one_address_cost_the_node_none_of_its_sessions(etcd):
    """A global BGPPeer at the router's address and a node-specific one at the same address on
    port 1790 (Calico runs both). ExaBGP keys a neighbour by peer address: both in its
    configuration made the whole of it invalid. The running agent's reload was refused, with
    nothing said, and once ExaBGP started again (an agent restart) it exited 1 in a loop, and
    the node lost every session, the mesh included. Now one of the two is kept (the global
    one, by Calico's precedence) and the other is logged, once, naming its BGPPeer."""
    router = PrefixedRouter()
    a, b = new_node(etcd), new_node(etcd)
    try:
        router.up()
        for node, address in ((a, "10.99.0.1/24"), (b, "10.99.0.2/24")):
            node.start()
            router.attach(node.netns, address)
        setup_store(
            etcd,
            resource("Node", a.name, {"bgp": {"ipv4Address": "10.99.0.1/24"}}),
            resource("Node", b.name, {"bgp": {"ipv4Address": "10.99.0.2/24"}}),
            resource("BGPPeer", "tor", {"peerIP": router.ip, "asNumber": TOR_AS}),
            resource("BGPPeer", "tor-second-port", {"node": a.name,
                                                    "peerIP": f"{router.ip}:1790",
                                                    "asNumber": TOR_AS + 1}))
        assert wait_for(lambda: established_with(a, "10.99.0.2"), 30), diagnose(router, a, b)
        assert exabgp_config(a).count(f"neighbor {router.ip} {{") == 1
        assert 'description "Global_10_99_0_254";' in exabgp_config(a)
        left_out = "BGP session Node_10_99_0_254_port_1790 (BGPPeer tor-second-port"
        assert wait_for(lambda: left_out in agent_log(a), 10), agent_log(a)[-3000:]

        a.restart_agent()  # its ExaBGP too, which reads the configuration afresh
        assert wait_for(lambda: established_with(a, "10.99.0.2"), 30), diagnose(router, a, b)
        log = agent_log(a)
        assert "ExaBGP exited" not in log and "ExaBGP refused" not in log, log[-3000:]
        # Said once per agent run, not at every configuration.
        assert log.count(left_out) == 2, log[-3000:]
    finally:
        for node in (a, b):
            node.stop()
        router.down()


def test_a_configuration_exabgp_refuses_is_logged_and_not_left_for_its_next_start(
        tmp_path, caplog):
    """ExaBGP refusing a reload (here two neighbours at one address, which percale no longer
    renders): the speaker took "performing reload" for success and said nothing, and the refused
    file stayed for the next ExaBGP, which then refused to start at all. Now the refusal is an
    error with ExaBGP's reason, and an ExaBGP started again comes up with what ran before."""
    netns = f"{NETNS_PREFIX}s{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", netns)
    try:
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", "10.99.0.1/24", "dev", "lo")

        def neighbor(name: str, port: int, peer_as: int) -> Neighbor:
            return Neighbor(name, 4, "10.99.0.9", port, peer_as, 64512, "10.99.0.1",
                            passive=False)

        async def scenario():
            speaker = ExaBGP(tmp_path, lambda line: None, netns=netns)
            good = speaker.render("10.99.0.1", [neighbor("Global_10_99_0_9", 179, 64600)])
            clash = speaker.render("10.99.0.1", [neighbor("Global_10_99_0_9", 179, 64600),
                                                 neighbor("Node_10_99_0_9_port_1790", 1790,
                                                          64601)])
            await speaker.start(good)
            supervisor = asyncio.ensure_future(speaker.supervise())
            try:
                await speaker.wait_connected()
                with caplog.at_level(logging.ERROR, logger="percale.bgpd.speaker"):
                    await speaker.reload(clash)
                assert "refused the new BGP configuration" in caplog.text
                assert "duplicate peer definition 10.99.0.9" in caplog.text
                assert speaker.config_path.read_text() == good
                first = speaker.process.pid
                os.kill(first, signal.SIGKILL)  # a crash: supervise starts another
                assert await asyncio.to_thread(
                    wait_for, lambda: speaker.process.pid != first, 10)
                await asyncio.sleep(2)
                assert speaker.process.returncode is None, "the new ExaBGP exited"
                assert "refused its BGP configuration" not in caplog.text
            finally:
                await speaker.stop()
                supervisor.cancel()
                await asyncio.gather(supervisor, return_exceptions=True)

            # Refused at start (an agent started with it): ExaBGP exits, and says why.
            speaker = ExaBGP(tmp_path / "second", lambda line: None, netns=netns)
            with caplog.at_level(logging.ERROR, logger="percale.bgpd.speaker"):
                await speaker.start(clash)
                supervisor = asyncio.ensure_future(speaker.supervise())
                try:
                    for _ in range(100):
                        if "refused its BGP configuration" in caplog.text:
                            break
                        await asyncio.sleep(0.1)
                    assert "duplicate peer definition 10.99.0.9) and exited with 1" in caplog.text
                finally:
                    await speaker.stop()
                    supervisor.cancel()
                    await asyncio.gather(supervisor, return_exceptions=True)

        asyncio.run(scenario())
    finally:
        for pid in sh("ip", "netns", "pids", netns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", netns, check=False)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
