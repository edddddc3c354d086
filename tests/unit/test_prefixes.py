"""bgpd/prefixes.py: `parse_prefix` is `ipaddress.ip_network` (strict), only faster, and the
prefixes it makes hash and compare as ipaddress's own, so the RIB and the FIB find one by the
other. Checked on generated networks, on text near the canonical form, and on arbitrary text."""

from __future__ import annotations

import ipaddress
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from percale.bgpd.prefixes import IPv4Prefix, IPv6Prefix, parse_prefix

pytestmark = pytest.mark.unit


def same_answer(text: str):
    """What ip_network and parse_prefix make of `text`: equal values, or both ValueError with
    the same words."""
    try:
        expected = ipaddress.ip_network(text)
    except ValueError as err:
        with pytest.raises(ValueError) as raised:
            parse_prefix(text)
        assert str(raised.value) == str(err)
        return None
    got = parse_prefix(text)
    assert got == expected and expected == got
    assert hash(got) == hash(expected)
    assert str(got) == str(expected)
    assert got.version == expected.version and got.prefixlen == expected.prefixlen
    assert got.network_address == expected.network_address and got.netmask == expected.netmask
    assert {expected: 1}[got] == 1 and {got: 1}[expected] == 1
    return got


v4_networks = st.builds(lambda value, length: ipaddress.IPv4Network((value, length), strict=False),
                        st.integers(0, 2**32 - 1), st.integers(0, 32))
v6_networks = st.builds(lambda value, length: ipaddress.IPv6Network((value, length), strict=False),
                        st.integers(0, 2**128 - 1), st.integers(0, 128))


@settings(max_examples=500)
@given(st.one_of(v4_networks, v6_networks))
def test_every_network_reads_back_as_itself_with_the_faster_hash(network):
    got = same_answer(str(network))
    assert type(got) is (IPv4Prefix if network.version == 4 else IPv6Prefix)
    # the ipaddress behaviour beyond the key: derived values and containment
    assert got.broadcast_address == network.broadcast_address
    assert got.subnet_of(network) and network.subnet_of(got)
    assert pickle.loads(pickle.dumps(got)) == network


def near_canonical():
    octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["01", "+1", " 1", "1_0", "٣", "-1", ""]))
    address = st.lists(octet, min_size=3, max_size=5).map(".".join)
    length = st.one_of(st.integers(0, 40).map(str),
                       st.sampled_from(["024", "+8", " 8", "8 ", "٣", "", "255.255.255.0"]))
    return st.builds(lambda a, slash, n: a + slash + n, address, st.sampled_from(["/", "", "//"]),
                     length)


@settings(max_examples=1000)
@given(near_canonical())
def test_near_misses_get_ipaddress_answers_and_errors(text):
    same_answer(text)


@settings(max_examples=300)
@given(st.text(alphabet="0123456789abcdef.:/%x ", max_size=45))
def test_arbitrary_text_gets_ipaddress_answers_and_errors(text):
    same_answer(text)


# A network's text with one part misspelt: each must get ipaddress's own answer (an error for
# all but "024", which ipaddress reads as 24).
MISSPELT = ["01", "+1", " 1", "1 ", "1_0", "٣", "-1", "256", "0x1", ""]


@settings(max_examples=300)
@given(v4_networks, st.integers(0, 4), st.sampled_from(MISSPELT + ["024", "+8", "٣", "33"]))
def test_one_misspelt_part_gets_ipaddress_answers_and_errors(network, which, spelling):
    parts = str(network.network_address).split(".") + [str(network.prefixlen)]
    parts[which] = spelling
    same_answer(".".join(parts[:4]) + "/" + parts[4])


@pytest.mark.parametrize("text", ["10.1.2.1/24", "2001:db8::1/32", "10.0.0.0/33", "fe80::/129",
                                  "01.1.2.0/24", "1.2.3.0/024", "10.0.0.0/ 8", "1_0.0.0.0/8"])
def test_host_bits_lengths_and_spellings_get_ipaddress_answers(text):
    same_answer(text)
