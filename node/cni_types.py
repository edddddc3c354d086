"""CNI network configuration in, results and errors out (CNI spec 1.1, conventions B1).

Pure: no I/O. Errors carry the spec's codes so the shim can hand them to the runtime as they are.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# The spec's codes, and percale's own (100 and above).
INCOMPATIBLE_VERSION = 1
INVALID_ENVIRONMENT = 4
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NO_ADDRESSES = 100      # the pools are exhausted, or none is usable by this node
CHECK_FAILED = 101      # CHECK found the pod's network not as ADD left it
INTERFACE_EXISTS = 102  # ADD: the container already has an interface of that name
DATAPLANE_FAILED = 103  # ADD: the kernel refused part of the set-up (all of it was undone)


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        self.code, self.msg, self.details = code, msg, details
        super().__init__(msg)

    def to_json(self, cni_version: str) -> str:
        doc = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return json.dumps(doc)


@dataclass(frozen=True)
class IPAMSettings:
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    ipv4_pools: list[str] = field(default_factory=list)
    ipv6_pools: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NetConf:
    """The part of the plugin configuration percale reads; the rest passes through untouched."""

    name: str
    cni_version: str
    mtu: int
    nodename: str | None
    ipam: IPAMSettings
    prev_result: dict[str, Any] | None
    dns: dict[str, Any] | None
    valid_attachments: list[dict[str, str]] | None
    raw: dict[str, Any]


def _flag(value: Any, where: str) -> bool:
    # Calico's operator writes "true"/"false" strings; JSON booleans work too.
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise CNIError(INVALID_CONFIG, f"{where} must be true or false, not {value!r}")


def parse_netconf(text: str) -> NetConf:
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise CNIError(DECODING_FAILURE, "the network configuration on stdin is not JSON", str(err)) from None
    if not isinstance(raw, dict):
        raise CNIError(DECODING_FAILURE, "the network configuration on stdin is not a JSON object")
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CNIError(INVALID_CONFIG, "cniVersion is missing from the network configuration")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CNIError(INVALID_CONFIG, "name is missing from the network configuration")
    mtu = raw.get("mtu", 0)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not (mtu == 0 or 576 <= mtu <= 65535):
        raise CNIError(INVALID_CONFIG, f"mtu must be 0 (detect) or 576-65535, not {mtu!r}")
    ipam = raw.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "ipam must be an object")
    settings = IPAMSettings(
        assign_ipv4=_flag(ipam.get("assign_ipv4", True), "ipam.assign_ipv4"),
        assign_ipv6=_flag(ipam.get("assign_ipv6", False), "ipam.assign_ipv6"),
        ipv4_pools=list(ipam.get("ipv4_pools") or []),
        ipv6_pools=list(ipam.get("ipv6_pools") or []),
    )
    if not settings.assign_ipv4 and not settings.assign_ipv6:
        raise CNIError(INVALID_CONFIG, "ipam.assign_ipv4 and ipam.assign_ipv6 are both false")
    return NetConf(
        name=name, cni_version=version, mtu=mtu, nodename=raw.get("nodename"),
        ipam=settings, prev_result=raw.get("prevResult"), dns=raw.get("dns"),
        valid_attachments=raw.get("cni.dev/valid-attachments"), raw=raw,
    )


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;..." """
    out = {}
    for part in filter(None, (text or "").split(";")):
        key, sep, value = part.partition("=")
        if not sep:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS part {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def result(
    cni_version: str, addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    interfaces: list[dict[str, Any]] | None = None, interface_index: int | None = None,
    routes: list[dict[str, Any]] | None = None, dns: dict[str, Any] | None = None,
    gateways: dict[int, str] | None = None,
) -> dict[str, Any]:
    """A CNI ADD result in the shape `cni_version` expects (0.3/0.4 add ips[].version)."""
    ips = []
    for address in addresses:
        entry: dict[str, Any] = {"address": str(address)}
        if interface_index is not None:
            entry["interface"] = interface_index
        if gateways and address.version in gateways:
            entry["gateway"] = gateways[address.version]
        if not cni_version.startswith("1."):
            entry["version"] = str(address.version)
        ips.append(entry)
    doc: dict[str, Any] = {"cniVersion": cni_version}
    if interfaces is not None:
        doc["interfaces"] = interfaces
    doc["ips"] = ips
    doc["routes"] = routes or []
    doc["dns"] = dns or {}
    return doc
