"""Learned prefixes as the RIB holds them: ipaddress networks, read from ExaBGP's text without
ipaddress's string parser, and hashed without its two `int()` calls (pure).

Why. Between ExaBGP's line and the kernel a learned prefix is hashed about six times (the
RIB's destinations, the FIB's desired state and its picture of the kernel) and parsed once. On a
100k-route load those were the largest pieces of percale-node's own work, which is the part of
the load that cannot run beside ExaBGP (`bench/bgp.py`): `ipaddress.ip_network` takes ~1.8 µs
for "10.1.2.0/24", mostly parsing octets in Python, and `_BaseNetwork.__hash__` ~0.2 µs.

`parse_prefix` builds the same IPv4 object from the four octets, each looked up in a table of
the 256 canonical spellings already shifted into place, and the cached netmask: ~0.5 µs.
`IPv4Prefix` and `IPv6Prefix` are the ipaddress classes with a hash that reads the two integers
directly (~0.07 µs). They are equal to, and hash as, the plain networks, so a dict keyed by one
finds the other, and every caller sees an ordinary `IPv4Network` / `IPv6Network`.

Anything the fast path does not take as it stands (a scope id, host bits set, a malformed
length) goes to `ipaddress.ip_network`, so the answers and the errors are ipaddress's own.
`tests/unit/test_prefixes.py` checks the two against each other.
"""

from __future__ import annotations

import ipaddress

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


class IPv4Prefix(ipaddress.IPv4Network):
    __slots__ = ()

    def __hash__(self) -> int:
        # ipaddress's own value, hash(int(network_address) ^ int(netmask)), read without the two
        # int() calls; below 2**32 an int is its own hash
        return self.network_address._ip ^ self.netmask._ip


class IPv6Prefix(ipaddress.IPv6Network):
    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self.network_address._ip ^ self.netmask._ip)


# Each octet's canonical spelling -> its value already in its place, so an address is four
# lookups OR-ed together; each length's -> (length, the netmask object, the host bits).
_OCTET_1, _OCTET_2, _OCTET_3, _OCTET_4 = ({str(n): n << shift for n in range(256)}
                                          for shift in (24, 16, 8, 0))
_V4_LENGTHS = {
    str(n): (n, netmask, ~netmask._ip & 0xFFFF_FFFF)
    for n, (netmask, _) in ((n, IPv4Prefix._make_netmask(n)) for n in range(33))
}
_new = object.__new__


def parse_prefix(text: str) -> Prefix:
    """A network from "address/length", as `ipaddress.ip_network(text)` (strict) reads it:
    equal to it, hashing as it does, and raising its ValueError for what it refuses."""
    address, slash, length_text = text.partition("/")
    if ":" in address:
        try:
            return IPv6Prefix(text)  # ipaddress's parser: IPv6 tables are the small ones
        except ValueError:
            return ipaddress.ip_network(text)  # its error, worded as ip_network words it
    try:
        # only the canonical spelling is in the tables ("01", "+1", " 1", "256" are not)
        a, b, c, d = address.split(".")
        value = _OCTET_1[a] | _OCTET_2[b] | _OCTET_3[c] | _OCTET_4[d]
        length, netmask, host_bits = _V4_LENGTHS[length_text]
    except (KeyError, ValueError):  # ValueError: not four parts
        return ipaddress.ip_network(text)
    if value & host_bits:
        return ipaddress.ip_network(text)  # host bits set: ipaddress says so
    network_address = _new(ipaddress.IPv4Address)
    network_address._ip = value
    prefix = _new(IPv4Prefix)
    prefix.network_address = network_address
    prefix.netmask = netmask
    prefix._prefixlen = length
    return prefix


def inside(prefix: Prefix, network: Prefix) -> bool:
    """Whether `prefix` lies within `network` (or is it), with integers: ipaddress's subnet_of
    caches two addresses on every prefix it is asked about, which a RIB's worth of prefixes
    would keep for good."""
    return (prefix.version == network.version and prefix.prefixlen >= network.prefixlen
            and int(prefix.network_address) & int(network.netmask) == int(network.network_address))
