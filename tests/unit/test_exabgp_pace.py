"""bgpd/exabgp_pace.py's `_lean_parsing`: ExaBGP decodes the same NLRIs, raises the same error
for a family it does not know, and still logs each NLRI when debug logging is on.

The patch changes ExaBGP's classes for the whole process, so each check runs in a fresh
interpreter: ExaBGP as shipped first, then patched, in the same process and on the same bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit

PRELUDE = textwrap.dedent("""
    import ipaddress, json, sys
    from exabgp.bgp.message.action import Action
    from exabgp.bgp.message.notification import Notify
    from exabgp.bgp.message.update.nlri.nlri import NLRI
    from exabgp.bgp.message.update.nlri.qualifier.path import PathInfo
    from exabgp.logger import log, option
    from exabgp.protocol.family import AFI, SAFI
    import percale.bgpd.exabgp_pace as pace

    class Sink:  # ExaBGP's log handlers, which its start-up would have set
        def __getattr__(self, name):
            return lambda *args: None

    option.logger = Sink()

    def packed(*prefixes, path_id=None, label=None):
        out = b""
        for text in prefixes:
            network = ipaddress.ip_network(text)
            size = (network.prefixlen + 7) // 8
            head = b"" if path_id is None else path_id.to_bytes(4, "big")
            bits = network.prefixlen
            body = network.network_address.packed[:size]
            if label is not None:  # RFC 3107: the label stack is counted in the length
                body = ((label << 4) | 1).to_bytes(3, "big") + body
                bits += 24
            out += head + bytes([bits]) + body
        return out

    V4 = [str(ipaddress.ip_network((0x0AF4_1234 if n else 0, n), strict=False)) for n in range(33)]
    V6 = [str(ipaddress.ip_network((0xFD00_0244_1234_5678 << 64 if n else 0, n), strict=False))
          for n in range(0, 129, 7)]
    CASES = [
        (AFI.ipv4, SAFI.unicast, packed(*V4), False),
        (AFI.ipv4, SAFI.multicast, packed("232.1.0.0/16"), False),
        (AFI.ipv6, SAFI.unicast, packed(*V6, "::/0", "fd00:244::40/122"), False),
        (AFI.ipv6, SAFI.multicast, packed("ff3e::/32"), False),
        (AFI.ipv4, SAFI.unicast, packed("10.244.1.0/26", "10.244.2.0/26", path_id=7), True),
        (AFI.ipv4, SAFI.nlri_mpls, packed("10.244.3.0/24", label=100), False),
    ]
    # Malformed: a mask longer than the family, a prefix cut short, no mask at all.
    BROKEN = [(AFI.ipv4, SAFI.unicast, b"\\x21\\x0a\\x00\\x00\\x00\\x00"),
              (AFI.ipv4, SAFI.unicast, b"\\x18\\x0a\\xf4"),
              (AFI.ipv6, SAFI.unicast, b"\\x40\\xfd\\x00"),
              (AFI.ipv4, SAFI.unicast, b"")]

    def described(nlri):
        cidr = nlri.cidr
        return [type(nlri).__name__, sorted(vars(nlri)), str(nlri.afi), str(nlri.safi),
                type(nlri.afi).__name__, type(nlri.safi).__name__, int(nlri.action),
                nlri.path_info is PathInfo.NOPATH, str(nlri.path_info), repr(nlri.nexthop),
                type(cidr).__name__, sorted(vars(cidr)), cidr._packed.hex(), cidr.mask, cidr._ip,
                nlri.json(compact=True), nlri.index().hex()]

    def decoded():
        out = []
        for afi, safi, data, addpath in CASES:
            while data:
                nlri, data = NLRI.unpack_nlri(afi, safi, data, Action.ANNOUNCE, addpath)
                out.append(described(nlri))
        for afi, safi, data in BROKEN:
            try:
                NLRI.unpack_nlri(afi, safi, data, Action.ANNOUNCE, False)
                out.append("no error")
            except Notify as err:
                out.append(str(err))
        return out

    def unknown_family():
        try:
            NLRI.unpack_nlri(AFI.ipv4, SAFI(200), b"\\x08\\x0a", Action.ANNOUNCE, False)
        except Notify as err:
            return str(err)
        return None
