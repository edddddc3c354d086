"""vxlan/agent.py in a namespace of its own, over an in-memory datastore the test writes Nodes,
IPPools and IPAMBlocks into, as a node's agent sees them: routes through vxlan.percale kept when
this node's tunnel address changes; an IPv6 pool the host MTU cannot carry stops IPv6 alone,
said once; a route the kernel refuses is said once, with its destination and the kernel's reason;
two nodes publishing one tunnel address: one programmed, the clash said.

The agent's periodic resync is an hour away here, so whatever a test sees came from the change
it made, not from a resync repairing it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.netns

# Runs inside the namespace: percale-node's VXLAN agent, and nothing else, over a
# MemoryDatastore. One JSON command a line on stdin, one JSON answer a line on stdout:
#   {"put": document}           create or update a resource
#   {"block": [cidr, node]}     an IPAM block with that node's affinity
#   {"logs": true}              what the agent logged so far ("percale.vxlan", INFO and up)
#   {"host_mtu": n}             the host MTU changed (what node/host_mtu.py tells the agent)
WORKER = r"""
import asyncio, json, logging, sys
from percale.api import IPAMBlock, parse
from percale.datastore import Key, MemoryDatastore, NotFound
from percale.datastore.cache import Cache
from percale.dataplane.blackholes import Blackholes
from percale.dataplane.fib import FIB
from percale.dataplane.route_owners import RouteProtocol
from percale.ipam.allocator import IPAM
from percale.vxlan import agent as vxlan_agent

class Told(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.getMessage()}")

async def written_by_the_test(*args):
    return None  # this node's tunnel address is the test's to write, not IPAM's

async def main(host_mtu, bgp, resync):
    vxlan_agent.tunnel_address.reconcile = written_by_the_test
    told = Told()
    logger = logging.getLogger("percale.vxlan")
    logger.addHandler(told)
    logger.setLevel(logging.INFO)
    store = MemoryDatastore()
    cache = Cache(store, ["IPPool", "Node", "IPAMBlock"], node="a")
    agent = vxlan_agent.VXLANAgent(cache, "a", store=store, ipam=IPAM(store),
                                   routes=FIB(protocol=RouteProtocol.VXLAN, takeover=True),
                                   tunnels=True, host_mtu=host_mtu, bgp=bgp, resync=resync,
                                   # Without BGP the VXLAN side keeps the own blocks' blackholes.
                                   blackholes=None if bgp else Blackholes())
    tasks = [asyncio.ensure_future(cache.run()), asyncio.ensure_future(agent.run())]
    while line := await asyncio.to_thread(sys.stdin.readline):
        for task in tasks:
            if task.done():
                task.result()  # the agent or the view stopped: say why
        command = json.loads(line)
        answer = {"ok": True}
        if "put" in command:
            value = parse(command["put"])
            try:
                current = await store.get(Key.of(value))
                await store.update(value, revision=current.revision)
            except NotFound:
                await store.create(value)
        elif "block" in command:
            cidr, node = command["block"]
            await store.create(IPAMBlock.empty(cidr, affinity=f"host:{node}"))
        elif "logs" in command:
            answer["logs"] = told.lines
        elif "host_mtu" in command:
            agent.set_host_mtu(command["host_mtu"])
        print(json.dumps(answer), flush=True)
    for task in tasks:
        task.cancel()

