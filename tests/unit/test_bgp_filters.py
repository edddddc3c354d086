"""BGPFilter rules judged as Calico's confd renders them for BIRD (bgpd/filters.py): the match
operators, prefix lengths, source, peer type, communities and AS path prefix; filters in order;
and what they make of the node's own announcements per session."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from percale.api import parse
from percale.bgpd.filters import export_tables, import_verdicts, verdict
from percale.bgpd.peering import GLOBAL, MESH, Session
from percale.bgpd.rib import Path, Peer

pytestmark = pytest.mark.unit

TOR = Peer("10.0.0.254", 65000, 64512, "10.0.0.254")


def bgp_filter(name: str = "f", **spec: Any):
    return parse({"apiVersion": "percale.io/v1", "kind": "BGPFilter", "metadata": {"name": name},
                  "spec": spec})


def net(text: str):
    return ipaddress.ip_network(text)


def rule(action: str = "Reject", **fields: Any) -> dict:
    return {"action": action, **fields}


@pytest.mark.parametrize(("operator", "prefix", "matches"), [
    ("Equal", "10.244.0.0/16", True), ("Equal", "10.244.1.0/26", False),
    ("NotEqual", "10.244.0.0/16", False), ("NotEqual", "10.244.1.0/26", True),
    ("In", "10.244.1.0/26", True), ("In", "10.244.0.0/16", True), ("In", "10.0.0.0/8", False),
    ("NotIn", "10.245.0.0/26", True), ("NotIn", "10.244.1.0/26", False),
])
def test_the_match_operators_read_as_birds(operator, prefix, matches):
    found = [bgp_filter(exportV4=[rule(cidr="10.244.0.0/16", matchOperator=operator)])]
    assert (verdict(found, "export", net(prefix), ibgp=False) == "Reject") is matches


def test_a_prefix_length_range_narrows_in_and_not_in():
    found = [bgp_filter(importV4=[rule(cidr="10.244.0.0/16", matchOperator="In",
                                       prefixLength={"min": 26, "max": 28})])]
    assert verdict(found, "import", net("10.244.1.0/26"), ibgp=True) == "Reject"
    assert verdict(found, "import", net("10.244.1.0/24"), ibgp=True) is None
    assert verdict(found, "import", net("10.244.1.1/32"), ibgp=True) is None
    only_max = [bgp_filter(importV4=[rule(cidr="10.244.0.0/16", matchOperator="NotIn",
                                          prefixLength={"max": 24})])]
    assert verdict(only_max, "import", net("10.244.1.0/26"), ibgp=True) == "Reject"
    assert verdict(only_max, "import", net("10.244.1.0/24"), ibgp=True) is None


def test_the_first_matching_rule_of_the_first_filter_that_has_one_decides():
    first = bgp_filter("a", exportV4=[rule("Accept", cidr="10.244.1.0/26", matchOperator="Equal")])
    second = bgp_filter("b", exportV4=[rule("Reject", cidr="10.244.0.0/16", matchOperator="In"),
                                       rule("Accept")])
    assert verdict([first, second], "export", net("10.244.1.0/26"), ibgp=False) == "Accept"
    assert verdict([first, second], "export", net("10.244.2.0/26"), ibgp=False) == "Reject"
    assert verdict([first, second], "export", net("10.245.2.0/26"), ibgp=False) == "Accept"
    assert verdict([first], "export", net("10.245.2.0/26"), ibgp=False) is None
    # The other direction and family have no rules.
    assert verdict([second], "import", net("10.244.2.0/26"), ibgp=False) is None
    assert verdict([second], "export", net("fd00::/64"), ibgp=False) is None


def test_source_peer_type_communities_and_as_path_prefix():
    learned = Path("10.244.1.0/26", "10.0.0.254", TOR, as_path=(65000, 65100),
                   communities=[(65000, 1)], large_communities=[(65000, 1, 2)])
    remote = [bgp_filter(exportV4=[rule(source="RemotePeers")])]
    assert verdict(remote, "export", learned.prefix, ibgp=False, path=learned) == "Reject"
    assert verdict(remote, "export", learned.prefix, ibgp=False) is None  # our own route
    ebgp_only = [bgp_filter(exportV4=[rule(peerType="eBGP")])]
    assert verdict(ebgp_only, "export", learned.prefix, ibgp=False) == "Reject"
    assert verdict(ebgp_only, "export", learned.prefix, ibgp=True) is None
    for value, matches in (("65000:1", True), ("65000:2", False), ("65000:1:2", True)):
        by_community = [bgp_filter(importV4=[rule(communities={"values": [value]})])]
        assert (verdict(by_community, "import", learned.prefix, ibgp=False, path=learned)
                == "Reject") is matches
    for asns, matches in (([65000], True), ([65000, 65100], True), ([65100], False),
                          ([65000, 65100, 1], False)):
        by_path = [bgp_filter(importV4=[rule(asPathPrefix=asns)])]
        assert (verdict(by_path, "import", learned.prefix, ibgp=False, path=learned)
                == "Reject") is matches


def session(address: str, peer_as: int, filters: tuple[str, ...] = (), family: int = 4) -> Session:
    return Session(name=f"Global_{address}", kind=MESH if peer_as == 64512 else GLOBAL,
                   family=family, peer_address=address, peer_port=179, peer_as=peer_as,
                   local_as=64512, local_address="10.0.0.1", filters=filters)


def test_own_prefixes_per_session_only_once_a_session_filters_its_exports():
    want = {"10.244.1.0/26": "next-hop self community [ 1:1 ]", "10.96.0.0/12": "next-hop self",
            "fd00:244::/122": "next-hop self"}
    withheld = ["10.245.0.0/26"]
    mesh, tor = session("10.0.0.2", 64512), session("10.0.0.254", 65000, ("tor", "gone"))
    filters = {"tor": bgp_filter("tor", importV4=[rule(cidr="10.96.0.0/12", matchOperator="Equal")])}
    assert export_tables([mesh, tor], filters, want, withheld) is None  # import rules only
    filters["tor"] = bgp_filter("tor", exportV4=[
        rule("Reject", cidr="10.96.0.0/12", matchOperator="Equal"),
        rule("Accept", cidr="10.245.0.0/16", matchOperator="In"),
        rule("Accept", cidr="10.244.1.0/26", matchOperator="Equal")])
    tables = export_tables([mesh, tor], filters, want, withheld)
    assert tables == {
        # unfiltered: what every peer gets, in its family
        "10.0.0.2": {"10.244.1.0/26": "next-hop self community [ 1:1 ]",
                     "10.96.0.0/12": "next-hop self"},
        # Reject keeps the service CIDR home; Accept sends the withheld block, and skips the
        # communities Calico's own export filter would have added
        "10.0.0.254": {"10.244.1.0/26": "next-hop self", "10.245.0.0/26": "next-hop self"},
    }


def test_import_verdicts_only_for_sessions_with_import_rules_of_their_family():
    filters = {"f": bgp_filter("f", importV4=[rule(cidr="10.244.9.0/26", matchOperator="Equal")]),
               "six": bgp_filter("six", importV6=[rule()])}
    sessions = [session("10.0.0.254", 65000, ("f",)), session("10.0.0.2", 64512),
                session("10.0.0.3", 64512, ("six",))]
    verdicts = import_verdicts(sessions, filters)
    assert set(verdicts) == {"10.0.0.254"}
    judge = verdicts["10.0.0.254"]
    assert judge(Path("10.244.9.0/26", "10.0.0.254", TOR)) == "Reject"
    assert judge(Path("10.244.8.0/26", "10.0.0.254", TOR)) is None


def test_on_export_to_an_ebgp_peer_the_as_path_already_starts_with_our_as():
    learned = Path("10.244.1.0/26", "10.0.0.254", TOR, as_path=(65100,))
    ours = [bgp_filter(exportV4=[rule(asPathPrefix=[64512])])]
    theirs = [bgp_filter(exportV4=[rule(asPathPrefix=[65100])])]
    both = [bgp_filter(exportV4=[rule(asPathPrefix=[64512, 65100])])]
    kwargs = {"ibgp": False, "path": learned, "local_as": 64512}
    assert verdict(ours, "export", learned.prefix, **kwargs) == "Reject"
    assert verdict(both, "export", learned.prefix, **kwargs) == "Reject"
    assert verdict(theirs, "export", learned.prefix, **kwargs) is None
    # An own route: [our AS] to an eBGP peer, an empty path to an iBGP one.
    assert verdict(ours, "export", learned.prefix, ibgp=False, local_as=64512) == "Reject"
    assert verdict(ours, "export", learned.prefix, ibgp=True, local_as=64512) is None
    # Import sees the path as the peer sent it.
    assert verdict([bgp_filter(importV4=[rule(asPathPrefix=[65100])])], "import",
                   learned.prefix, ibgp=False, path=learned, local_as=64512) == "Reject"