""")


def run(body: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_patched_decoder_reads_every_nlri_as_exabgp_does():
    got = run("""
        shipped = decoded(), unknown_family()
        pace._lean_parsing()
        patched = decoded(), unknown_family()
        print(json.dumps({"shipped": shipped, "patched": patched}))
    """)
    assert got["patched"] == got["shipped"]
    nlris, unknown = got["patched"]
    assert unknown and "unknown family" in unknown
    decoded, broken = nlris[:-4], nlris[-4:]
    assert len(decoded) == 33 + 1 + 21 + 1 + 2 + 1
    assert [d[15] for d in decoded[:33:8]] == ['"0.0.0.0/0"', '"10.0.0.0/8"', '"10.244.0.0/16"',
                                               '"10.244.18.0/24"', '"10.244.18.52/32"']
    assert "no error" not in broken


def test_debug_logging_still_logs_each_nlri_and_is_skipped_when_off():
    got = run("""
        seen = []
        log.logger = lambda logger, message, source, level: seen.append(
            (source, message() if callable(message) else message))
        pace._lean_parsing()
        option.logit["DEBUG"] = False
        decoded()
        quiet = len(seen)
        option.logit["DEBUG"] = True
        decoded()
        print(json.dumps({"quiet": quiet, "parser": sum(1 for s, _ in seen if s == "parser")}))
    """)
    assert got == {"quiet": 0, "parser": 59 + 4}  # every NLRI read, and each broken one


UPDATES = textwrap.dedent("""
    from exabgp.bgp.message.update import Update
    from exabgp.bgp.message.update.eor import EOR
    from exabgp.bgp.message.update.attribute import Attributes
    from exabgp.bgp.message.update.attribute.aspath import SEQUENCE, ASPath
    from exabgp.bgp.message.update.attribute.localpref import LocalPreference
    from exabgp.bgp.message.update.attribute.med import MED
    from exabgp.bgp.message.update.attribute.nexthop import NextHop
    from exabgp.bgp.message.update.attribute.origin import Origin
    from exabgp.reactor.api.response.json import JSON

    def hop(text):
        return NextHop(text, ipaddress.ip_address(text).packed)

    def nlris(afi, safi, data, action, next_hop=None, addpath=False):
        out = []
        while data:
            nlri, data = NLRI.unpack_nlri(afi, safi, data, action, addpath)
            if next_hop is not None:
                nlri.nexthop = next_hop
            out.append(nlri)
        return out

    def updates():
        attributes = Attributes()
        for attribute in (Origin(Origin.IGP), ASPath([SEQUENCE([64512, 64513])]), MED(20),
                          LocalPreference(100)):
            attributes.add(attribute)
        one, two, six = hop("192.168.1.2"), hop("192.168.1.3"), hop("fd00::2")
        v4 = nlris(AFI.ipv4, SAFI.unicast, packed(*V4), Action.ANNOUNCE, one)
        v6 = nlris(AFI.ipv6, SAFI.unicast, packed(*V6), Action.ANNOUNCE, six)
        gone4 = nlris(AFI.ipv4, SAFI.unicast, packed(*V4[::3]), Action.WITHDRAW)
        gone6 = nlris(AFI.ipv6, SAFI.unicast, packed(*V6[::2]), Action.WITHDRAW)
        other = nlris(AFI.ipv4, SAFI.unicast, packed("10.245.0.0/26", "10.245.0.64/26"),
                      Action.ANNOUNCE, two)
        paths = nlris(AFI.ipv4, SAFI.unicast, packed("10.244.1.0/26", "10.244.2.0/26",
                                                      path_id=7), Action.ANNOUNCE, one, True)
        labelled = nlris(AFI.ipv4, SAFI.nlri_mpls, packed("10.244.3.0/24", label=100),
                         Action.ANNOUNCE, one)
        multicast = nlris(AFI.ipv4, SAFI.multicast, packed("232.1.0.0/16"), Action.ANNOUNCE, two)
        # The same next hop in two families, taking turns.
        shared = nlris(AFI.ipv4, SAFI.multicast, packed("232.2.0.0/16", "232.3.0.0/16"),
                       Action.ANNOUNCE, one)
        bare = nlris(AFI.ipv4, SAFI.unicast, packed("10.246.0.0/24"), Action.ANNOUNCE)
        del bare[0].nexthop  # ExaBGP writes "null" for a next hop it cannot read
        interleaved = [n for pair in zip(v4, other * 20) for n in pair]
        return [
            Update(v4, attributes), Update(v6, attributes), Update(gone4, Attributes()),
            Update(gone6 + gone4, Attributes()), Update(v4[:5] + gone6 + v6[:3], attributes),
            Update(interleaved, attributes), Update(paths + v4[:2], attributes),
            Update(labelled + multicast + v4[:1], attributes), Update(bare, attributes),
            Update(v4[:4], Attributes()), Update([], attributes), Update([], Attributes()),
            Update([v4[0], shared[0], v4[1], shared[1]], attributes),
            EOR(AFI.ipv4, SAFI.unicast), EOR(AFI.ipv6, SAFI.unicast),
        ]

    def encoded():
        out = []
        for compact in (True, False):
            encoder = JSON.__new__(JSON)
            encoder.compact = compact
            out += [encoder._update(update) for update in updates()]
        return out
