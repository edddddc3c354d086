"""ExaBGP 5.0 JSON events -> RIB calls.

The sample lines are ExaBGP 5.0.15's own output, spacing included: state lines from
`reactor/api/response/json.py` (`JSON.up/down/connected`), UPDATE, End-of-RIB and OPEN lines from
`exabgp decode` of hand-built messages. `decode` writes "direction": "in"; the live API writes
"receive", which most samples use.
"""

from __future__ import annotations

import ipaddress

import pytest

from percale.bgpd.exabgp_json import (
    EndOfRib, GracefulRestart, MalformedMessage, OpenReceived, PeerState, RibFeed, UpdateReceived,
    graceful_down, parse,
)
from percale.bgpd.rib import NLRI, AsPathSegment, Origin, Path, Peer, Rib

pytestmark = pytest.mark.unit

ENVELOPE = (
    '{{ "exabgp": "5.0.0", "time": 1795876605.144731, "host" : "vm", "pid" : 12647, "ppid" : 12643, '
    '"counter": 1, "type": "{type}", "neighbor": {{ "address": {{ "local": "10.99.0.1", "peer": "{peer}" }}, '
    '"asn": {{ "local": 64512, "peer": {asn} }}, "router-id": "10.99.0.1" {body} }} }}'
)


def line(type_: str, body: str, peer: str = "10.99.0.2", asn: int = 64512) -> str:
    return ENVELOPE.format(type=type_, body=body, peer=peer, asn=asn)


def state(value: str, reason: str | None = None, peer: str = "10.99.0.2") -> str:
    extra = f', "reason": "{reason}"' if reason is not None else ""
    return line("state", f', "state": "{value}"{extra}', peer)


def update(message: str, peer: str = "10.99.0.2", direction: str = "receive") -> str:
    return line("update", f', "direction": "{direction}", "message": {message}', peer)


def open_(capabilities: str, router_id: str = "10.99.0.2", peer: str = "10.99.0.2") -> str:
    return line("open", f', "direction": "receive", "open": {{ "version": 4, "asn": 64512, "hold_time": 30, '
                        f'"router_id": "{router_id}", "capabilities": {{ {capabilities} }} }}', peer)


GR_BOTH = ('"64": { "name": "graceful restart", "time": 120, "address-family-flags": '
           '{ "ipv4/unicast": [ "restart" ] , "ipv6/unicast": [ "restart" ]  }, "restart-flags": [ ]  }, '
           '"65": { "name": "asn4", "asn4": 64512 }')
GR_V4_ONLY_FORWARDING = ('"64": { "name": "graceful restart", "time": 120, "address-family-flags": '
                         '{ "ipv4/unicast": [ "restart" ] , "ipv6/unicast": [ ]  }, '
                         '"restart-flags": [ "forwarding" ]  }')
NO_GR = '"65": { "name": "asn4", "asn4": 64512 }, "1": { "name": "multiprotocol", "families": [ "ipv4/unicast" ] }'

FULL_V4_MESSAGE = (
    '{ "update": { "attribute": { "origin": "igp", "as-path": {"0": {"element": "as-sequence", "value": '
    '[65001, 65002]}, "1": {"element": "as-set", "value": [65003]}}, "med": 10, "local-preference": 200, '
    '"community": [ [ 64512, 200 ] ], "originator-id": "10.99.0.7", "cluster-list": [ "244.0.0.1", "244.0.0.2" ], '
    '"large-community": [ [ 64512, 5 , 6 ] ] }, "announce": { "ipv4 unicast": { "10.99.0.2": [ { "nlri": '
    '"10.244.2.0/26" }, { "nlri": "10.244.3.0/26" } ] } }, "withdraw": { "ipv4 unicast": [ { "nlri": '
    '"10.244.9.0/26" }, { "nlri": "10.244.8.0/26" } ] } } }'
)
FULL_V4 = update(FULL_V4_MESSAGE)
# a 32-byte MP_REACH next hop (global + link-local): ExaBGP lists the prefix under each
V6_TWO_NEXT_HOPS = update(
    '{ "update": { "attribute": { "origin": "igp", "local-preference": 100 }, "announce": { "ipv6 unicast": '
    '{ "fd00:99::2": [ { "nlri": "fd00:244::/122" } ], "fe80::2": [ { "nlri": "fd00:244::/122" } ] } } } }'
)
V6_WITHDRAW = update('{ "update": { "withdraw": { "ipv6 unicast": [ { "nlri": "fd00:244::40/122" } ] } } }')
EOR_V4 = update('{ "eor": { "afi" : "ipv4", "safi" : "unicast" } }')
EOR_V6 = update('{ "eor": { "afi" : "ipv6", "safi" : "unicast" } }')
ADD_PATH = update(
    '{ "update": { "attribute": { "origin": "igp" }, "announce": { "ipv4 unicast": { "10.99.0.2": [ '
    '{ "nlri": "10.244.2.0/26", "path-information": "0.0.0.1" }, '
    '{ "nlri": "10.244.3.0/26", "path-information": "0.0.0.2" } ] } } } }'
)


