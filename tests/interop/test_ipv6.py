"""IPv6 end to end: dual-stack percale nodes with an IPv6 pool and spec.bgp.ipv6Address.

  * two nodes in a node-to-node mesh hold an IPv6 session beside the IPv4 one; pods get an
    IPv6 address (the CNI netconf's `assign_ipv6`, as Calico's), each node's /122 block reaches
    the other's kernel over the IPv6 session with the other node's IPv6 address as next hop,
    and pods on the two nodes ping each other over IPv6; each node's NodeStatus record shows
    the IPv6 session, its router ID and its IPv6 routes;
  * a node and BIRD as an eBGP top-of-rack router peer over IPv6: the node's /122 reaches BIRD
    with the node's IPv6 address as next hop, and a route BIRD originates inside the pool lands
    in the node's kernel via BIRD.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from percale.dataplane.route_owners import RouteProtocol

from tests.helpers.bgp_lab import (
    BirdPeer,
    Router,
    bird_config,
    diagnose,
    resource,
    setup_store,
    wait_for,
)
from tests.helpers.cni_node import CNINode, meshed_pair, netconf
from tests.helpers.store import with_store

pytestmark = pytest.mark.interop

PROTO_BGP = RouteProtocol.BGP
PROTO_BLACKHOLE = RouteProtocol.BLACKHOLE
POOL6 = "fd00:10:244::/64"  # blockSize left out: Calico's IPv6 default, /122
NODE_AS, TOR_AS = 64513, 64600


def dual_stack_conf(node: CNINode) -> dict:
    """The netconf asking IPAM for one address of each family (Calico's `assign_ipv4` /
    `assign_ipv6`, strings as in a real conflist)."""
    return netconf(node, ipam={"type": "percale-ipam", "assign_ipv4": "true", "assign_ipv6": "true"})


def add_dual_stack_pod(node: CNINode) -> tuple[str, ipaddress.IPv4Address, ipaddress.IPv6Address]:
    """A pod wired by a CNI ADD with dual_stack_conf."""
    netns = node.new_pod_netns()
    added = node.plugin("percale", "ADD", dual_stack_conf(node), container_id=f"c-{netns}",
                        netns=netns, args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{netns}")
    assert added.code == 0, added.out + added.err
    pod_default = subprocess.run(["ip", "netns", "exec", netns, "ip", "-6", "route", "show", "default"],
                                 capture_output=True, text=True, check=True).stdout
    assert "via fe80::ecee:eeff:feee:eeee dev eth0" in pod_default, pod_default
    # CHECK with what ADD returned passes; without the pod's IPv6 default route it fails.
    check = dict(dual_stack_conf(node), prevResult=added.json)
    checked = node.plugin("percale", "CHECK", check, container_id=f"c-{netns}", netns=netns,
                          args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{netns}")
    assert checked.code == 0, checked.out + checked.err
    subprocess.run(["ip", "netns", "exec", netns, "ip", "-6", "route", "del", "default"], check=True)
    broken = node.plugin("percale", "CHECK", check, container_id=f"c-{netns}", netns=netns,
                         args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{netns}")
    assert broken.code != 0 and "default route via fe80::ecee:eeff:feee:eeee is missing" in broken.out, (
        broken.out)
    subprocess.run(["ip", "netns", "exec", netns, "ip", "-6", "route", "add", "default", "via",
                    "fe80::ecee:eeff:feee:eeee", "dev", "eth0"], check=True)
    ips = [ipaddress.ip_interface(ip["address"]) for ip in added.json["ips"]]
    v4 = [i for i in ips if i.version == 4]
    v6 = [i for i in ips if i.version == 6]
    assert len(v4) == len(v6) == 1, ips
    assert v6[0].network.prefixlen == 128  # the pod holds a /128; the /122 is for routing
    return netns, v4[0].ip, v6[0].ip


def block6_of(ip: ipaddress.IPv6Address) -> str:
    return str(ipaddress.ip_interface(f"{ip}/122").network)


def node_status(etcd, name: str):
    """The NodeStatus record the node's agent publishes (None until it has written one)."""
    from percale.datastore import Key, NotFound

    async def read(store):
        try:
            return (await store.get(Key("NodeStatus", name))).value
        except NotFound:
            return None

    return with_store(etcd.endpoint, read)


