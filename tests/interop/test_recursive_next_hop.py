"""Nodes in two racks, on two subnets joined by a router, with vxlanMode Never: every BGP next
hop of the other rack is on no connected network, and the kernel refuses a route through it as
it is ("Nexthop has invalid gateway"). As Calico's BIRD (`gateway recursive`), each node
installs such a route through its own route to the next hop: its default route, via its rack's
router. Pods in the two racks ping each other over IPv4 and IPv6.

  * a node-to-node mesh across the racks (IPv4 and IPv6 sessions); the router routes the pod
    blocks as a top-of-rack router that learned them would (static routes here). A more
    specific route to the other rack is followed at once, and the route via the router comes
    back when it goes;
  * BIRD on the router as a route reflector for both racks, installing what it learns: a
    reflected route keeps its next hop, the node in the other rack.

    rack 1: node a 10.98.1.1/24 ─── router 10.98.1.254 | 10.98.2.254 ─── node b 10.98.2.1/24
            fd00:98:1::1/64          fd00:98:1::fe       fd00:98:2::fe     fd00:98:2::1/64
"""

from __future__ import annotations

import ipaddress
import subprocess
import uuid

import pytest

from percale.dataplane.route_owners import RouteProtocol

from tests.helpers.bgp_lab import BirdPeer, bird_config, resource, wait_for
from tests.helpers.cni_node import CNINode, netconf, sh
from tests.helpers.store import put_node, with_store

pytestmark = pytest.mark.interop

BGP = RouteProtocol.BGP
POOL, POOL6 = "10.244.0.0/16", "fd00:10:244::/64"
AS = 64512
# (node address, router address) per rack, each family
RACKS = [("10.98.1.1", "10.98.1.254", "fd00:98:1::1", "fd00:98:1::fe"),
         ("10.98.2.1", "10.98.2.254", "fd00:98:2::1", "fd00:98:2::fe")]