def announce_v4(*prefixes: str, next_hop: str = "10.99.0.2", peer: str = "10.99.0.2") -> str:
    nlris = ", ".join(f'{{ "nlri": "{p}" }}' for p in prefixes)
    return update(f'{{ "update": {{ "attribute": {{ "origin": "igp", "local-preference": 100 }}, '
                  f'"announce": {{ "ipv4 unicast": {{ "{next_hop}": [ {nlris} ] }} }} }} }}', peer)


def ip(text):
    return ipaddress.ip_address(text)


def net(text):
    return ipaddress.ip_network(text)


# ---------------------------------------------------------------- parse


def test_state_events():
    up = parse(state("up"))
    assert up == PeerState(Peer("10.99.0.2", 64512, 64512), "up", "")
    down = parse(state("down", "notification received (6,2)"))
    assert (down.state, down.reason) == ("down", "notification received (6,2)")
    assert parse(state("connected")).state == "connected"


def test_an_update_with_every_attribute():
    event = parse(FULL_V4)
    assert isinstance(event, UpdateReceived)
    assert event.peer == Peer("10.99.0.2", 64512, 64512)
    assert [p.prefix for p in event.announced] == [net("10.244.2.0/26"), net("10.244.3.0/26")]
    p = event.announced[0]
    assert p.next_hop == ip("10.99.0.2") and p.peer == event.peer and p.path_id == 0
    assert p.origin is Origin.IGP
    assert p.as_path == (AsPathSegment("as-sequence", (65001, 65002)), AsPathSegment("as-set", (65003,)))
    assert p.as_path_length == 3
    assert (p.med, p.local_pref) == (10, 200)
    assert p.originator_id == ip("10.99.0.7")
    assert p.cluster_list == (ip("244.0.0.1"), ip("244.0.0.2"))
    assert p.communities == ((64512, 200),)
    assert p.large_communities == ((64512, 5, 6),)
    assert event.withdrawn == (NLRI(net("10.244.9.0/26")), NLRI(net("10.244.8.0/26")))


def test_ipv6_with_a_link_local_next_hop_keeps_the_global_one():
    event = parse(V6_TWO_NEXT_HOPS)
    assert len(event.announced) == 1
    assert event.announced[0].next_hop == ip("fd00:99::2")
    assert event.announced[0].as_path == ()  # an empty AS_PATH is left out of the JSON


def test_ipv6_link_local_only_is_kept():
    event = parse(update('{ "update": { "attribute": { "origin": "igp" }, "announce": { "ipv6 unicast": '
                         '{ "fe80::2": [ { "nlri": "fd00:244::/122" } ] } } } }'))
    assert event.announced[0].next_hop == ip("fe80::2")


def test_a_route_without_a_next_hop_is_not_a_route():
    assert parse(update('{ "update": { "attribute": { "origin": "igp" }, "announce": { "ipv4 unicast": '
                        '{ "null": [ { "nlri": "10.244.2.0/26" } ] } } } }')) is None


def test_ipv6_withdraw():
    assert parse(V6_WITHDRAW).withdrawn == (NLRI(net("fd00:244::40/122")),)


def test_end_of_rib():
    assert parse(EOR_V4) == EndOfRib(Peer("10.99.0.2", 64512, 64512), "ipv4", "unicast")
    assert parse(EOR_V4).ip_version == 4
    assert parse(EOR_V6).ip_version == 6
    flow = parse(update('{ "eor": { "afi" : "ipv4", "safi" : "flow" } }'))
    assert flow.ip_version is None


