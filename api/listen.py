"""HOST:PORT, as percale's listeners take it (percale-node's --health-listen,
percale-controllers' --metrics-listen): an IPv4 address, a host name or nothing (loopback),
or an IPv6 address in brackets, then a port from 1 to 65535."""

from __future__ import annotations

import ipaddress

from percale.api.meta import Resource

LOOPBACK = "127.0.0.1"


def listen_address(listen: str) -> tuple[str, int]:
    """The host and port `listen` names; ValueError saying what is wrong."""
    host, colon, port = listen.rpartition(":")
    if not colon:
        raise ValueError("not HOST:PORT")
    # Port 0 would be a port the kernel picks, which no probe or scraper could know.
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address in brackets") from None
    if ":" in host:
        raise ValueError(f"an IPv6 host goes in brackets, as [::1]:{port}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        # A host name has the syntax of an object name: an RFC 1123 DNS subdomain.
        if host and not Resource.is_valid_name(host.lower()):
            raise ValueError(f"host {host!r} is neither an IP address nor a host name") from None
    return host or LOOPBACK, int(port)
