"""CNI requests in, results and errors out (CNI spec 1.1, conventions B1).

Pure: no I/O. Everything a request carries is checked here before any of it is used, and every
refusal is a CNIError whose code tells the runtime what to do (cni-plugin/PROTOCOL.md):

    4    the runtime's environment is wrong (CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, CNI_ARGS):
         retrying the same call cannot help
    6, 7 the network configuration cannot be read, or a field of it is wrong: fix the config
    11   try again later: only for an agent or datastore that cannot be reached (node/)
    999  percale failed in a way no input explains: a bug, logged with its traceback by the agent
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from percale.api.fields import IPV6_MIN_MTU, POD_MTU_MAX, POD_MTU_MIN
from percale.api.meta import DNS_SUBDOMAIN_RULE, ObjectMeta, Resource, validation_problems

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# The spec's codes, and percale's own (100 and above).
INCOMPATIBLE_VERSION = 1
INVALID_ENVIRONMENT = 4
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
INTERNAL = 999          # libcni's ErrInternal
NO_ADDRESSES = 100      # the pools are exhausted, or none is usable by this node
CHECK_FAILED = 101      # CHECK found the pod's network not as ADD left it
INTERFACE_EXISTS = 102  # ADD: the container already has an interface of that name
DATAPLANE_FAILED = 103  # ADD: the kernel refused part of the set-up (all of it was undone)
BAD_ANNOTATION = 104    # ADD: a Calico annotation of the pod or its namespace cannot be honoured


# The largest network configuration the shims pass on (they refuse more before asking).
MAX_CONFIG_BYTES = 1 << 20
# One request line may be this long. The configuration travels in it as a JSON string, where a
# character can take six bytes (\u00e9, \u0001), beside the CNI_* variables (the kernel caps each
# at 128 KiB): so a configuration the shim passes on always fits.
MAX_REQUEST_BYTES = 6 * MAX_CONFIG_BYTES + (2 << 20)

# libcni's rules: a container ID and a network name are used in file names, handle IDs and
# datastore keys, so they are restricted to these characters (ValidateContainerID,
# ValidateNetworkName).
_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
# The kernel's rules for an interface name (dev_valid_name): 1-15 bytes, not "." or "..",
# no "/", ":" or white space.
_IFNAME_FORBIDDEN = re.compile(r"[/:\s]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        self.code, self.msg, self.details = code, msg, details
        super().__init__(msg)

    def to_json(self, cni_version: str) -> str:
        doc = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return json.dumps(doc)


# The only IPAM percale's main plugin knows: it allocates in the agent and runs no IPAM plugin.
PERCALE_IPAM = "percale-ipam"


@dataclass(frozen=True)
class IPAMSettings:
    type: str | None = None  # ipam.type; None when the config has none
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


def parse_netconf(text: Any) -> NetConf:
    if not isinstance(text, str):
        raise CNIError(DECODING_FAILURE, "the network configuration must be JSON text")
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise CNIError(DECODING_FAILURE, "the network configuration on stdin is not JSON", str(err)) from None
    except RecursionError:
        # The shims refuse deeper nesting themselves; the agent's stack is deeper than theirs.
        raise CNIError(DECODING_FAILURE, "the network configuration on stdin nests too deeply "
                                         "to read") from None
    if not isinstance(raw, dict):
        raise CNIError(DECODING_FAILURE, "the network configuration on stdin is not a JSON object")
    version = raw.get("cniVersion")
    if version is None or version == "":
        raise CNIError(INVALID_CONFIG, "cniVersion is missing from the network configuration")
    if not isinstance(version, str):
        raise CNIError(INVALID_CONFIG, f"cniVersion must be a string such as \"1.0.0\", "
                                       f"not {json.dumps(version)[:80]}")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CNIError(INVALID_CONFIG, "name is missing from the network configuration")
    if not _ID.fullmatch(name):
        raise CNIError(INVALID_CONFIG, f"name {name!r} may hold only letters, digits, '_', '.' and '-'"
                       " and must start with a letter or digit")
    kind = raw.get("type")
    if not isinstance(kind, str) or not kind:
        raise CNIError(INVALID_CONFIG, f"type must be the plugin's name as a string, not {kind!r}")
    mtu = raw.get("mtu", 0)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not (mtu == 0 or POD_MTU_MIN <= mtu <= POD_MTU_MAX):
        raise CNIError(INVALID_CONFIG, f"mtu must be 0 (detect) or {POD_MTU_MIN}-{POD_MTU_MAX}, "
                                       f"not {json.dumps(mtu)[:80]}")
    ipam = raw.get("ipam")
    ipam = {} if ipam is None else ipam  # [] or "" is no object: refused, not read as absent
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "ipam must be an object")
    ipam_type = ipam.get("type")
    if ipam_type is not None and (not isinstance(ipam_type, str) or not ipam_type):
        raise CNIError(INVALID_CONFIG,
                       f"ipam.type must be an IPAM plugin's name, not {json.dumps(ipam_type)[:80]}")
    settings = IPAMSettings(
        type=ipam_type,
        assign_ipv4=_flag(ipam.get("assign_ipv4", True), "ipam.assign_ipv4"),
        assign_ipv6=_flag(ipam.get("assign_ipv6", False), "ipam.assign_ipv6"),
        ipv4_pools=_strings(ipam.get("ipv4_pools"), "ipam.ipv4_pools"),
        ipv6_pools=_strings(ipam.get("ipv6_pools"), "ipam.ipv6_pools"),
    )
    if not settings.assign_ipv4 and not settings.assign_ipv6:
        raise CNIError(INVALID_CONFIG, "ipam.assign_ipv4 and ipam.assign_ipv6 are both false")
    nodename = raw.get("nodename")
    if nodename is not None and (not isinstance(nodename, str) or not nodename
                                 or _CONTROL.search(nodename) or "/" in nodename):
        raise CNIError(INVALID_CONFIG, f"nodename must be a node's name, not {nodename!r}")
    prev = raw.get("prevResult")
    if prev is not None:
        _check_prev_result(prev)
    dns = raw.get("dns")
    if dns is not None:
        _check_dns(dns, "dns")
    attachments = raw.get("cni.dev/valid-attachments")
    if attachments is not None:
        _check_attachments(attachments)
    return NetConf(
        name=name, cni_version=version, mtu=mtu, nodename=nodename,
        ipam=settings, prev_result=prev, dns=dns, valid_attachments=attachments, raw=raw,
    )


def ipv6_mtu_problem(mtu: str) -> str:
    """Why a pod that gets an IPv6 address cannot have `mtu` (below IPV6_MIN_MTU): said before
    anything is taken, where the kernel would refuse the address half-way through the ADD."""
    return (f"{mtu} is below {IPV6_MIN_MTU}, the smallest link MTU IPv6 allows (RFC 8200), and"
            " ipam.assign_ipv6 is true: the pod's IPv6 address could not be set")


def _objects(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CNIError(INVALID_CONFIG, f"{where} must be a list of objects")
    return value


def _check_prev_result(prev: Any) -> None:
    """The parts of a prevResult percale reads (ADD passes them on, CHECK compares the
    addresses): checked before anything is taken, so a malformed one cannot fail an ADD after
    the pod was wired."""
    if not isinstance(prev, dict):
        raise CNIError(INVALID_CONFIG, "prevResult must be an object")
    for part in ("interfaces", "routes"):
        if prev.get(part) is not None:
            _objects(prev[part], f"prevResult.{part}")
    if prev.get("ips") is not None:
        for i, ip in enumerate(_objects(prev["ips"], "prevResult.ips")):
            address = ip.get("address")
            try:
                ipaddress.ip_interface(address if isinstance(address, str) else None)
            except ValueError:
                raise CNIError(INVALID_CONFIG, f"prevResult.ips[{i}].address must be an address "
                                               f"with its prefix, such as 10.0.0.2/24, not "
                                               f"{json.dumps(address)[:80]}") from None
    if prev.get("dns") is not None:
        _check_dns(prev["dns"], "prevResult.dns")


def _check_dns(dns: Any, where: str) -> None:
    """The CNI spec's DNS: nameservers, search and options lists of strings, domain a string.
    Passed into the result as given, where a runtime that cannot read it fails the pod after it
    was wired."""
    if not isinstance(dns, dict):
        raise CNIError(INVALID_CONFIG, f"{where} must be an object")
    for key in ("nameservers", "search", "options"):
        value = dns.get(key)
        if value is not None and (not isinstance(value, list)
                                  or not all(isinstance(v, str) for v in value)):
            raise CNIError(INVALID_CONFIG, f"{where}.{key} must be a list of strings")
    if dns.get("domain") is not None and not isinstance(dns["domain"], str):
        raise CNIError(INVALID_CONFIG, f"{where}.domain must be a string")


def _check_attachments(attachments: Any) -> None:
    """GC's list of attachments still in use. An entry without its containerID would keep no
    one's addresses: GC would then release those of running pods."""
    for i, attachment in enumerate(_objects(attachments, "cni.dev/valid-attachments")):
        for key in ("containerID", "ifname"):
            if not isinstance(attachment.get(key), str) or not attachment[key]:
                raise CNIError(INVALID_CONFIG, f"cni.dev/valid-attachments[{i}].{key} must be "
                                               "set, as a string")


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CNIError(INVALID_CONFIG, f"{where} must be a list of pool names or CIDRs")
    return list(value)