def test_add_path_identifiers():
    event = parse(ADD_PATH)
    assert [(p.prefix, p.path_id) for p in event.announced] == [(net("10.244.2.0/26"), 1), (net("10.244.3.0/26"), 2)]
    withdraw = parse(update('{ "update": { "withdraw": { "ipv4 unicast": [ { "nlri": "10.244.2.0/26", '
                            '"path-information": "0.0.0.1" } ] } } }'))
    assert withdraw.withdrawn == (NLRI(net("10.244.2.0/26"), 1),)


def test_compact_nlri():
    event = parse(update('{ "update": { "attribute": { "origin": "igp" }, "announce": { "ipv4 unicast": '
                         '{ "10.99.0.2": [ "10.244.2.0/26" ] } }, '
                         '"withdraw": { "ipv4 unicast": [ "10.244.8.0/26" ] } } }'))
    assert event.announced[0].prefix == net("10.244.2.0/26")
    assert event.withdrawn == (NLRI(net("10.244.8.0/26")),)


def test_open_with_graceful_restart():
    event = parse(open_(GR_V4_ONLY_FORWARDING))
    assert isinstance(event, OpenReceived)
    assert event.router_id == ip("10.99.0.2") and event.hold_time == 30
    # ExaBGP shows a family's Forwarding State bit as "restart", the Restart State bit as "forwarding"
    assert event.graceful_restart == GracefulRestart(120, {4: True, 6: False}, restarted=True)
    assert parse(open_(NO_GR)).graceful_restart is None


def test_an_update_beside_the_negotiated_block():
    text = update('{ "update": { "attribute": { "origin": "igp" }, "announce": { "ipv4 unicast": { "10.99.0.2": '
                  '[ { "nlri": "10.244.2.0/26" } ] } } } }, "negotiated": { "message_size": 4096, "hold_time": 30, '
                  '"asn4": true, "multisession": false, "operational": false, "refresh": "normal", '
                  '"families": ["ipv4 unicast"], "nexthop": [], "add_path": {"send": [], "receive": []} } ')
    assert parse(text).announced[0].prefix == net("10.244.2.0/26")


@pytest.mark.parametrize(
    "text",
    [
        "done",
        "error",
        "",
        '[ { "peer-address": "10.99.0.2", "state": "established" } ]',  # show neighbor summary json
        "neighbor 10.99.0.2 ipv4 unicast 10.244.2.0/26 next-hop self",  # show adj-rib out
        update(FULL_V4_MESSAGE, direction="send"),  # what we sent
        update('{ "update": { "attribute": { "origin": "igp" }, "announce": { "ipv4 flow": '
               '{ "no-nexthop": [ { "destination-ipv4": [ "10.0.0.0/24" ] } ] } } } }'),
        line("keepalive", ', "direction": "receive"'),
        line("notification", ', "direction": "receive", "notification": { "code": 6, "subcode": 2, '
                             '"data": "0x", "message": "" } '),
        ('{ "exabgp": "5.0.0", "time": 1.0, "host" : "vm", "pid" : 1, "ppid" : 1, "type": "notification", '
         '"notification": "shutdown" }'),
    ],
)
def test_lines_that_are_not_rib_events(text):
    assert parse(text) is None


@pytest.mark.parametrize(
    "text",
    [
        '{ "exabgp": "5.0.0", "type": "update"',  # cut short
        line("state", ""),  # no state
        update('{ "update": { "announce": { "ipv4 unicast": { "10.99.0.2": [ { "nlri": "10.244.2.1/26" } ] } } } }'),
        update('{ "update": { "announce": { "ipv4 unicast": { "bogus": [ { "nlri": "10.244.2.0/26" } ] } } } }'),
    ],
)
def test_malformed_events_raise(text):
    with pytest.raises(MalformedMessage):
        parse(text)


def test_known_peers_lend_their_bgp_identifier():
    known = Peer("10.99.0.2", 64512, 64512, "10.99.0.2")
    assert parse(FULL_V4, {known.address: known}).announced[0].peer is known
    other_as = Peer("10.99.0.2", 65000, 64512, "10.99.0.2")
    assert parse(FULL_V4, {known.address: other_as}).peer.router_id is None


# ---------------------------------------------------------------- when a session ends