asyncio.run(main(int(sys.argv[1]), sys.argv[2] == "bgp", float(sys.argv[3])))
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def node(name: str, address: str, tunnel: str, address6: str | None = None,
         tunnel6: str | None = None, *, mac: str | None = None) -> dict:
    bgp = {"ipv4Address": address}
    spec: dict = {"bgp": bgp, "ipv4VXLANTunnelAddr": tunnel}
    if mac:
        spec["vxlanTunnelMACAddr"] = mac
    if address6:
        bgp["ipv6Address"] = address6
        spec["ipv6VXLANTunnelAddr"] = tunnel6
    return {"apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


def pool(name: str, cidr: str) -> dict:
    return {"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, "vxlanMode": "Always"}}


class AgentNamespace:
    """A namespace with an underlay `under` (192.0.2.1/24, fd00:99::1/64) and the agent of
    node "a" running in it."""

    def __init__(self, host_mtu: int, *, bgp: bool = True, resync: float = 3600) -> None:
        self.name = f"vxg{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", self.name)
        self.worker: subprocess.Popen | None = None
        try:
            self.ip("link", "add", "under", "type", "veth", "peer", "name", "peer")
            self.ip("addr", "add", "192.0.2.1/24", "dev", "under")
            self.ip("addr", "add", "fd00:99::1/64", "dev", "under", "nodad")
            for device in ("lo", "under", "peer"):
                self.ip("link", "set", device, "up")
            self.worker = subprocess.Popen(
                ["ip", "netns", "exec", self.name, sys.executable, "-c", WORKER, str(host_mtu),
                 "bgp" if bgp else "vxlan", str(resync)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stdin.close()  # type: ignore[union-attr]
            try:
                self.worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        sh("ip", "netns", "del", self.name, check=False)

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.name, *args).stdout

    def tell(self, **command) -> dict:
        assert self.worker is not None and self.worker.stdin and self.worker.stdout
        self.worker.stdin.write(json.dumps(command) + "\n")
        self.worker.stdin.flush()
        answer = self.worker.stdout.readline()
        assert answer, "the agent's worker stopped (its traceback is in the captured stderr)"
        return json.loads(answer)

    def logs(self) -> list[str]:
        return self.tell(logs=True)["logs"]

    def until(self, what: str, check, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}\nroutes:\n{self.ip('route')}"
                                     f"\nlogged: {self.logs()}")
            time.sleep(0.05)


@pytest.fixture
def agent_ns(request):
    made = AgentNamespace(getattr(request, "param", 1500))
    yield made
    made.close()


def tunnel_route(ns: AgentNamespace, block: str, via: str, device: str = "vxlan.percale"):
    def present() -> bool:
        return f"via {via} dev {device} proto 204 onlink" in ns.ip(
            "-6" if ":" in block else "-4", "route", "show", block)
    return present


def device_mtu(ns: AgentNamespace) -> int | None:
    """vxlan.percale's MTU; None while there is none (the agent makes it again on a new parent)."""
    shown = sh("ip", "-n", ns.name, "-j", "link", "show", "vxlan.percale", check=False).stdout
    return json.loads(shown)[0]["mtu"] if shown.strip() else None


def b_routed(ns: AgentNamespace) -> None:
    """A VXLAN pool, this node a and node b, and b's block 10.244.2.0/26 routed through the
    tunnel to b's tunnel address."""
    ns.tell(put=pool("v4", "10.244.0.0/16"))
    ns.tell(put=node("a", "192.0.2.1/24", "10.244.1.0"))
    ns.tell(put=node("b", "192.0.2.2/24", "10.244.2.0"))
    ns.tell(block=["10.244.2.0/26", "b"])
    ns.until("b's block routed", tunnel_route(ns, "10.244.2.0/26", "10.244.2.0"))


def test_routes_stay_when_this_nodes_tunnel_address_changes(agent_ns):
    b_routed(agent_ns)

    agent_ns.tell(put=node("a", "192.0.2.1/24", "10.244.1.64"))
    agent_ns.until("the new tunnel address on the device",
                   lambda: "10.244.1.64/32" in agent_ns.ip("-4", "addr", "show", "vxlan.percale"))
    agent_ns.until("b's block routed after the change", tunnel_route(agent_ns, "10.244.2.0/26", "10.244.2.0"),
                   timeout=1.0)
    assert "10.244.1.0/32" not in agent_ns.ip("-4", "addr", "show", "vxlan.percale")


@pytest.mark.parametrize("agent_ns", [1300], indirect=True)
def test_an_ipv6_pool_the_host_mtu_cannot_carry_stops_ipv6_alone(agent_ns):
    """Host MTU 1300 passes percale-node's start-up check (646, for IPv4 pods) but leaves an
    IPv6 tunnel 1230, below the 1280 IPv6 needs: IPv4 is programmed all the same, and the reason
    IPv6 is not is said once."""
    agent_ns.tell(put=pool("v4", "10.244.0.0/16"))
    agent_ns.tell(put=pool("v6", "fd00:10::/48"))
    agent_ns.tell(put=node("a", "192.0.2.1/24", "10.244.1.0", "fd00:99::1/64", "fd00:10:0:1::"))
    agent_ns.tell(put=node("b", "192.0.2.2/24", "10.244.2.0", "fd00:99::2/64", "fd00:10:0:2::"))
    agent_ns.tell(block=["10.244.2.0/26", "b"])
    agent_ns.tell(block=["fd00:10:0:2::/122", "b"])
    agent_ns.until("b's IPv4 block routed", tunnel_route(agent_ns, "10.244.2.0/26", "10.244.2.0"))
    # Later changes go on reaching the kernel, and the reason is not said again.
    agent_ns.tell(put=node("c", "192.0.2.3/24", "10.244.3.0", "fd00:99::3/64", "fd00:10:0:3::"))
    agent_ns.tell(block=["10.244.3.0/26", "c"])
    agent_ns.until("c's IPv4 block routed", tunnel_route(agent_ns, "10.244.3.0/26", "10.244.3.0"))

    assert "vxlan6.percale" not in agent_ns.ip("link", "show")
    assert agent_ns.ip("-6", "route", "show", "proto", "204") == ""
    said = [line for line in agent_ns.logs() if "IPv6 VXLAN" in line]
    assert len(said) == 1, agent_ns.logs()
    assert said[0].startswith("ERROR") and "host MTU 1300" in said[0] and "1280" in said[0], said


def test_a_route_the_kernel_refuses_is_said_once_with_its_reason(agent_ns):
    """b publishes as its tunnel address one this host holds itself: the kernel refuses a
    gateway of its own (onlink), and the operator must learn why b's block is unreachable."""
    agent_ns.ip("addr", "add", "10.244.2.0/32", "dev", "lo")
    agent_ns.tell(put=pool("v4", "10.244.0.0/16"))
    agent_ns.tell(put=node("a", "192.0.2.1/24", "10.244.1.0"))
    agent_ns.tell(put=node("b", "192.0.2.2/24", "10.244.2.0"))
    agent_ns.tell(block=["10.244.2.0/26", "b"])
    agent_ns.tell(put=node("c", "192.0.2.3/24", "10.244.3.0"))
    agent_ns.tell(block=["10.244.3.0/26", "c"])
    agent_ns.until("c's block routed", tunnel_route(agent_ns, "10.244.3.0/26", "10.244.3.0"))
    agent_ns.tell(block=["10.244.4.0/26", "c"])  # another pass of the agent: nothing said again
    agent_ns.until("c's second block routed", tunnel_route(agent_ns, "10.244.4.0/26", "10.244.3.0"))

    assert agent_ns.ip("-4", "route", "show", "10.244.2.0/26") == ""
    said = [line for line in agent_ns.logs() if "refused" in line]
    assert said == ["WARNING the kernel refused the VXLAN route to 10.244.2.0/26 via 10.244.2.0 dev "
                    "vxlan.percale: Invalid argument: Nexthop has invalid gateway"], agent_ns.logs()


def test_two_nodes_with_one_tunnel_address_program_the_first_by_name_and_say_so(agent_ns):
    """The kernel holds one neighbour entry per tunnel address: programming both would leave
    whichever was written last, flapping. b keeps it (the first by name); c is left out, and the
    warning names both."""
    agent_ns.tell(put=pool("v4", "10.244.0.0/16"))
    agent_ns.tell(put=node("a", "192.0.2.1/24", "10.244.1.0"))
    agent_ns.tell(put=node("c", "192.0.2.3/24", "10.244.2.0", mac="66:00:00:00:00:0c"))
    agent_ns.tell(put=node("b", "192.0.2.2/24", "10.244.2.0", mac="66:00:00:00:00:0b"))
    agent_ns.tell(block=["10.244.2.0/26", "b"])
    agent_ns.tell(block=["10.244.3.0/26", "c"])
    agent_ns.until("b's block routed", tunnel_route(agent_ns, "10.244.2.0/26", "10.244.2.0"))

    assert "10.244.2.0 lladdr 66:00:00:00:00:0b PERMANENT" in agent_ns.ip("neigh", "show", "dev", "vxlan.percale")
    fdb = sh("bridge", "-n", agent_ns.name, "fdb", "show", "dev", "vxlan.percale").stdout
    assert "66:00:00:00:00:0b dst 192.0.2.2" in fdb and "66:00:00:00:00:0c" not in fdb
    assert agent_ns.ip("-4", "route", "show", "10.244.3.0/26") == ""  # c's waits: no tunnel end
    said = [line for line in agent_ns.logs() if "publish the same" in line]
    assert said == ["WARNING nodes b and c publish the same IPv4 VXLAN tunnel address, 10.244.2.0: b "
                    "keeps it (the first by name) and c is left out, with no neighbour or FDB entry "
                    "and its blocks unreachable through VXLAN, until one of the two Nodes changes"], said


def test_without_bgp_a_deleted_blackhole_of_an_own_block_comes_back_at_the_next_check():
    """With the VXLAN backend the VXLAN side keeps the node's blackholes; its periodic check
    trusted what it had installed, so one deleted by hand never came back, and addresses of the
    node's block no pod holds followed the default route."""
    ns = AgentNamespace(1500, bgp=False, resync=1.0)
    try:
        ns.tell(put=pool("v4", "10.244.0.0/16"))
        ns.tell(put=node("a", "192.0.2.1/24", "10.244.1.0"))
        ns.tell(block=["10.244.1.0/26", "a"])
        blackhole = lambda: "blackhole 10.244.1.0/26 proto 203" in ns.ip("-4", "route")  # noqa: E731
        ns.until("the own block's blackhole", blackhole)
        ns.ip("route", "del", "blackhole", "10.244.1.0/26", "proto", "203")
        assert not blackhole()
        ns.until("the blackhole put back by the check", blackhole, timeout=5.0)
    finally:
        ns.close()


def test_a_host_mtu_lowered_while_running_resizes_the_device_and_brings_the_routes_back(agent_ns):
    """The node's address moves to an interface of MTU 1400: the device made on it is cut to
    1350 by the kernel, and setting the 1450 of the old host MTU fails (EINVAL), so every IPv4
    VXLAN route left the kernel until the agent restarted. Told the new host MTU (percale-node
    decides it again every 30 s), the agent sizes the device from it and routes again."""
    agent_ns.ip("link", "add", "narrow", "type", "veth", "peer", "name", "narrow-peer")
    agent_ns.ip("link", "set", "narrow", "mtu", "1400")
    agent_ns.ip("link", "set", "narrow-peer", "mtu", "1400")
    agent_ns.ip("addr", "add", "198.51.100.1/24", "dev", "narrow")
    for device in ("narrow", "narrow-peer"):
        agent_ns.ip("link", "set", device, "up")
    b_routed(agent_ns)

    agent_ns.tell(put=node("a", "198.51.100.1/24", "10.244.1.0"))
    agent_ns.tell(host_mtu=1400)
    agent_ns.until("the device at the new host MTU less VXLAN's 50",
                   lambda: device_mtu(agent_ns) == 1350, timeout=15)
    agent_ns.until("b's block routed again", tunnel_route(agent_ns, "10.244.2.0/26", "10.244.2.0"),
                   timeout=15)


def test_a_smaller_host_mtu_keeps_the_tunnel_ends(agent_ns):
    """Resizing the device wrote its MAC again, unchanged, and the kernel flushes a device's
    neighbour entries whenever its address is written: every remote tunnel end was gone, and
    pods unreachable across nodes, until the next 30 s check."""
    b_routed(agent_ns)

    def tunnel_end() -> bool:
        return "10.244.2.0 lladdr" in sh("ip", "-n", agent_ns.name, "neigh", "show", "dev",
                                         "vxlan.percale", check=False).stdout

    agent_ns.until("b's tunnel end", tunnel_end)
    agent_ns.tell(host_mtu=1400)
    agent_ns.until("the device at 1350", lambda: device_mtu(agent_ns) == 1350, timeout=15)
    agent_ns.until("b's tunnel end kept", tunnel_end, timeout=3)