def check_container_id(container_id: Any) -> str:
    if not isinstance(container_id, str) or not container_id:
        raise CNIError(INVALID_ENVIRONMENT, "CNI_CONTAINERID is not set")
    if not _ID.fullmatch(container_id):
        raise CNIError(INVALID_ENVIRONMENT,
                       f"CNI_CONTAINERID {container_id!r} may hold only letters, digits, '_', '.'"
                       " and '-', and must start with a letter or digit")
    return container_id


def check_interface_name(ifname: Any) -> str:
    if not isinstance(ifname, str) or not ifname:
        raise CNIError(INVALID_ENVIRONMENT, "CNI_IFNAME is not set")
    try:
        encoded = ifname.encode()
    except UnicodeEncodeError:  # bytes of the environment that are not UTF-8
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not UTF-8 text") from None
    if ifname in ("all", "default"):
        # Names of the kernel's per-family settings (net.ipv4.conf.all): it refuses them.
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is reserved by the kernel")
    if len(encoded) > 15:
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is longer than the kernel's 15 bytes")
    if ifname in (".", "..") or _IFNAME_FORBIDDEN.search(ifname) or _CONTROL.search(ifname):
        raise CNIError(INVALID_ENVIRONMENT,
                       f"CNI_IFNAME {ifname!r} is not an interface name (no '/', ':', spaces"
                       " or control characters, not '.' or '..')")
    return ifname


