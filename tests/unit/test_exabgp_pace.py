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


def run(body: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
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