@pytest.mark.parametrize(
    ("reason", "graceful"),
    [
        ("closing connection", True),
        ("peer reset, message [closing connection] error[...]", True),
        ("stop, message [shutting down]", True),  # our own ExaBGP stopping: our restart
        ("graceful restarted negotiated, closing without sending any notification", True),
        ("notification received (6,2)", False),
        ("notification sent (4,0)", False),
        ("stop, message [removed]", False),
    ],
)
def test_which_session_ends_are_graceful(reason, graceful):
    assert graceful_down(reason, GracefulRestart(120, {4: True})) is graceful
    assert graceful_down(reason, None) is False


# ---------------------------------------------------------------- RibFeed


def make_feed() -> RibFeed:
    rib = Rib(router_id="10.99.0.1", pools=["10.244.0.0/16", "fd00:244::/48"], own_addresses=["10.99.0.1"])
    return RibFeed(rib, stale_time=300)


def session(feed: RibFeed, capabilities: str = GR_BOTH, now: float = 0.0) -> None:
    feed.feed(state("connected"), now)
    feed.feed(open_(capabilities), now)
    feed.feed(state("up"), now)


def test_feed_installs_announced_routes_with_the_peers_identifier():
    feed = make_feed()
    session(feed)
    feed.feed(FULL_V4, 1.0)
    feed.feed(V6_TWO_NEXT_HOPS, 1.0)
    assert dict(feed.rib.fib) == {
        net("10.244.2.0/26"): frozenset({ip("10.99.0.2")}),
        net("10.244.3.0/26"): frozenset({ip("10.99.0.2")}),
        net("fd00:244::/122"): frozenset({ip("fd00:99::2")}),
    }
    assert feed.rib.best("10.244.2.0/26").peer.router_id == ip("10.99.0.2")
    assert feed.peer("10.99.0.2").router_id == ip("10.99.0.2")
    feed.feed(V6_WITHDRAW, 2.0)
    feed.feed(update('{ "update": { "withdraw": { "ipv6 unicast": [ { "nlri": "fd00:244::/122" } ] } } }'), 2.0)
    assert net("fd00:244::/122") not in feed.rib.fib


def test_feed_graceful_restart_of_a_peer():
    feed = make_feed()
    session(feed)
    feed.feed(announce_v4("10.244.2.0/26", "10.244.3.0/26"), 1.0)
    feed.rib.changes()

    feed.feed(state("down", "closing connection"), 10.0)
    assert len(feed.rib.fib) == 2 and not feed.rib.changes()
    assert feed.rib.next_expiry() == 130.0  # the restart time from the peer's OPEN

    session(feed, now=20.0)
    assert feed.rib.next_expiry() == 320.0  # now bounded by the stale time
    feed.feed(announce_v4("10.244.2.0/26"), 21.0)
    feed.feed(EOR_V4, 22.0)
    assert set(feed.rib.fib) == {net("10.244.2.0/26")}
    assert feed.rib.next_expiry() is None


def test_feed_restart_time_runs_out():
    feed = make_feed()
    session(feed)
    feed.feed(announce_v4("10.244.2.0/26"), 1.0)
    feed.feed(state("down", "closing connection"), 10.0)
    feed.rib.expire(129.0)
    assert feed.rib.fib
    feed.rib.expire(130.0)
    assert not feed.rib.fib


@pytest.mark.parametrize(
    ("capabilities", "reason"),
    [
        (GR_BOTH, "notification received (6,2)"),
        (NO_GR, "closing connection"),
    ],
)
def test_feed_removes_routes_at_once_without_graceful_restart(capabilities, reason):
    feed = make_feed()
    session(feed, capabilities)
    feed.feed(announce_v4("10.244.2.0/26"), 1.0)
    feed.feed(state("down", reason), 10.0)
    assert not feed.rib.fib


def test_a_peer_no_longer_configured_loses_its_routes_before_its_session_ends():
    """Removing a peer is not a restart: graceful restart keeps nothing, and what the peer still
    sends before ExaBGP's reload closes the session is not taken."""
    feed = make_feed()
    session(feed)  # a peer offering graceful restart
    feed.feed(announce_v4("10.244.2.0/26", "10.244.3.0/26"), 1.0)
    assert not feed.configured(["10.99.0.2"], 2.0)
    assert len(feed.rib.fib) == 2

    assert feed.configured([], 3.0)
    assert not feed.rib.fib
    feed.feed(announce_v4("10.244.4.0/26"), 4.0)  # still on the wire
    assert not feed.rib.fib
    feed.feed(state("down", "closing connection"), 5.0)
    assert not feed.rib.fib and feed.rib.next_expiry() is None

    assert not feed.configured(["10.99.0.2"], 6.0)  # configured again: taken again
    session(feed, now=7.0)
    feed.feed(announce_v4("10.244.2.0/26"), 8.0)
    assert set(feed.rib.fib) == {net("10.244.2.0/26")}


