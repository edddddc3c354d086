"""Field types shared by the resource kinds: addresses, CIDRs, AS numbers, durations, selectors.

Each type validates the way Calico's API validation does and normalises to the text form that is
stored, so a resource read back from the datastore prints exactly as it was applied.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from percale.api import selector as _selector

# The pod MTUs percale accepts, wherever one is given (CNI config, percalectl cni install, the
# Installation, percale-node's own setting): every IPv4 host takes 576-byte datagrams (RFC 791);
# below that, pods' packets are cut to pieces or lost. 0 means "detected", where allowed.
POD_MTU_MIN, POD_MTU_MAX = 576, 65535
# RFC 8200 §5: every link that carries IPv6 must take 1280-byte packets. Linux turns IPv6 off on
# a device set below it and refuses the device an IPv6 address.
IPV6_MIN_MTU = 1280

# Link-local ranges are the node's own business (169.254.1.1 is every pod's gateway), so no pool
# may cover them.
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


def _no_zone(value: str) -> None:
    """Python's ipaddress takes an IPv6 scope zone ("fe80::1%eth0"); Go's net.ParseIP, and so
    Calico, and ExaBGP's configuration do not: a zone would break every node's BGP config."""
    if "%" in value:
        raise ValueError(f"{value!r} has a zone (%...): give the address without it")


def _network(value: str) -> str:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/16")
    _no_zone(value)
    try:
        # Parsed once per text (network_of is strict too): every handle IPAM writes carries a
        # block CIDR to validate.
        return str(network_of(value))
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None
    raise ValueError(f"{value!r} has host bits set; the network is {loose}")


def plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address as Go's net.ParseIP reads one, so without an IPv6 zone, and an IPv4-mapped
    IPv6 address (::ffff:10.0.0.1) as the IPv4 address it maps, as Go's To4 and String see it
    (calicoctl looks up 10.0.0.1); ValueError if not an address."""
    _no_zone(text)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _address(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be an IP address string")
    return str(plain_ip(value))


def _ipv4(value: str) -> str:
    text = _address(value)
    if ipaddress.ip_address(text).version != 4:
        raise ValueError(f"{value!r} is not an IPv4 address")
    return text


def _ipv6(value: str) -> str:
    text = _address(value)
    if ipaddress.ip_address(text).version != 6:
        raise ValueError(f"{value!r} is not an IPv6 address")
    return text


def _interface(version: int):
    """An address with the prefix of the subnet it sits in, e.g. 10.0.0.5/24 (Node spec.bgp)."""

    def check(value: str) -> str:
        if not isinstance(value, str):
            raise ValueError("must be an address with a prefix length, such as 10.0.0.5/24")
        _no_zone(value)
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an address with a prefix length") from None
        if isinstance(iface, ipaddress.IPv6Interface) and iface.ip.ipv4_mapped is not None:
            # ::ffff:10.0.0.1/120 would be peered with as IPv6; Calico's To4 reads it as IPv4.
            raise ValueError(f"{value!r} is an IPv4-mapped address: write the IPv4 address "
                             f"{iface.ip.ipv4_mapped} with its own prefix length")
        if iface.version != version:
            raise ValueError(f"{value!r} is not an IPv{version} address")
        return str(iface)

    return check


def _as_number(value: int | str) -> int:
    """AS numbers as Calico's numorstring.ASNumber: a plain number or AS-dot notation ("1.10")."""
    if isinstance(value, bool):
        raise ValueError("must be an AS number, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9]+", text):
            value = int(text)
        elif m := re.fullmatch(r"([0-9]+)\.([0-9]+)", text):
            high, low = int(m[1]), int(m[2])
            if high > 0xFFFF or low > 0xFFFF:
                raise ValueError(f"{value!r} is not a valid AS-dot number")
            value = high << 16 | low
        else:
            raise ValueError(f"{value!r} is not an AS number")
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value!r} is not an AS number between 1 and 4294967295")
    if value == 0:
        # Reserved (RFC 7607): BIRD, GoBGP and FRR refuse an OPEN from AS 0, so every session
        # of the node would fail, where the file was accepted.
        raise ValueError("AS 0 is reserved (RFC 7607) and no BGP peer accepts it")
    return value


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
# Go's time.Duration is int64 nanoseconds: about 2562047h47m; ParseDuration refuses more.
DURATION_MAX_SECONDS = (2**63 - 1) / 1e9
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """Seconds in a Go-style duration such as "120s" or "1m30s" (Kubernetes metav1.Duration)."""
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise ValueError(f"{text!r} is not a duration such as 120s or 2m30s")
        total += float(m[1]) * _DURATION_UNITS[m[2]]
        pos = m.end()
    if not text:
        raise ValueError("a duration cannot be empty")
    if total > DURATION_MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than a duration can be (2562047h47m16s)")
    return total