class TwoRacks:
    """A router namespace and two percale nodes (CNINode), one per rack; every namespace's name
    starts with prn-, and all of them go, with what runs in them, by `stop`."""

    def __init__(self, etcd_unix_endpoint: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.router = f"prn-rt{tag}"
        self.nodes = [CNINode(etcd_unix_endpoint, name=f"prn-{tag}{rack}") for rack in "ab"]
        self.bird: subprocess.Popen | None = None

    def up(self) -> TwoRacks:
        sh("ip", "netns", "add", self.router)
        self.on_router("ip", "link", "set", "lo", "up")
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            self.on_router("sysctl", "-qw", f"{key}=1")
        for rack, (node, (address, router, address6, router6)) in enumerate(
                zip(self.nodes, RACKS), start=1):
            node.start()
            sh("ip", "link", "add", "fabric", "netns", node.netns, "type", "veth", "peer", "name",
               f"rack{rack}", "netns", self.router)
            # nodad: ExaBGP cannot bind a tentative address while duplicate detection runs
            node.exec("ip", "addr", "add", f"{address}/24", "dev", "fabric")
            node.exec("ip", "addr", "add", f"{address6}/64", "dev", "fabric", "nodad")
            node.exec("ip", "link", "set", "fabric", "up")
            self.on_router("ip", "addr", "add", f"{router}/24", "dev", f"rack{rack}")
            self.on_router("ip", "addr", "add", f"{router6}/64", "dev", f"rack{rack}", "nodad")
            self.on_router("ip", "link", "set", f"rack{rack}", "up")
            # The node's default gateway is its rack's router: the only way to the other rack.
            node.exec("ip", "route", "replace", "default", "via", router, "dev", "fabric")
            node.exec("ip", "-6", "route", "replace", "default", "via", router6, "dev", "fabric")
        return self

    def on_router(self, *args: str) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.router, *args)

    def register(self, etcd_endpoint: str, *extra: object, ipv6: bool = True) -> None:
        """The pools (vxlanMode Never: nothing is encapsulated), each node's BGP addresses, and
        `extra` resources."""
        from tests.helpers.ipam_world import add_pool

        async def work(store) -> None:
            await add_pool(store, "pods", POOL, vxlanMode="Never", ipipMode="Never")
            if ipv6:
                await add_pool(store, "pods6", POOL6, vxlanMode="Never")
            for node, (address, _, address6, _) in zip(self.nodes, RACKS):
                bgp = {"ipv4Address": f"{address}/24",
                       **({"ipv6Address": f"{address6}/64"} if ipv6 else {})}
                await put_node(store, resource("Node", node.name, {"bgp": bgp}))
            for item in extra:
                await store.create(item)

        with_store(etcd_endpoint, work)

    def add_pod(self, node: CNINode, ipv6: bool = True) -> tuple[str, list]:
        """A pod on `node`: its namespace and addresses (one per family asked for)."""
        netns = node.new_pod_netns()
        ipam = {"type": "percale-ipam", "assign_ipv4": "true",
                "assign_ipv6": "true" if ipv6 else "false"}
        added = node.plugin("percale", "ADD", netconf(node, ipam=ipam), container_id=f"c-{netns}",
                            netns=netns,
                            args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{netns}")
        assert added.code == 0, added.out + added.err
        return netns, [ipaddress.ip_interface(ip["address"]).ip for ip in added.json["ips"]]

    def diagnose(self) -> str:
        parts = [self.on_router("ip", "route").stdout, self.on_router("ip", "-6", "route").stdout]
        for node in self.nodes:
            parts += [node.exec("ip", "route", check=False).stdout,
                      node.exec("ip", "-6", "route", check=False).stdout,
                      (node.workdir / "agent.log").read_text(errors="replace")[-4000:]]
        return "\n".join(parts)

    def stop(self) -> None:
        if self.bird is not None and self.bird.poll() is None:
            self.bird.terminate()
            try:
                self.bird.wait(10)
            except subprocess.TimeoutExpired:
                self.bird.kill()
                self.bird.wait()
        for node in self.nodes:
            node.stop()
        sh("ip", "netns", "del", self.router, check=False)


@pytest.fixture
def racks(etcd):
    lab = TwoRacks(etcd.unix_endpoint)
    try:
        yield lab.up()
    finally:
        lab.stop()


def block(address) -> str:
    return str(ipaddress.ip_interface(f"{address}/{26 if address.version == 4 else 122}").network)


def ping(netns: str, address) -> bool:
    done = subprocess.run(["ip", "netns", "exec", netns, "ping", f"-{address.version}", "-c2",
                           "-i0.2", "-W2", str(address)], capture_output=True, text=True)
    return done.returncode == 0


def test_a_mesh_across_two_racks_routes_through_each_racks_router(etcd, racks):
    a, b = racks.nodes
    racks.register(etcd.endpoint)
    pod_a, (ip4_a, ip6_a) = racks.add_pod(a)
    pod_b, (ip4_b, ip6_b) = racks.add_pod(b)
    # The router routes the pods' blocks, as a top-of-rack router that learned them does.
    for (address, _, address6, _), (ip4, ip6) in zip(RACKS, ((ip4_a, ip6_a), (ip4_b, ip6_b))):
        racks.on_router("ip", "route", "add", block(ip4), "via", address)
        racks.on_router("ip", "-6", "route", "add", block(ip6), "via", address6)

    # Each node's blocks in the other's kernel, through its own rack's router: the BGP next
    # hop (the other node) is on no network of its own.
    def routed() -> bool:
        return (a.routes(BGP).get(block(ip4_b)) == "10.98.1.254"
                and a.routes(BGP, 6).get(block(ip6_b)) == "fd00:98:1::fe"
                and b.routes(BGP).get(block(ip4_a)) == "10.98.2.254"
                and b.routes(BGP, 6).get(block(ip6_a)) == "fd00:98:2::fe")

    assert wait_for(routed, 40), racks.diagnose()
    for source, target in ((pod_a, ip4_b), (pod_b, ip4_a), (pod_a, ip6_b), (pod_b, ip6_a)):
        # IPv6: the pod's gateway (the host veth's link-local address) needs a moment
        assert wait_for(lambda: ping(source, target), 20), (source, target, racks.diagnose())

    # A more specific route to rack 2, learned otherwise: followed at once (the agent's timed
    # check is 30 s away), and the route via the default gateway comes back when it goes.
    a.exec("ip", "route", "add", "10.98.2.0/24", "via", "10.98.1.253", "proto", "static")
    assert wait_for(lambda: a.routes(BGP).get(block(ip4_b)) == "10.98.1.253", 5), racks.diagnose()
    a.exec("ip", "route", "del", "10.98.2.0/24")
    assert wait_for(lambda: a.routes(BGP).get(block(ip4_b)) == "10.98.1.254", 5), racks.diagnose()
    assert wait_for(lambda: ping(pod_a, ip4_b), 10), racks.diagnose()
    log = (a.workdir / "agent.log").read_text(errors="replace")
    assert "next hop 10.98.2.1 is on no connected network: its routes go via 10.98.1.254" in log


def test_a_route_reflected_from_the_other_rack_keeps_its_next_hop_and_is_resolved(etcd, racks):
    a, b = racks.nodes
    workdir = a.workdir / "router"
    workdir.mkdir()
    peers = [BirdPeer(f"rack{rack}", router, AS, address, AS, rr_client=True)
             for rack, (address, router, _, _) in enumerate(RACKS, start=1)]
    # The router forwards by what it learns: BIRD's routes go into its kernel.
    config = bird_config("10.98.1.254", peers) + "protocol kernel { ipv4 { export all; }; }\n"
    (workdir / "bird.conf").write_text(config)
    racks.bird = subprocess.Popen(
        ["ip", "netns", "exec", racks.router, "bird", "-f", "-c", str(workdir / "bird.conf"),
         "-s", str(workdir / "bird.ctl"), "-P", str(workdir / "bird.pid")],
        stdout=open(workdir / "bird.log", "w"), stderr=subprocess.STDOUT)
    racks.register(
        etcd.endpoint,
        resource("BGPConfiguration", "default", {"nodeToNodeMeshEnabled": False}),
        *(resource("BGPPeer", f"rack{rack}", {"node": node.name, "peerIP": router, "asNumber": AS})
          for rack, (node, (_, router, _, _)) in enumerate(zip(racks.nodes, RACKS), start=1)),
        ipv6=False)
    pod_a, (ip_a,) = racks.add_pod(a, ipv6=False)
    pod_b, (ip_b,) = racks.add_pod(b, ipv6=False)

    def bird() -> str:
        return (sh("birdc", "-s", str(workdir / "bird.ctl"), "show", "route", check=False).stdout
                + (workdir / "bird.log").read_text(errors="replace")[-2000:])

    # Reflected with the next hop unchanged (the node in the other rack), and installed
    # through the node's own rack router.
    assert wait_for(lambda: a.routes(BGP).get(block(ip_b)) == "10.98.1.254"
                    and b.routes(BGP).get(block(ip_a)) == "10.98.2.254", 40), (
        bird() + racks.diagnose())
    def reflected() -> str:
        return sh("birdc", "-s", str(workdir / "bird.ctl"), "show", "route", "for", block(ip_b),
                  check=False).stdout

    assert wait_for(lambda: "via 10.98.2.1" in reflected(), 10), reflected() + bird()
    assert wait_for(lambda: ping(pod_a, ip_b), 20), bird() + racks.diagnose()
    assert wait_for(lambda: ping(pod_b, ip_a), 20), bird() + racks.diagnose()