def test_feed_restarted_peer_without_forwarding_state_loses_stale_routes_at_up():
    feed = make_feed()
    session(feed)
    feed.feed(announce_v4("10.244.2.0/26"), 1.0)
    feed.feed(state("down", "closing connection"), 10.0)
    feed.feed(open_(GR_BOTH.replace('[ "restart" ]', "[ ]")), 20.0)
    assert feed.rib.fib  # the OPEN alone changes nothing
    feed.feed(state("up"), 20.0)
    assert not feed.rib.fib


def test_feed_ignores_end_of_rib_for_other_families_and_non_events():
    feed = make_feed()
    session(feed)
    feed.feed(announce_v4("10.244.2.0/26"), 1.0)
    feed.feed(state("down", "closing connection"), 10.0)
    assert feed.feed(update('{ "eor": { "afi" : "ipv4", "safi" : "flow" } }'), 11.0).ip_version is None
    assert feed.feed("done", 11.0) is None
    assert feed.rib.fib
    feed.feed(EOR_V6, 12.0)
    assert feed.rib.fib  # the stale route is IPv4
    feed.feed(EOR_V4, 12.0)
    assert not feed.rib.fib


def test_feed_drops_our_own_routes_reflected_back():
    """FRR as a reflector sends our routes back with our router id as ORIGINATOR_ID."""
    feed = make_feed()
    session(feed)
    feed.feed(update('{ "update": { "attribute": { "origin": "igp", "local-preference": 100, '
                     '"originator-id": "10.99.0.1", "cluster-list": [ "10.99.0.4" ] }, "announce": { "ipv4 unicast": '
                     '{ "10.99.0.1": [ { "nlri": "10.244.1.0/26" } ] } } } }'), 1.0)
    feed.feed(announce_v4("192.168.5.0/26"), 1.0)  # outside every pool
    assert not feed.rib.fib


# ---------------------------------------------------------------- the decoder against a reference
#
# parse() builds paths without the Path constructor's conversions and checks (it already holds
# the right types) and shares one attributes object, and one next hop object, between paths. It
# must give exactly what the plain route would: ExaBGP's JSON read whole with json.loads, each
# path made by Path(...) from the JSON's own text. `reference` is that plain route, written from
# the JSON shapes in the module docstring.


def reference(text: str) -> UpdateReceived | None:
    import json

    neighbor = json.loads(text)["neighbor"]
    peer = Peer(neighbor["address"]["peer"], neighbor["asn"]["peer"], neighbor["asn"]["local"])
    body = neighbor["message"]["update"]
    attribute = body.get("attribute", {})
    kwargs: dict = {}
    if "origin" in attribute:
        kwargs["origin"] = attribute["origin"]
    if "as-path" in attribute:
        kwargs["as_path"] = [(seg["element"], seg["value"])
                             for _, seg in sorted(attribute["as-path"].items(), key=lambda kv: int(kv[0]))]
    for json_name, name in (("med", "med"), ("local-preference", "local_pref"),
                            ("originator-id", "originator_id"), ("cluster-list", "cluster_list")):
        if json_name in attribute:
            kwargs[name] = attribute[json_name]
    if "community" in attribute:
        kwargs["communities"] = [tuple(c) for c in attribute["community"]]
    if "large-community" in attribute:
        kwargs["large_communities"] = [tuple(c) for c in attribute["large-community"]]

    def nlri(entry):
        if isinstance(entry, str):
            return entry, 0
        info = entry.get("path-information")
        return entry["nlri"], int(ipaddress.ip_address(info)) if info else 0

    announced, withdrawn = [], []
    for family, entries in body.get("withdraw", {}).items():
        if family in ("ipv4 unicast", "ipv6 unicast"):
            withdrawn += [NLRI(net(p), i) for p, i in map(nlri, entries)]
    for family, by_next_hop in body.get("announce", {}).items():
        if family not in ("ipv4 unicast", "ipv6 unicast"):
            continue
        usable = {nh: entries for nh, entries in by_next_hop.items() if nh != "null"}
        if len(by_next_hop) == 1:  # every NLRI as it comes
            for next_hop, entries in usable.items():
                announced += [Path(p, next_hop, peer, i, **kwargs) for p, i in map(nlri, entries)]
            continue
        chosen: dict = {}  # one next hop per NLRI: a global one over a link-local one
        for next_hop, entries in usable.items():
            for p, i in map(nlri, entries):
                key = (net(p), i)
                if key not in chosen or (ip(chosen[key]).is_link_local and not ip(next_hop).is_link_local):
                    chosen[key] = next_hop
        announced += [Path(p, nh, peer, i, **kwargs) for (p, i), nh in chosen.items()]
    if not announced and not withdrawn:
        return None
    return UpdateReceived(peer, tuple(announced), tuple(withdrawn))