def ping6(netns: str, ip) -> bool:
    """One echo over IPv6, answered within 1 s. A new pod's gateway, the host veth's link-local
    address, answers from the start (both veth ends skip duplicate address detection); callers
    poll for what the nodes have yet to program (routes, neighbours, VXLAN entries)."""
    done = subprocess.run(["ip", "netns", "exec", netns, "ping", "-6", "-c", "1", "-W", "1",
                           str(ip)], capture_output=True, text=True, check=False)
    return done.returncode == 0


def test_ipv6_mesh_routes_blocks_and_pods_ping(etcd):
    a, b = meshed_pair(etcd.endpoint, etcd.unix_endpoint, ipv6_pool=POOL6)
    try:
        pod_a, ip4_a, ip6_a = add_dual_stack_pod(a)
        pod_b, ip4_b, ip6_b = add_dual_stack_pod(b)
        assert ip6_a in ipaddress.ip_network(POOL6) and ip6_b in ipaddress.ip_network(POOL6)
        block_a, block_b = block6_of(ip6_a), block6_of(ip6_b)
        assert block_a != block_b

        def logs() -> str:
            return "\n".join(
                node.exec("ip", "-6", "route", check=False).stdout
                + (node.workdir / "bgp" / "exabgp.conf").read_text()
                + (node.workdir / "agent.log").read_text()[-3000:] for node in (a, b))

        # Each node's /122 in the other's kernel, via the other's IPv6 address: learned over the
        # IPv6 session (an IPv4 session cannot carry an IPv6 next hop here).
        assert wait_for(lambda: a.routes(PROTO_BGP, 6).get(block_b) == "fd00:99::2"
                        and b.routes(PROTO_BGP, 6).get(block_a) == "fd00:99::1", 30), logs()
        # Only the other node's block: nothing of its own came back, nothing else leaked in.
        assert set(a.routes(PROTO_BGP, 6)) == {block_b}
        assert set(b.routes(PROTO_BGP, 6)) == {block_a}
        # The IPv4 side still works beside it.
        assert wait_for(lambda: a.routes(PROTO_BGP).get(str(ipaddress.ip_interface(f"{ip4_b}/26").network))
                        == "10.99.0.2", 15), logs()
        # Each node blackholes its own IPv6 block too.
        for node, block in ((a, block_a), (b, block_b)):
            def blackholes(node=node) -> list:
                out = node.exec("ip", "-j", "-6", "route", "show", "proto", str(PROTO_BLACKHOLE)).stdout
                return [(r["dst"], r["type"]) for r in json.loads(out or "[]")]
            assert wait_for(lambda node=node, block=block: blackholes(node) == [(block, "blackhole")],
                            10), blackholes(node)

        # Both routes are in; polled only for the underlay's neighbour discovery on a busy
        # machine (a new pod's own 2 s wait is tests/netns/test_cni_ipv6_pods.py's).
        assert wait_for(lambda: ping6(pod_a, ip6_b), 10), logs()
        assert wait_for(lambda: ping6(pod_b, ip6_a), 10), logs()

        # The NodeStatus record (written every 10 s): the IPv6 session, the router ID (IPv4,
        # also for IPv6), and the IPv6 routes: the node's own block and the one it learned.
        def recorded(node: CNINode, own: str, other: str, via: str) -> bool:
            record = node_status(etcd, node.name)
            status = record.status if record else None
            if status is None or status.routes is None or status.agent is None:
                return False
            routes = {(r.type, r.destination, r.gateway, r.learned_from.source_type,
                       r.learned_from.peer_ip) for r in status.routes.routes_v6}
            return (status.bgp.number_established_v6 == 1
                    and [p.peer_ip for p in status.bgp.peers_v6] == [via]
                    and status.agent.bgp_v6.router_id == node_ip4[node.name]
                    and routes == {("FIB", own, None, "Static", None),
                                   ("FIB", other, via, "NodeMesh", via)})

        node_ip4 = {a.name: "10.99.0.1", b.name: "10.99.0.2"}
        assert wait_for(lambda: recorded(a, block_a, block_b, "fd00:99::2")
                        and recorded(b, block_b, block_a, "fd00:99::1"), 40, interval=0.5), (
            node_status(etcd, a.name), node_status(etcd, b.name))
    finally:
        a.stop()
        b.stop()