""")


def test_the_patched_encoder_writes_every_update_as_exabgp_does():
    got = run(UPDATES + textwrap.dedent("""
        shipped = encoded()
        pace._lean_parsing()
        pace._lean_update_json()
        patched = encoded()
        print(json.dumps({"shipped": shipped, "patched": patched}))
    """))
    assert got["patched"] == got["shipped"]
    texts = [json.loads(answer["message"]) for answer in got["patched"]]
    compact, full = texts[:15], texts[15:]
    assert compact[0]["update"]["announce"]["ipv4 unicast"]["192.168.1.2"][8] == "10.0.0.0/8"
    assert full[0]["update"]["announce"]["ipv4 unicast"]["192.168.1.2"][8] == {"nlri": "10.0.0.0/8"}
    assert set(compact[5]["update"]["announce"]["ipv4 unicast"]) == {"192.168.1.2", "192.168.1.3"}
    assert compact[6]["update"]["announce"]["ipv4 unicast"]["192.168.1.2"][0] == {
        "nlri": "10.244.1.0/26", "path-information": "0.0.0.7"}
    assert compact[8]["update"]["announce"]["ipv4 unicast"] == {"null": ["10.246.0.0/24"]}
    assert set(compact[4]["update"]) == {"attribute", "announce", "withdraw"}
    assert compact[12]["update"]["announce"]["ipv4 multicast"] == {
        "192.168.1.2": ["232.2.0.0/16", "232.3.0.0/16"]}
    assert "eor" in compact[13]


GTSM = textwrap.dedent("""
    import socket, types
    from exabgp.protocol.ip import IP
    from exabgp.reactor.listener import Listener
    from exabgp.reactor.peer import Peer

    ADDRESS = sys.argv[1]
    FAMILY = socket.AF_INET6 if ":" in ADDRESS else socket.AF_INET
    # The TTL (hop limit) sent with, and the minimum accepted (IP_MINTTL, IPV6_MINHOPCOUNT).
    LEVEL = socket.IPPROTO_IPV6 if ":" in ADDRESS else socket.IPPROTO_IP
    SENT, MINIMUM = (socket.IPV6_UNICAST_HOPS, 73) if ":" in ADDRESS else (socket.IP_TTL, 21)
    Peer.handle_connection = lambda self, connection: "to the state machine"
    pace._gtsm_per_connection()

    probe = socket.socket(FAMILY)
    probe.bind((ADDRESS, 0))
    port = probe.getsockname()[1]
    probe.close()
    listener = Listener(reactor=None)
    # The first neighbour on the address asks for GTSM: the socket is shared all the same.
    assert listener.listen_on(IP.create(ADDRESS), IP.create(ADDRESS), port, None, False, 255)
    [listening] = listener._sockets

    def accepted(ttl):
        client = socket.socket(FAMILY)
        client.setsockopt(LEVEL, SENT, ttl)
        client.settimeout(2)
        try:
            client.connect((ADDRESS, port))
        except TimeoutError:  # the kernel dropped the SYN
            return client, None
        while not listener.incoming():
            pass
        [connection] = listener._connected()
        return client, connection

    def admitted(ttl, incoming, outgoing=None):
        neighbor = {"incoming-ttl": incoming, "outgoing-ttl": outgoing,
                    "peer-address": IP.create(ADDRESS)}
        client, connection = accepted(ttl)
        if connection is None:
            return {"SYN dropped": True}
        answer = Peer.handle_connection(types.SimpleNamespace(neighbor=neighbor), connection)
        sock = connection.io
        if sock is None:
            client.settimeout(5)
            return {"answer": list(answer), "closed": client.recv(1) == b""}
        return {"answer": answer, "min": sock.getsockopt(LEVEL, MINIMUM),
                "ttl": sock.getsockopt(LEVEL, SENT)}

    default = socket.socket(FAMILY).getsockopt(LEVEL, SENT)
    print(json.dumps({
        "listener": [listening.getsockopt(LEVEL, MINIMUM), listening.getsockopt(LEVEL, SENT),
                     listening.getsockopt(socket.IPPROTO_TCP, pace.TCP_SAVE_SYN)],
        "default": default,
        "gtsm": admitted(255, 255), "gtsm, one hop": admitted(254, 254),
        "gtsm, too far": admitted(254, 255), "gtsm, far": admitted(64, 255),
        "plain": admitted(64, None), "outgoing-ttl": admitted(64, None, 10),
    }))
""")


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_gtsm_is_checked_per_accepted_connection_and_not_on_the_shared_listener(address):
    """incoming-ttl on the listening socket (as ExaBGP sets it) dropped every neighbour's SYNs
    below it. Patched: the listener checks nothing and answers with TTL 255 (a GTSM peer drops a
    SYN-ACK below its minimum); each connection is judged by its own neighbour."""
    got = run(GTSM, address)
    assert got["listener"] == [0, 255, 1]
    shipped = "to the state machine"
    assert got["gtsm"] == {"answer": shipped, "min": 255, "ttl": 255}
    assert got["gtsm, one hop"] == {"answer": shipped, "min": 254, "ttl": 255}
    assert got["gtsm, too far"] == got["gtsm, far"] == {"answer": [], "closed": True}
    assert got["plain"] == {"answer": shipped, "min": 0, "ttl": got["default"]}
    assert got["outgoing-ttl"] == {"answer": shipped, "min": 0, "ttl": 10}
