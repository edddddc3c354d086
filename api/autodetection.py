"""What the value of a node address detection method may be (Calico's IP_AUTODETECTION_METHOD:
interface=REGEX,..., skip-interface=REGEX,..., cidr=CIDR,..., can-reach=ADDRESS).

One rule for the two readers: percale-node, which runs the method at start
(node/registration.py), and the operator, which renders it from an Installation and reports what
percale-node would refuse as Degraded (installation/model.py). Written twice, they drifted: an
Installation the operator took stopped percale-node on every node.
"""

from __future__ import annotations

import ipaddress
import re


def method_values(value: str) -> list[str]:
    """A method's comma-separated values, each stripped, empty ones dropped (`eth0,` is eth0)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def interfaces_problem(regexes: str) -> str | None:
    """Why interface= or skip-interface= cannot take `regexes`; None when it can."""
    parts = method_values(regexes)
    if not parts:
        return f"{regexes!r} names no interface: give one or more regular expressions, comma-separated"
    for regex in parts:
        try:
            re.compile(regex)
        except re.error as err:
            return f"{regex!r} is not a regular expression: {err}"
    return None


def cidr_problem(cidr: str, version: int) -> str | None:
    """Why one value of cidr= cannot find this node's IPv`version` address; None when it can."""
    try:
        network = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        return f"invalid CIDR provided for node address autodetection: {cidr!r}"
    if network.version != version:
        return f"{cidr} is an IPv{network.version} CIDR; this method finds the node's IPv{version} address"
    return None


def can_reach_problem(destination: str, version: int) -> str | None:
    """Why can-reach= cannot take `destination`: exactly one address of the family, asked of the
    kernel's routes as a literal (percale resolves no host names, where Calico does)."""
    parts = method_values(destination)
    if len(parts) != 1:
        return f"{destination!r} is {len(parts)} destinations; can-reach takes exactly one address"
    try:
        address = ipaddress.ip_address(parts[0])
    except ValueError:
        return f"{parts[0]!r} is not an IP address (percale-node does not resolve host names)"
    if address.version != version:
        return f"{address} is an IPv{address.version} address; this method finds the node's IPv{version} address"
    return None