TOR6, NODE6 = "fd00:99::fe", "fd00:99::1"


def ipv6_tor(router: Router, node: CNINode, peer: BirdPeer, static: list[str] = ()) -> None:
    """BIRD as a top-of-rack router reached over IPv6: the router and the node up, joined, each
    with its IPv6 address on the shared link, and BIRD peering with the node."""
    router.up()
    router.exec(router.ns, "ip", "addr", "add", f"{TOR6}/64", "dev", "br0", "nodad")
    node.start()
    router.attach(node.netns, "10.99.0.1/24")
    node.exec("ip", "addr", "add", f"{NODE6}/64", "dev", "fabric", "nodad")
    router.bird(bird_config(router.ip, [peer], static=list(static)))


def test_ipv6_session_with_bird_as_ebgp_top_of_rack(etcd):
    """Node AS 64513, BIRD AS 64600, peering over IPv6 only (the BGPPeer's peerIP is BIRD's IPv6
    address): the node's /122 reaches BIRD with the node's IPv6 address as next hop, and a /122
    BIRD originates inside the pool lands in the node's kernel via BIRD."""
    router, node = Router(), CNINode(etcd.unix_endpoint)
    tor_route = "fd00:10:244:0:ffff:ffff:ffff:ffc0/122"  # the pool's last block
    try:
        ipv6_tor(router, node, BirdPeer("node_a6", TOR6, TOR_AS, NODE6, NODE_AS, export="static",
                                        family=6), static=[tor_route])
        tor6, node6 = TOR6, NODE6
        setup_store(
            etcd,
            resource("IPPool", "pods6", {"cidr": POOL6}),
            resource("Node", node.name, {"bgp": {"ipv4Address": "10.99.0.1/24",
                                                 "ipv6Address": f"{node6}/64", "asNumber": NODE_AS}}),
            resource("BGPPeer", "tor6", {"nodeSelector": "all()", "peerIP": tor6, "asNumber": TOR_AS}),
        )
        assert wait_for(lambda: router.bird_established("node_a6"), 20), diagnose(router, node)

        _, _, ip6 = add_dual_stack_pod(node)
        block = block6_of(ip6)
        assert wait_for(lambda: block in router.bird_routes("node_a6", family=6), 15), (
            diagnose(router, node) + router.birdc("show route table master6 all", check=False))
        assert router.bird_routes("node_a6", family=6)[block].via == node6

        assert wait_for(lambda: node.routes(PROTO_BGP, 6).get(tor_route) == tor6, 15), (
            diagnose(router, node) + node.exec("ip", "-6", "route").stdout)
        # Only the pool route: the node's own block is not learned back.
        assert set(node.routes(PROTO_BGP, 6)) == {tor_route}
    finally:
        node.stop()
        router.down()


def test_an_ipv6_only_node_with_a_hashed_router_id_peers_with_bird(etcd):
    """A Node with only an IPv6 BGP address has no IPv4 address for its router ID; with
    `--router-id hash` (Calico's CALICO_ROUTER_ID=hash) it derives one from its name, and its
    session with BIRD comes up carrying that ID."""
    from percale.bgpd.peering import router_id

    router = Router()
    node = CNINode(etcd.unix_endpoint, agent_args=["--router-id", "hash"])
    try:
        ipv6_tor(router, node, BirdPeer("node_a6", TOR6, TOR_AS, NODE6, NODE_AS, family=6))
        tor6, node6 = TOR6, NODE6
        node_resource = resource("Node", node.name, {"bgp": {"ipv6Address": f"{node6}/64", "asNumber": NODE_AS}})
        setup_store(
            etcd, resource("IPPool", "pods6", {"cidr": POOL6}), node_resource,
            resource("BGPPeer", "tor6", {"nodeSelector": "all()", "peerIP": tor6, "asNumber": TOR_AS}),
        )
        assert wait_for(lambda: router.bird_established("node_a6"), 20), diagnose(router, node)
        expected = router_id(node_resource, "hash")
        assert expected and expected != "10.99.0.1"
        assert f"Neighbor ID:      {expected}" in router.birdc("show protocols all node_a6")
    finally:
        node.stop()
        router.down()