def _duration(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a duration string such as 120s")
    duration_seconds(value)
    return value


def _selector_text(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a selector string such as all() or rack == 'a'")
    try:
        _selector.parse(value)
    except _selector.SelectorError as err:
        raise ValueError(str(err)) from None
    return value


def whole_number(value: Any) -> Any:
    """Read before pydantic's int, which would take true as 1, "3" as 3 and 2.0 as 2: Calico
    reads these fields into Go integers, which refuse all three."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    if value is not None and not isinstance(value, int):  # None: an optional field left out
        raise ValueError(f"must be a whole number, not {value!r}")
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port between 1 and 65535")
    return value


def _peer_ip(value: str) -> str:
    """`IPv4`, `IPv4:port`, `IPv6` or `[IPv6]:port`, as BGPPeer.peerIP takes them."""
    if not isinstance(value, str):
        raise ValueError("must be an IP address, optionally with a port")
    address, port = split_peer_ip(value)
    if port is None:
        return str(address)
    return f"{address}:{port}" if address.version == 4 else f"[{address}]:{port}"


def split_peer_ip(value: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    """Split a peerIP into address and optional port; raise ValueError when it is neither form."""
    _no_zone(value)
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)", value)
    if m:
        addr, port = m[1], int(m[2])
        if ipaddress.ip_address(addr).version != 6:
            raise ValueError(f"{value!r}: brackets are only for IPv6 addresses")
    elif value.count(":") == 1:
        addr, port_text = value.split(":")
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"{value!r} is not an address with a port")
        port = int(port_text)
    else:
        addr, port = value, None
    try:
        # An IPv4-mapped address is the IPv4 peer it maps, as Calico's To4 reads it: kept as
        # IPv6 it got no session on an IPv4 node, silently.
        ip = plain_ip(addr)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address, IP:port or [IPv6]:port") from None
    if port is not None:
        _port(port)
    return ip, port


def _mac(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", value):
        raise ValueError(f"{value!r} is not a MAC address such as 66:aa:bb:cc:dd:ee")
    # Calico takes any (net.ParseMAC), but the kernel gives neither to an interface: a VXLAN
    # device with one failed on every retry, and the other nodes put it in their FDB.
    if int(value[:2], 16) & 1:
        raise ValueError(f"{value!r} is a multicast MAC address; an interface needs a unicast one")
    if value == "00:00:00:00:00:00":
        raise ValueError(f"{value!r} is the zero MAC address; an interface needs a unicast one")
    return value.lower()


def cidr_or_ip_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network an IP-or-CIDR text means, as Calico's ParseCIDROrIP reads it: an address
    alone is its one-address network (an IPv4-mapped one, the IPv4 address it maps), and the
    host bits of a CIDR are masked. ValueError, saying why, if it is neither."""
    if not isinstance(text, str):
        raise ValueError("must be a CIDR or an IP address")
    _no_zone(text)
    if "/" not in text:
        return ipaddress.ip_network(plain_ip(text))
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is neither a CIDR nor an IP address") from None


def _cidr_or_ip(value: str) -> str:
    cidr_or_ip_network(value)  # kept as written: Calico stores it so, and reads it as above
    return value


def _network_or_address(value: str) -> str:
    # Calico's `net` validator takes an address alone as its one-address network; stored as
    # that network, so whatever reads the field reads a CIDR.
    if isinstance(value, str) and "/" not in value:
        _no_zone(value)
        try:
            return str(cidr_or_ip_network(value))
        except ValueError:
            raise ValueError(f"{value!r} is neither a CIDR nor an IP address") from None
    return _network(value)


def _masked_network(value: str) -> str:
    # What the apiserver still takes in a Kubernetes NetworkPolicy's ipBlock (10.0.0.5/24,
    # with a warning, and kept in objects made before it began to refuse them), and what
    # Calico reads as the network, host bits masked.
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/16")
    return str(cidr_or_ip_network(value))


CIDR = Annotated[str, AfterValidator(_network)]
# A CIDR whose host bits are masked rather than refused (Kubernetes NetworkPolicy ipBlock).
MaskedCIDR = Annotated[str, AfterValidator(_masked_network)]
# A CIDR, or an address alone, stored as its /32 or /128 (BGPConfiguration's service ranges and
# prefixAdvertisements, which Calico validates with `net`).
NetworkOrAddress = Annotated[str, AfterValidator(_network_or_address)]
CIDROrIP = Annotated[str, AfterValidator(_cidr_or_ip)]
IPAddress = Annotated[str, AfterValidator(_address)]
IPv4Address = Annotated[str, AfterValidator(_ipv4)]
IPv6Address = Annotated[str, AfterValidator(_ipv6)]
IPv4Interface = Annotated[str, AfterValidator(_interface(4))]
IPv6Interface = Annotated[str, AfterValidator(_interface(6))]
ASNumber = Annotated[int, BeforeValidator(_as_number)]
Duration = Annotated[str, AfterValidator(_duration)]
Selector = Annotated[str, AfterValidator(_selector_text)]
Port = Annotated[int, BeforeValidator(whole_number), AfterValidator(_port)]
PeerIP = Annotated[str, AfterValidator(_peer_ip)]
MACAddress = Annotated[str, AfterValidator(_mac)]


# RFC 3339 as Kubernetes metav1.Time writes it; Go adds up to nine fractional digits.
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})", re.ASCII)


def _timestamp(value: str) -> str:
    """A point in time such as 2024-05-01T12:00:00Z (IPAMBlock affinityClaimTime, lastUpdated)."""
    m = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not an RFC 3339 time such as 2024-05-01T12:00:00Z")
    try:
        # The whole of it: the offset too (+99:99 matches the pattern, and only the reader of
        # the stored time would have found it out).
        parse_time(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a real date and time") from None
    return value


Timestamp = Annotated[str, AfterValidator(_timestamp)]


def format_time(moment: datetime) -> str:
    """A UTC time as the Timestamp fields store it: 2024-05-01T12:00:00Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """A Timestamp field's value as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@functools.lru_cache(maxsize=65536)
def network_of(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The parsed form of a CIDR (strict: ValueError for host bits set). Parsed once per text:
    IPAM asks for the networks of its pools and blocks on every allocation, and ip_network is
    slow enough to show up there. A text that does not parse is not cached."""
    return ipaddress.ip_network(cidr)