def announce_lines(*bodies: str) -> list[str]:
    return [update(f'{{ "update": {b} }}') for b in bodies]


CORPUS = [
    FULL_V4, V6_TWO_NEXT_HOPS, V6_WITHDRAW, ADD_PATH, announce_v4("10.244.2.0/26", "10.244.3.0/26"),
    *announce_lines(
        # api.compact, announce and withdraw
        '{ "attribute": { "origin": "igp", "local-preference": 100 }, "announce": { "ipv4 unicast": '
        '{ "10.99.0.2": [ "10.244.2.0/26", "10.244.3.0/26", "10.244.4.5/32" ] } }, '
        '"withdraw": { "ipv4 unicast": [ "10.244.8.0/26" ] } }',
        # both families in one update, a withdrawal of what is announced beside it
        '{ "attribute": { "origin": "incomplete", "med": 0 }, "announce": { "ipv4 unicast": { "10.99.0.2": '
        '[ { "nlri": "10.244.2.0/26" } ] }, "ipv6 unicast": { "fd00:99::2": [ { "nlri": "fd00:244::40/122" } ] } }, '
        '"withdraw": { "ipv4 unicast": [ { "nlri": "10.244.2.0/26" } ] } }',
        # a family the RIB does not carry beside one it does
        '{ "attribute": { "origin": "igp" }, "announce": { "ipv4 flow": { "no-nexthop": '
        '[ { "destination-ipv4": [ "10.0.0.0/24" ] } ] }, "ipv6 unicast": { "fd00:99::2": '
        '[ "fd00:244::/122" ] } } }',
        # only a link-local next hop; no attributes at all
        '{ "announce": { "ipv6 unicast": { "fe80::2": [ { "nlri": "fd00:244::/122" } ] } } }',
        # the same prefix twice under one next hop, eBGP attributes, an empty AS_PATH segment list
        '{ "attribute": { "origin": "egp", "as-path": { "0": { "element": "as-sequence", "value": [ 65001 ] } }, '
        '"med": 7, "community": [ [ 65001, 1 ], [ 65001, 2 ] ] }, "announce": { "ipv4 unicast": { '
        '"192.0.2.1": [ { "nlri": "10.244.2.0/26" }, { "nlri": "10.244.2.0/26" } ] } } }',
        # ADD-PATH beside plain NLRIs, under two next hops
        '{ "attribute": { "origin": "igp" }, "announce": { "ipv4 unicast": { "10.99.0.5": [ { "nlri": '
        '"10.244.2.0/26", "path-information": "0.0.0.1" } ], "10.99.0.6": [ { "nlri": "10.244.2.0/26", '
        '"path-information": "0.0.0.2" }, { "nlri": "10.244.3.0/26" } ] } } }',
        # a null next hop beside a usable one
        '{ "attribute": { "origin": "igp" }, "announce": { "ipv4 unicast": { "null": [ { "nlri": '
        '"10.244.5.0/26" } ], "10.99.0.2": [ { "nlri": "10.244.6.0/26" } ] } } }',
        # withdrawals only, ADD-PATH and plain
        '{ "withdraw": { "ipv4 unicast": [ { "nlri": "10.244.2.0/26", "path-information": "0.0.0.3" }, '
        '"10.244.3.0/26" ], "ipv6 unicast": [ "fd00:244::/122" ] } }',
    ),
]


