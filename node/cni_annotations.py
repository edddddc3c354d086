"""The Calico annotations a pod's ADD honours on the Kubernetes datastore (calico.md §4.2, step 2).

  * `cni.projectcalico.org/ipv4pools` and `ipv6pools`: a JSON list of IPPool names or CIDRs the
    pod's addresses come from; the pod's annotation first, else its namespace's, else the
    network configuration's `ipv4_pools`/`ipv6_pools`;
  * `cni.projectcalico.org/ipAddrs`: a JSON list of the exact addresses the pod gets (at most
    one per family), from the pools that hold them; the pool annotations then do not apply.

Calico refuses `ipAddrsNoIpam` and `floatingIPs` unless a feature flag of its CNI configuration
allows them; percale has neither feature, and refuses a pod that asks, naming the annotation,
rather than wire it as if it had not asked. On etcd there are no Pods to read: nothing here.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from percale.datastore.contract import PodAnnotations

PREFIX = "cni.projectcalico.org/"
IPV4_POOLS = PREFIX + "ipv4pools"
IPV6_POOLS = PREFIX + "ipv6pools"
IP_ADDRS = PREFIX + "ipAddrs"
# Calico's, behind feature flags percale does not have.
REFUSED = {PREFIX + "ipAddrsNoIpam": "ip_addrs_no_ipam", PREFIX + "floatingIPs": "floating_ips"}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AnnotationError(ValueError):
    """An annotation that cannot be honoured; the message names it and says why."""


@dataclass(frozen=True)
class Requested:
    """What the annotations ask of the pod's ADD; None: nothing (the configuration decides)."""

    ipv4_pools: list[str] | None = None
    ipv6_pools: list[str] | None = None
    addresses: list[Address] | None = None


def requested(annotations: PodAnnotations) -> Requested:
    pod, namespace = annotations.pod, annotations.namespace
    for name, flag in REFUSED.items():
        if name in pod:
            raise AnnotationError(f"pod annotation {name}: percale does not support it (Calico "
                                  f"allows it only with feature_control.{flag})")
    if IP_ADDRS in pod:
        return Requested(addresses=_addresses(pod[IP_ADDRS]))
    pools = {}
    for family, name in ((4, IPV4_POOLS), (6, IPV6_POOLS)):
        if name in pod:
            pools[family] = _strings(pod[name], f"pod annotation {name}")
        elif name in namespace:
            pools[family] = _strings(namespace[name], f"namespace annotation {name}")
    return Requested(ipv4_pools=pools.get(4), ipv6_pools=pools.get(6))


def _strings(text: str, where: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise AnnotationError(f"{where}: {text!r} is not JSON ({err})") from None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AnnotationError(f"{where}: {text!r} is not a JSON list of strings, "
                              "e.g. [\"pool-a\", \"10.65.0.0/16\"]")
    if not value:
        raise AnnotationError(f"{where}: the list is empty; name at least one")
    return value


def _addresses(text: str) -> list[Address]:
    where = f"pod annotation {IP_ADDRS}"
    found: list[Address] = []
    for item in _strings(text, where):
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            raise AnnotationError(f"{where}: {item!r} is not an IP address") from None
        if any(a.version == address.version for a in found):
            # As Calico: one address per family, the pod's one interface holds no more.
            raise AnnotationError(f"{where}: more than one IPv{address.version} address")
        found.append(address)
    return found