def test_an_ipv6_pool_with_vxlan_always_carries_ipv6_pods_through_vxlan6(etcd):
    """The IPv6 pool of a dual-stack pair switched to vxlanMode Always: each node takes an IPv6
    tunnel address (handle vxlan-v6-tunnel-addr-<node>) and a MAC onto its Node, makes
    vxlan6.percale (MTU host - 70), and the other node's /122 goes through it (protocol 204)
    instead of BGP; IPv6 pods ping across, and the IPv4 side stays on BGP."""
    from percale.datastore import Key

    a, b = meshed_pair(etcd.endpoint, etcd.unix_endpoint, ipv6_pool=POOL6)
    try:
        async def always(store):
            pool = await store.get(Key("IPPool", "pods6"))
            spec = pool.value.spec.model_copy(update={"vxlan_mode": "Always"})
            await store.update(pool.value.model_copy(update={"spec": spec}), revision=pool.revision)

        with_store(etcd.endpoint, always)
        pod_a, ip4_a, ip6_a = add_dual_stack_pod(a)
        pod_b, ip4_b, ip6_b = add_dual_stack_pod(b)
        block_a, block_b = block6_of(ip6_a), block6_of(ip6_b)

        def tunnel6(node: CNINode) -> str | None:
            return with_store(etcd.endpoint, lambda s: s.get(Key("Node", node.name))).value.spec.ipv6_vxlan_tunnel_addr

        assert wait_for(lambda: tunnel6(a) and tunnel6(b), 15)
        for node in (a, b):
            link = json.loads(node.exec("ip", "-j", "link", "show", "vxlan6.percale").stdout)[0]
            assert link["mtu"] == 1500 - 70
        assert wait_for(lambda: a.routes(RouteProtocol.VXLAN, 6).get(block_b) == str(tunnel6(b))
                        and b.routes(RouteProtocol.VXLAN, 6).get(block_a) == str(tunnel6(a)), 15), (
            a.exec("ip", "-6", "route").stdout)
        assert block_b not in a.routes(PROTO_BGP, 6)  # BGP leaves VXLAN's prefixes alone
        assert wait_for(lambda: ping6(pod_a, ip6_b), 20)
        assert wait_for(lambda: ping6(pod_b, ip6_a), 20)
        ipv4_block_b = str(ipaddress.ip_interface(f"{ip4_b}/26").network)
        assert wait_for(lambda: a.routes(PROTO_BGP).get(ipv4_block_b) == "10.99.0.2", 15)
    finally:
        a.stop()
        b.stop()


def test_an_egress_policy_leaves_an_ipv6_pods_neighbour_discovery_alone(etcd):
    """A GlobalNetworkPolicy isolating pod a for egress, with no rule: a's neighbour
    solicitations and adverts to its node went through the pod's egress chain, which nothing in
    it allowed (conntrack leaves them untracked), so a lost IPv6 altogether and b could not
    reach it, though a is not isolated for ingress and its replies are established traffic."""
    from percale.api import parse

    a, b = meshed_pair(etcd.endpoint, etcd.unix_endpoint, ipv6_pool=POOL6)
    try:
        deny = parse({"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy",
                      "metadata": {"name": "a-sends-nothing"},
                      "spec": {"selector": "pod == 'a'", "types": ["Egress"]}})
        with_store(etcd.endpoint, lambda store: store.create(deny))
        pods = {}
        for name in ("a", "b"):
            netns = a.new_pod_netns()
            conf = dict(dual_stack_conf(a), args={"cni": {"labels": [{"key": "pod", "value": name}]}})
            added = a.plugin("percale", "ADD", conf, container_id=f"c-{name}", netns=netns,
                             args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
            assert added.code == 0, added.out + added.err
            v6 = [ipaddress.ip_interface(ip["address"]).ip for ip in added.json["ips"]
                  if ":" in ip["address"]]
            pods[name] = (netns, v6[0])
        (netns_a, ip6_a), (netns_b, ip6_b) = pods["a"], pods["b"]
        # ADD returned with the pods' chains in.
        assert wait_for(lambda: ping6(netns_b, ip6_a), 10), a.exec(
            "nft", "list", "table", "inet", "percale").stdout
        assert not ping6(netns_a, ip6_b)  # the policy is in force: a sends nothing new
    finally:
        a.stop()
        b.stop()
