"""percale's BGP agent against GoBGP: sessions from the datastore (through the agent's view),
blocks announced as IPAM claims them and withdrawn as it gives them up, or as their pool's
disableBGPExport says; the global BGPConfiguration's service CIDRs announced and withdrawn
without a session restarting; a route holding the node's own AS refused unless the BGPPeer's
numAllowedLocalASNumbers allows it; bindMode NodeIP listening on the node's address only."""

from __future__ import annotations

import asyncio
import ipaddress
import json
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


async def until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@asynccontextmanager
async def agent_of_node_a(lab: Lab, endpoint: str, *, bgp: dict | None = None,
                          peers: dict | None = None, others: tuple = ()):
    """node-a (10.99.0.1, or `bgp` as its spec.bgp) with pool 10.244.0.0/16 and a BGPPeer for
    GoBGP (or `peers`, name -> spec) in the datastore, `others` created beside them, and its BGP
    agent running in the lab's namespace: (store, agent), both stopped at the end."""
    store = EtcdDatastore([endpoint])
    await add_pool(store, "pods", "10.244.0.0/16")
    await store.create(resource("Node", "node-a", {"bgp": bgp or {"ipv4Address": "10.99.0.1/24"}}))
    for name, spec in (peers or {"gobgp": PEER}).items():
        await store.create(resource("BGPPeer", name, spec))
    for other in others:
        await store.create(other)
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


def gobgp_prefixes(lab: Lab, family: str) -> set[str]:
    """What GoBGP holds in its global RIB for `family` ("ipv4" or "ipv6")."""
    out = lab.exec(lab.b, "gobgp", "global", "rib", "-a", family, "-j", check=False).stdout
    try:
        return set(json.loads(out or "{}"))
    except json.JSONDecodeError:
        return set()  # gobgpd is starting or stopping


def gobgp_uptime(lab: Lab, neighbor: str) -> object:
    """When GoBGP's session with `neighbor` was last established (changes when it restarts)."""
    out = lab.exec(lab.b, "gobgp", "neighbor", neighbor, "-j", check=False).stdout
    return json.loads(out)["timers"]["state"]["uptime"]


def dual_stack_gobgp(asn: int = 64512) -> str:
    """gobgpd.toml for namespace b: node-a over IPv4 (ipv4-unicast) and over IPv6 (ipv6-unicast)."""
    conf = [f'[global.config]\n  as = {asn}\n  router-id = "10.99.0.3"\n'
            '  local-address-list = ["10.99.0.3", "fd00:99::3"]\n']
    for address, family in (("10.99.0.1", "ipv4-unicast"), ("fd00:99::1", "ipv6-unicast")):
        conf.append(
            f'[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "{address}"\n'
            '    peer-as = 64512\n  [neighbors.timers.config]\n    hold-time = 30\n'
            '    connect-retry = 1\n'
            f'  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n'
            f'      afi-safi-name = "{family}"\n')
    return "".join(conf)