def check_ipam_type(conf: NetConf) -> None:
    """percale's main plugin allocates through the agent and delegates to no IPAM plugin, so a
    configuration that names another (host-local, calico-ipam) would get percale's addresses
    while its author expects that plugin's. Calico's plugin runs whatever ipam.type names, and
    fails without one; percale refuses both alike, before anything is taken."""
    kind = conf.ipam.type
    if kind is None:
        raise CNIError(INVALID_CONFIG, f"ipam.type is missing: percale's plugin allocates with "
                                       f"{PERCALE_IPAM}; set \"ipam\": {{\"type\": \"{PERCALE_IPAM}\"}}")
    if kind != PERCALE_IPAM:
        raise CNIError(INVALID_CONFIG, f"ipam.type: {kind[:80]!r} is not supported: percale's plugin "
                                       f"allocates with {PERCALE_IPAM} and runs no other IPAM plugin")


def parse_cni_args(text: Any, *, kubernetes_names: bool = True) -> dict[str, str]:
    """CNI_ARGS: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;..." The pod's namespace and name
    become datastore keys, IPAM attributes and its WorkloadEndpoint's name and namespace, so they
    must be what Kubernetes allows: a namespace is a DNS label, a pod name a DNS subdomain. Left
    to the endpoint's own validation they were refused only after the address was taken and the
    veth made (999, every step undone). An empty value counts as absent.

    `kubernetes_names=False` (DEL: it must succeed for a pod ADD refused, which left nothing)
    refuses only what would put a key in the wrong place: '/', control characters, length."""
    if not isinstance(text, str):
        raise CNIError(INVALID_ENVIRONMENT, "CNI_ARGS must be text")
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes of the environment that are not UTF-8
        raise CNIError(INVALID_ENVIRONMENT, "CNI_ARGS is not UTF-8 text") from None
    out = {}
    for part in filter(None, text.split(";")):
        key, sep, value = part.partition("=")
        if not sep:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS part {part!r} is not KEY=VALUE")
        out[key] = value
    for key, limit in (("K8S_POD_NAMESPACE", 63), ("K8S_POD_NAME", 253)):
        value = out.get(key)
        if not value:
            continue
        if kubernetes_names and len(value) <= limit:
            problem = _kubernetes_name_problem(key, value)
        elif len(value) > limit or "/" in value or _CONTROL.search(value):
            problem = (f"{value[:80]!r} is not a Kubernetes name (at most {limit} characters, no '/'"
                       " or control characters)")
        else:
            problem = None
        if problem:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS {key}: {problem}")
    return out


def _kubernetes_name_problem(key: str, value: str) -> str | None:
    if key == "K8S_POD_NAME":
        return None if Resource.name_pattern.fullmatch(value) else \
            f"{value!r} is not a valid pod name: {DNS_SUBDOMAIN_RULE}"
    try:  # the namespace rule is ObjectMeta's, which every stored endpoint passes
        ObjectMeta(name="pod", namespace=value)
    except ValidationError as err:
        return validation_problems(err)[0].reason
    return None


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


def addresses_on(prev: dict[str, Any],
                 ifname: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """The addresses a result puts on the container's interface `ifname`: the `ips` whose
    `interface` index names an entry of `interfaces` with that name and a sandbox. Those a
    plugin earlier in the chain made are on interfaces of its own, or on none."""
    interfaces = prev.get("interfaces") or []
    found = []
    for ip in prev.get("ips") or []:
        index = ip.get("interface")
        if type(index) is not int or not 0 <= index < len(interfaces):
            continue  # on no interface (bool is no index either)
        interface = interfaces[index]
        if interface.get("name") == ifname and interface.get("sandbox"):
            found.append(ipaddress.ip_interface(ip["address"]))
    return found
