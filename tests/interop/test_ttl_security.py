"""GTSM (BGPPeer ttlSecurity, RFC 5082) between a percale node and GoBGP, beside a node-to-node
mesh on the same node.

ExaBGP listens with one socket per local address, shared by every session on that address. As
shipped it put a GTSM neighbour's minimum TTL (IP_MINTTL) on that socket, so it held for every
session: the mesh peers' SYNs, sent with the default TTL of 64, were dropped, and A, passive
towards B (the mesh's higher address connects), never had a mesh session. And the listener's
SYN-ACK went out with TTL 64, which GoBGP's own minimum dropped. bgpd/exabgp_pace.py checks GTSM
per accepted connection instead (bgpd/README.md). Here A cannot connect out at all (its SYNs to
port 179 are dropped): every session of A must be one that its listener accepted.

Lab: a bridge (`Router`) with GoBGP (10.99.0.254, AS 64600, ttl-min 255) and two percale nodes,
A (10.99.0.1) and B (10.99.0.2), meshed in AS 64512; A has a BGPPeer with ttlSecurity: 1 to
GoBGP, rendered `incoming-ttl 255`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.helpers.bgp_lab import Router, diagnose, resource, setup_store, wait_for
from tests.helpers.cni_node import CNINode

pytestmark = pytest.mark.interop

TOR_AS = 64600
A_IP, B_IP = "10.99.0.1", "10.99.0.2"

# From the router's namespace: connect to A's port 179 from the router's address with the given
# TTL, and print what A sends first (hex), "" when A closes without a word, or why not.
PROBE = textwrap.dedent("""
    import socket, sys
    ttl, source, target = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.bind((source, 0))
    s.settimeout(3)
    try:
        s.connect((target, 179))
    except OSError as err:
        print("connect:", type(err).__name__)
        sys.exit()
    s.settimeout(5)
    try:
        print("data:" + s.recv(19).hex())
    except OSError as err:
        print("recv:", type(err).__name__)
""")


def probe(router: Router, ttl: int) -> str:
    return router.exec(router.ns, sys.executable, "-c", PROBE, str(ttl), router.ip, A_IP).stdout.strip()


def sends_open(answer: str) -> bool:
    """A BGP header (16 bytes of marker, length, type) of type 1: OPEN."""
    return answer.startswith("data:" + "ff" * 16) and answer[len("data:") + 36:] == "01"


def no_connecting_out(node: CNINode) -> None:
    """Drop every SYN the node sends to a BGP port: it can only accept sessions."""
    for rule in (["add", "table", "inet", "gtsmtest"],
                 ["add", "chain", "inet", "gtsmtest", "out",
                  "{ type filter hook output priority 0; policy accept; }"],
                 ["add", "rule", "inet", "gtsmtest", "out",
                  "tcp", "dport", "179", "tcp", "flags", "&", "(syn|ack)", "==", "syn", "drop"]):
        node.exec("nft", *rule)


def bgp_connections(node: CNINode) -> list[tuple[str, str]]:
    """The node's established BGP connections: (local address:port, peer address:port)."""
    out = node.exec("ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )",
                    check=False).stdout
    return [(f[2], f[3]) for f in (line.split() for line in out.splitlines()) if len(f) >= 4]


def accepted_from(node: CNINode, node_ip: str, peer_ip: str) -> bool:
    """An established BGP connection from peer_ip to the node's port 179: one the node's
    listener accepted."""
    return (f"{node_ip}:179", peer_ip) in {(local, peer.rsplit(":", 1)[0])
                                          for local, peer in bgp_connections(node)}


def min_ttl_drops(node: CNINode) -> int:
    """Packets the node's kernel dropped for arriving below a socket's IP_MINTTL."""
    out = node.exec("nstat", "-az", "TcpExtTCPMinTTLDrop", check=False).stdout
    return sum(int(line.split()[1]) for line in out.splitlines()
               if line.startswith("TcpExtTCPMinTTLDrop"))


def test_a_ttl_security_peer_leaves_the_listener_open_to_mesh_peers(etcd):
    """GTSM holds for the ToR's address, the ToR's session comes in through A's listener, and so
    does B's, again after B's agent restarts."""
    router = Router()
    a, b = CNINode(etcd.unix_endpoint), CNINode(etcd.unix_endpoint)
    try:
        router.up()
        a.start(), b.start()
        router.attach(a.netns, f"{A_IP}/24")
        router.attach(b.netns, f"{B_IP}/24")
        no_connecting_out(a)
        setup_store(
            etcd,
            resource("Node", a.name, {"bgp": {"ipv4Address": f"{A_IP}/24"}}),
            resource("Node", b.name, {"bgp": {"ipv4Address": f"{B_IP}/24"}}),
            resource("BGPPeer", "tor", {"node": a.name, "peerIP": router.ip, "asNumber": TOR_AS,
                                        "ttlSecurity": 1}),
        )
        config = a.workdir / "bgp" / "exabgp.conf"
        assert wait_for(lambda: config.exists() and "incoming-ttl 255;" in config.read_text(), 20)

        # GTSM still holds for the ToR's address, connection by connection, before GoBGP runs:
        # sent with TTL 255 (directly connected) A answers with its OPEN; sent with 254 (one
        # router away), A never starts a BGP conversation.
        assert wait_for(lambda: sends_open(probe(router, 255)), 20), (
            probe(router, 255), diagnose(router, a))
        assert not sends_open(low := probe(router, 254)), low

        router.gobgp([(A_IP, 64512)], asn=TOR_AS, ttl_min=255)
        # GoBGP drops below 255: the session proves A sends with TTL 255 on it.
        assert wait_for(lambda: router.gobgp_established(A_IP), 30), diagnose(router, a, b)

        # The mesh, through A's listener: B (TTL 64) connects, A accepts.
        assert wait_for(lambda: accepted_from(a, A_IP, B_IP), 30), (
            bgp_connections(a), min_ttl_drops(a), diagnose(router, a, b))

        # B's agent restarts: B must connect to A again, and A must accept it again.
        b.restart_agent()
        assert wait_for(lambda: not accepted_from(a, A_IP, B_IP), 20), bgp_connections(a)
        assert wait_for(lambda: accepted_from(a, A_IP, B_IP), 30), (
            bgp_connections(a), min_ttl_drops(a), diagnose(router, a, b))
        assert router.gobgp_established(A_IP)
        # Every session of A is one it accepted (it cannot connect out).
        assert {local for local, _ in bgp_connections(a)} == {f"{A_IP}:179"}, bgp_connections(a)
    finally:
        a.stop()
        b.stop()
        router.down()


def test_a_node_connecting_out_to_a_ttl_security_peer_sends_with_ttl_255(etcd):
    """GoBGP passive with ttl-min 255: the session can only be A's connection, sent with 255."""
    router, a = Router(), CNINode(etcd.unix_endpoint)
    try:
        router.up()
        a.start()
        router.attach(a.netns, f"{A_IP}/24")
        router.gobgp([(A_IP, 64512)], asn=TOR_AS, ttl_min=255, passive=True)
        setup_store(
            etcd,
            resource("Node", a.name, {"bgp": {"ipv4Address": f"{A_IP}/24"}}),
            resource("BGPPeer", "tor", {"node": a.name, "peerIP": router.ip, "asNumber": TOR_AS,
                                        "ttlSecurity": 1}),
        )
        assert wait_for(lambda: router.gobgp_established(A_IP), 30), diagnose(router, a)
        connections = bgp_connections(a)
        assert connections and not any(local.endswith(":179") for local, _ in connections), connections
    finally:
        a.stop()
        router.down()