SERVICE_CIDRS = {"serviceClusterIPs": [{"cidr": "10.96.0.0/12"}, {"cidr": "fd00:96::/112"}],
                 "serviceExternalIPs": [{"cidr": "203.0.113.0/24"}],
                 "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}]}


def test_service_cidrs_are_announced_to_peers_and_withdrawn_when_the_configuration_drops_them(etcd):
    """The global BGPConfiguration's serviceClusterIPs, serviceExternalIPs and
    serviceLoadBalancerIPs reach GoBGP from the node, IPv4 over the IPv4 session and IPv6 over
    the IPv6 one, with the node's address as next hop; the ranges the configuration drops are
    withdrawn, the others stay, and neither session restarts."""
    lab = Lab().up()
    try:
        lab._gobgp(lab.b, dual_stack_gobgp())
        services = resource("BGPConfiguration", "default", SERVICE_CIDRS)
        dual_stack = {"ipv4Address": "10.99.0.1/24", "ipv6Address": "fd00:99::1/64"}
        peers = {"gobgp": PEER, "gobgp6": {"peerIP": "fd00:99::3", "asNumber": 64512}}

        async def scenario():
            async with agent_of_node_a(lab, etcd.endpoint, bgp=dual_stack, peers=peers,
                                       others=(services,)) as (store, _):
                v4 = {"10.96.0.0/12", "203.0.113.0/24", "198.51.100.0/24"}
                await until(lambda: v4 <= gobgp_prefixes(lab, "ipv4"), 30,
                            f"GoBGP never received {v4} (has {gobgp_prefixes(lab, 'ipv4')})")
                await until(lambda: "fd00:96::/112" in gobgp_prefixes(lab, "ipv6"), 10,
                            "GoBGP never received the IPv6 service CIDR over IPv6")
                paths = lab.gobgp_rib()["10.96.0.0/12"]
                hop = [a for a in paths[0]["attrs"] if a.get("type") == 3]  # NEXT_HOP
                assert hop and hop[0]["nexthop"] == "10.99.0.1", paths
                uptimes = {n: gobgp_uptime(lab, n) for n in ("10.99.0.1", "fd00:99::1")}

                current = await store.get(Key("BGPConfiguration", "default"))
                fewer = current.value.spec.model_copy(update={
                    "service_cluster_ips": current.value.spec.service_cluster_ips[:1],
                    "service_external_ips": None})
                await store.update(current.value.model_copy(update={"spec": fewer}),
                                   revision=current.revision)
                await until(lambda: not {"203.0.113.0/24"} & gobgp_prefixes(lab, "ipv4"), 10,
                            "GoBGP still has the serviceExternalIPs range the configuration dropped")
                await until(lambda: "fd00:96::/112" not in gobgp_prefixes(lab, "ipv6"), 10,
                            "GoBGP still has the IPv6 service CIDR the configuration dropped")
                assert {"10.96.0.0/12", "198.51.100.0/24"} <= gobgp_prefixes(lab, "ipv4")
                assert {n: gobgp_uptime(lab, n) for n in uptimes} == uptimes, "a session restarted"

        asyncio.run(scenario())
    finally:
        lab.down()


def test_a_route_holding_the_nodes_as_is_installed_only_as_num_allowed_local_as_numbers_allows(etcd):
    """eBGP with a ToR (AS 65000) that passes on routes from another rack in the node's own AS
    64512: refused by default (AS_PATH loop), though ExaBGP hands them to the agent; installed
    once the BGPPeer says numAllowedLocalASNumbers: 1, and refused again when it goes. A path
    holding the AS twice stays refused at 1. The session never restarts."""
    lab = Lab().up()
    try:
        lab.gobgp([("10.99.0.1", 64512)], asn=65000)
        plain, once, twice = (ipaddress.ip_network(p) for p in
                              ("10.244.97.0/26", "10.244.98.0/26", "10.244.99.0/26"))
        lab.exec(lab.b, "gobgp", "global", "rib", "add", str(plain), "-a", "ipv4")
        lab.exec(lab.b, "gobgp", "global", "rib", "add", str(once), "aspath", "64512", "-a", "ipv4")
        lab.exec(lab.b, "gobgp", "global", "rib", "add", str(twice), "aspath", "64512,64512",
                 "-a", "ipv4")
        tor = {"peerIP": "10.99.0.3", "asNumber": 65000}

        async def allow(store, n: int | None) -> None:
            current = await store.get(Key("BGPPeer", "gobgp"))
            spec = current.value.spec.model_copy(update={"num_allowed_local_as_numbers": n})
            await store.update(current.value.model_copy(update={"spec": spec}),
                               revision=current.revision)

        async def scenario():
            async with agent_of_node_a(lab, etcd.endpoint, peers={"gobgp": tor}) as (store, agent):
                def installed() -> set:
                    return set(agent.rib.fib) if agent.rib is not None else set()

                await until(lambda: plain in installed(), 30, "GoBGP's plain route was never learned")
                await until(lambda: len(agent.rib.adj_rib_in("10.99.0.3")) == 3, 10,
                            "ExaBGP did not pass on the routes holding our AS")
                received = agent.rib.adj_rib_in("10.99.0.3")
                assert [seg.asns for seg in received[(once, 0)].as_path] == [(65000, 64512)]
                assert installed() == {plain}
                assert "AS_PATH" in agent.rib.rejection(received[(once, 0)])
                uptime = gobgp_uptime(lab, "10.99.0.1")

                await allow(store, 1)
                await until(lambda: once in installed(), 10,
                            "numAllowedLocalASNumbers: 1 did not install the route")
                assert twice not in installed()
                await allow(store, None)
                await until(lambda: once not in installed(), 10,
                            "the route stayed once numAllowedLocalASNumbers was removed")
                assert gobgp_uptime(lab, "10.99.0.1") == uptime, "the session restarted"

        asyncio.run(scenario())
    finally:
        lab.down()


def listening(lab: Lab, port: int = 179) -> set[str]:
    """The local addresses with a TCP socket listening on `port` in namespace a."""
    out = lab.exec(lab.a, "ss", "-Hltn", f"( sport = :{port} )").stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def test_bind_mode_node_ip_listens_on_the_node_address_only(etcd):
    """bindMode: NodeIP (BIRD `listen bgp address <node IP>`): ExaBGP listens on the node's
    address and on no other address the host has; a connection to another one is refused."""
    lab = Lab().up()
    try:
        lab.exec(lab.a, "ip", "addr", "add", "10.99.0.9/24", "dev", f"va{lab.tag}")
        lab.gobgp([("10.99.0.1", 64512)])
        node_ip = resource("BGPConfiguration", "default", {"bindMode": "NodeIP"})

        async def scenario():
            async with agent_of_node_a(lab, etcd.endpoint, others=(node_ip,)):
                await until(lambda: lab_peer_up(lab), 30, "the session to GoBGP never came up")
                assert listening(lab) == {"10.99.0.1"}
                refused = lab.exec(lab.b, "bash", "-c", "exec 3<>/dev/tcp/10.99.0.9/179", check=False)
                assert refused.returncode != 0 and "refused" in refused.stderr, refused

        asyncio.run(scenario())
    finally:
        lab.down()


def test_log_severity_screen_sets_the_bgp_loggers_level_node_config_first(etcd, caplog):
    """BGPConfiguration logSeverityScreen, as confd reads it (node.<name> over default), sets
    the level of the percale.bgpd loggers while the agent runs; unset, they follow the
    process's own level again. Each change is said at WARNING."""
    import logging

    bgpd_logger = logging.getLogger("percale.bgpd")
    lab = Lab().up()
    caplog.set_level(logging.WARNING, logger="percale")
    try:
        async def scenario():
            debug = resource("BGPConfiguration", "default", {"logSeverityScreen": "Debug"})
            async with agent_of_node_a(lab, etcd.endpoint, others=(debug,)) as (store, _):
                await until(lambda: bgpd_logger.level == logging.DEBUG, 20, "never at DEBUG")
                await store.create(resource("BGPConfiguration", "node.node-a",
                                            {"logSeverityScreen": "error"}))
                await until(lambda: bgpd_logger.level == logging.ERROR, 10,
                            "the node's own configuration did not win")
                await store.delete(Key("BGPConfiguration", "node.node-a"))
                await until(lambda: bgpd_logger.level == logging.DEBUG, 10, "not back at DEBUG")
                await store.delete(Key("BGPConfiguration", "default"))
                await until(lambda: bgpd_logger.level == logging.NOTSET, 10,
                            "not back to the process's level")
            said = [r.getMessage() for r in caplog.records if r.name == "percale"]
            assert said == ["BGP logging now at DEBUG (BGPConfiguration logSeverityScreen)",
                            "BGP logging now at ERROR (BGPConfiguration logSeverityScreen)",
                            "BGP logging now at DEBUG (BGPConfiguration logSeverityScreen)",
                            "BGP logging now at percale-node's --log-level (no BGPConfiguration "
                            "sets logSeverityScreen)"]

        asyncio.run(scenario())
    finally:
        bgpd_logger.setLevel(logging.NOTSET)
        lab.down()


def test_an_ipv6_only_node_without_a_router_id_says_so_and_is_not_ready(etcd, caplog):
    """BGP needs a router ID in IPv4 form, which an IPv6 address cannot give: the agent ran no
    BGP and reported ready, with nothing said. Now it says how to set one, once, and stays
    not ready until the node has an IPv4 address (or percale-node a --router-id)."""
    import logging

    lab = Lab().up()
    caplog.set_level(logging.ERROR, logger="percale.bgpd")
    try:
        async def scenario():
            async with agent_of_node_a(lab, etcd.endpoint,
                                       bgp={"ipv6Address": "fd00:99::1/64"}) as (store, agent):
                await until(lambda: any("--router-id hash" in r.getMessage()
                                        for r in caplog.records), 20, "nothing said")
                assert agent.synced is False
                stored = await store.get(Key("Node", "node-a"))
                node = stored.value
                node.spec.bgp.ipv4_address = "10.99.0.1/24"
                await store.update(node, revision=stored.revision)
                await until(lambda: agent.synced, 20, "not ready once the node had IPv4")
            said = [r for r in caplog.records if "--router-id hash" in r.getMessage()]
            assert len(said) == 1

        asyncio.run(scenario())
    finally:
        lab.down()