@pytest.mark.parametrize("text", CORPUS)
def test_the_decoder_agrees_with_the_plain_json_route(text):
    got, want = parse(text), reference(text)
    assert got == want
    if got is not None:
        # the decoder's prefixes are bgpd/prefixes.py's (ipaddress networks, hashed faster)
        assert [plain(repr(p)) for p in got.announced] == [plain(repr(p)) for p in want.announced]
        assert all(isinstance(p.prefix, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                   for p in got.announced)


def plain(text: str) -> str:
    return text.replace("IPv4Prefix(", "IPv4Network(").replace("IPv6Prefix(", "IPv6Network(")


def test_the_paths_of_an_update_share_their_attributes_and_next_hop():
    nlris = ", ".join(f'{{ "nlri": "10.244.{i}.0/26" }}' for i in range(50))
    text = update(f'{{ "update": {{ "attribute": {{ "origin": "igp", "local-preference": 100, '
                  f'"community": [ [ 64512, 1 ] ] }}, "announce": {{ "ipv4 unicast": {{ "10.99.0.2": [ {nlris} ] }} }} }} }}')
    first, second = parse(text), parse(text.replace("10.244.", "10.245."))
    paths = first.announced + second.announced
    assert len(paths) == 100 and list(paths) == list(reference(text).announced) + list(
        reference(text.replace("10.244.", "10.245.")).announced)
    assert len({id(p.attributes) for p in paths}) == 1  # across UPDATEs as well
    assert len({id(p.next_hop) for p in paths}) == 1


def test_a_different_attribute_is_not_shared():
    a = parse(announce_v4("10.244.2.0/26"))
    b = parse(update('{ "update": { "attribute": { "origin": "igp", "local-preference": 200 }, "announce": '
                     '{ "ipv4 unicast": { "10.99.0.2": [ { "nlri": "10.244.2.0/26" } ] } } } }'))
    assert a.announced[0].local_pref == 100 and b.announced[0].local_pref == 200
    assert a.announced[0] != b.announced[0]


@pytest.mark.parametrize(
    "body",
    [
        '{ "announce": { "ipv4 unicast": { "10.99.0.2": [ "10.244.2.1/26" ] } } }',  # host bits, compact
        '{ "announce": { "ipv4 unicast": { "10.99.0.2": [ { "prefix": "10.244.2.0/26" } ] } } }',
        '{ "announce": { "ipv4 unicast": { "10.99.0.2": [ [ "10.244.2.0/26" ] ] } } }',
        '{ "announce": { "ipv4 unicast": { "10.99.0.2": [ 42 ] } } }',
        '{ "announce": { "ipv4 unicast": { "10.99.0.2": [ "010.244.2.0/26" ] } } }',  # not canonical
        '{ "announce": { "ipv4 unicast": { "10.99.0.2": [ { "nlri": "10.244.2.0/26", '
        '"path-information": "one" } ] } } }',
        '{ "withdraw": { "ipv4 unicast": [ { "prefix": "10.244.2.0/26" } ] } }',
    ],
)
def test_shapes_the_decoder_does_not_know_are_malformed(body):
    with pytest.raises(MalformedMessage):
        parse(update(f'{{ "update": {body} }}'))


def test_a_peer_configured_again_before_its_session_ended_is_to_be_restarted():
    """Its paths were dropped when it went, and on a session that never ended it will not send
    them again: the agent has to restart that session (bgpd/agent.py)."""
    feed = make_feed()
    session(feed)
    feed.feed(announce_v4("10.244.2.0/26"), 1.0)
    assert feed.configured([], 2.0) and not feed.rib.fib
    assert not feed.configured(["10.99.0.2"], 3.0)  # back, and ExaBGP never said `down`
    assert feed.to_restart == {ipaddress.ip_address("10.99.0.2")}
    feed.feed(announce_v4("10.244.3.0/26"), 4.0)  # the session's updates count again
    assert set(feed.rib.fib) == {net("10.244.3.0/26")}

    # A peer whose session did end on its removal starts afresh: nothing to restart.
    other = make_feed()
    session(other)
    assert other.configured([], 2.0)
    other.feed(state("down", "closing connection"), 3.0)
    assert not other.configured(["10.99.0.2"], 4.0) and other.to_restart == set()
