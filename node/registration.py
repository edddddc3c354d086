"""The node's own Node resource, written at start as calico-node's startup writes it.

`--ip` / `IP` (and `--ip6` / `IP6`) say where this node's BGP address comes from:
  * empty: as calico-node's startup (configureIPsAndSubnets) does, the Node's IPv4 address stays
    if it has one (it may have been written with percalectl), and is found with
    `--ip-autodetection-method` and registered if it has none, or there is no Node yet: an agent
    started with no setting at all registered nothing and said nothing, so it never peered. An
    empty `--ip6` leaves the Node's IPv6 address as it is: calico-node detects one only when
    IP6 asks for it;
  * `autodetect`: find it with `--ip-autodetection-method` (calico.md §2.3: first-found,
    interface=REGEX,..., skip-interface=REGEX,..., cidr=CIDR,..., can-reach=ADDRESS, or
    kubernetes-internal-ip: the InternalIP of this node's Kubernetes Node, as the operator's
    `kubernetes: NodeInternalIP` asks, read from the API once it answers);
  * `none`: no detection; the Node's address of that family stays as it is, written by hand or
    absent (calico-node's IP=none: "Autodetection disabled, keeping existing value");
  * an address with its prefix (10.0.0.5/24): used as given. The prefix matters — CrossSubnet
    compares subnets — so a bare address is refused rather than stored as a /32. So is one no
    peer could reach (unspecified, loopback, multicast, link-local). One that is on none of this
    host's interfaces is only warned about, as calico-node warns: it may be added after the agent
    starts (a lab node gets its fabric address so).

Detection walks the host's links from the last to the first, and matches interface names
anywhere (an unanchored search), as Calico does: see autodetect. While the agent runs, an
autodetected address is detected again and a change written here (node/address_monitor.py).

The Node is created when it does not exist. Another node already using the address is an error,
as in Calico: two nodes with one BGP address would steal each other's sessions. An address found
for an empty `--ip` is the exception: another node having it is a warning, and the node
registers no IPv4 address, as it ran before it detected any (calico-node stops here too).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pydantic import TypeAdapter, ValidationError

from percale.dataplane.host import HostAddress, host_addresses, source_address_towards
from percale.datastore import AlreadyExists, Conflict, Datastore, Key, NotFound
from percale.api import autodetection, parse
from percale.api.fields import IPv4Interface, IPv6Interface
from percale.api.meta import explained

# Interfaces first-found and skip-interface never pick (container, bridge, tunnel and pod
# links): Calico's DEFAULT_INTERFACES_TO_EXCLUDE (autodetection_linux.go, calico.md §2.3).
FIRST_FOUND_EXCLUDED = (
    r"^docker.*", r"^cbr.*", r"^dummy.*", r"^podman.*", r"^virbr.*", r"^lxcbr.*", r"^veth.*",
    r"^lo", r"^br-.*", r"^cali.*", r"^tunl.*", r"^flannel.*", r"^kube-ipvs.*", r"^cni.*",
    r"^vxlan\.calico.*", r"^vxlan-v6\.calico.*", r"^wireguard\.cali.*", r"^wg-v6\.cali.*",
    r"^nodelocaldns.*",
    # percale's own pod and tunnel links.
    r"^pcl.*", r"^vxlan\.percale.*", r"^vxlan6\.percale.*",
)


KUBERNETES_INTERNAL_IP = "kubernetes-internal-ip"

log = logging.getLogger(__name__)


class RegistrationError(ValueError):
    """The node's address settings cannot be honoured; the message names the setting."""


@dataclass(frozen=True)
class FromKubernetesNode:
    """What resolve() answers for `autodetect` with kubernetes-internal-ip: the address is known
    only once the Kubernetes API answers (from_kubernetes_node), and the agent waits for that as
    it waits for its datastore."""
    version: int


@dataclass(frozen=True)
class UnlessRegistered:
    """What resolve() answers for an empty --ip: the Node's IPv4 address if it has one, else one
    found with `method`. Which of the two is known once the datastore answers (register).
    `found`: the address kubernetes-internal-ip found, filled in by kubernetes_addresses."""
    version: int
    method: str
    found: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None


def _method_setting(version: int) -> str:
    return "--ip-autodetection-method" if version == 4 else "--ip6-autodetection-method"


def autodetect(version: int, method: str, addresses: list[HostAddress],
               can_reach=source_address_towards,
               internal_ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
               *, say: bool = True) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """This node's address of one IP version, picked from `addresses` (host_addresses: in link
    order) by a Calico detection method (for kubernetes-internal-ip, the host's address that is
    one of the Kubernetes Node's `internal_ips`, with that interface's prefix), and logged with
    its interface and the method (unless not `say`: the address monitor detects every minute).
    Raises RegistrationError naming the method when nothing matches."""
    setting = _method_setting(version)
    name, value, values = _parsed_method(version, method)
    candidates = [a for a in _from_last_link(addresses) if a.address.version == version]
    # Calico's enumerating methods take global unicast addresses only: a 169.254 address given
    # global scope (a cloud's metadata link) is no node address (unusable_problem).
    unicast = [a for a in candidates if unusable_problem(a.address.ip) is None]
    if name == "first-found":
        picked = [a for a in unicast if not _named(a.interface, FIRST_FOUND_EXCLUDED)]
    elif name == "interface":
        picked = [a for a in unicast if _named(a.interface, values)]
    elif name == "skip-interface":
        # The user's patterns come on top of first-found's (autodetection_methods.go): without
        # them, skipping eth0 picked docker0's 172.17.0.1 or a pod link's address.
        picked = [a for a in unicast
                  if not _named(a.interface, (*FIRST_FOUND_EXCLUDED, *values))]
    elif name == "cidr":
        networks = [ipaddress.ip_network(v, strict=False) for v in values]
        picked = [a for a in unicast if any(a.address.ip in n for n in networks)]
    elif name == "can-reach":
        source = can_reach(values[0])
        picked = [a for a in candidates if source and str(a.address.ip) == source]
    else:
        wanted = [ip for ip in internal_ips if ip.version == version]
        if not wanted:
            raise RegistrationError(
                f"{setting}: {KUBERNETES_INTERNAL_IP}: the Kubernetes Node has no IPv{version} InternalIP")
        picked = [a for a in candidates if a.address.ip in wanted]
        if not picked:
            raise RegistrationError(
                f"{setting}: {KUBERNETES_INTERNAL_IP}: the Kubernetes Node's InternalIP "
                f"{', '.join(map(str, wanted))} is on none of this host's interfaces")
    if not picked:
        raise RegistrationError(
            f"{setting}: no IPv{version} address found with {method or 'first-found'}")
    chosen = picked[0]
    log.log(logging.INFO if say else logging.DEBUG,
            "Using autodetected IPv%d address %s on interface %s (%s %s)", version,
            chosen.address, chosen.interface, setting, method or "first-found")
    return chosen.address


def _parsed_method(version: int, method: str | None) -> tuple[str, str, list[str]]:
    """A detection method's name, its value and the value's parts; RegistrationError naming the
    setting when it is no method, or one whose value it cannot use."""
    setting = _method_setting(version)
    name, _, value = (method or "first-found").partition("=")
    values = autodetection.method_values(value)
    # The operator refuses an Installation whose method these rules refuse (installation/model.py).
    if name in ("interface", "skip-interface"):
        problem = autodetection.interfaces_problem(value)
    elif name == "cidr" and values:
        problem = next(filter(None, (autodetection.cidr_problem(v, version) for v in values)),
                       None)
    elif name == "can-reach":
        problem = autodetection.can_reach_problem(value, version)
    elif (name, value) in (("first-found", ""), (KUBERNETES_INTERNAL_IP, "")):
        problem = None
    else:
        raise RegistrationError(
            f"{setting}: {method!r} is not a detection method; use first-found, interface=REGEX,"
            f" skip-interface=REGEX, cidr=CIDR, can-reach=ADDRESS or {KUBERNETES_INTERNAL_IP}")
    if problem:
        raise RegistrationError(f"{setting}: {name}={value}: {problem}")
    return name, value, values


def _from_last_link(addresses: list[HostAddress]) -> list[HostAddress]:
    """`addresses`, given in link order, with the links taken from the last to the first and each
    link's addresses kept in their order. Calico's GetInterfaces walks the links from the highest
    index down ("in reverse order to maintain behavior with older versions"), so on a host with
    several NICs that decides which NIC's address a method finds first."""
    links: dict[str, list[HostAddress]] = {}
    for address in addresses:
        links.setdefault(address.interface, []).append(address)
    return [address for link in reversed(links.values()) for address in link]


def _named(interface: str, patterns: Sequence[str]) -> bool:
    """Whether any of the regular expressions `patterns` is found in the name `interface`:
    Calico matches with Go's regexp.MatchString, which is not anchored (interface=eth1 also
    takes veth1; anchor with ^ and $), the patterns joined as (a)|(b)."""
    return any(re.search(pattern, interface) for pattern in patterns)


def resolve(version: int, setting: str | None, method: str | None, addresses=host_addresses,
            ) -> (ipaddress.IPv4Interface | ipaddress.IPv6Interface | FromKubernetesNode
                  | UnlessRegistered | str | None):
    """What `--ip` (4) or `--ip6` (6) asks for: None (an empty --ip6) or "none" to leave the
    Node's address alone, the address with its prefix, FromKubernetesNode, or for an empty
    --ip, UnlessRegistered."""
    flag = "--ip" if version == 4 else "--ip6"
    if not setting:
        if version == 6:
            return None
        # Checked now, though it may not be needed: a method that cannot work stops the agent at
        # start, not on the first start that finds a Node without an address.
        _parsed_method(version, method)
        return UnlessRegistered(version, method or "first-found")
    if setting == "none":
        return "none"
    if setting == "autodetect" and method == KUBERNETES_INTERNAL_IP:
        return FromKubernetesNode(version)
    if setting == "autodetect":
        return autodetect(version, method or "first-found", addresses())
    if "/" not in setting:
        raise RegistrationError(
            f"{flag}: {setting!r} needs its prefix length (for example {setting}/24): the subnet"
            " decides which peers are in another subnet")
    try:
        address = ipaddress.ip_interface(setting)
    except ValueError:
        raise RegistrationError(f"{flag}: {setting!r} is not an address with a prefix") from None
    if address.version != version:
        raise RegistrationError(f"{flag}: {setting} is not an IPv{version} address")
    try:
        # The Node's own rule for spec.bgp (no zone, no IPv4-mapped address), here so that the
        # flag is named at start, not an invalid Node reported once the datastore answers.
        TypeAdapter(IPv4Interface if version == 4 else IPv6Interface).validate_python(setting)
    except ValidationError as err:
        raise RegistrationError(f"{flag}: {explained(err)}") from None
    if problem := unusable_problem(address.ip):
        raise RegistrationError(f"{flag}: {setting}: {problem}")
    return address


def unusable_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` cannot be a node's BGP address (the one its peers connect to and its VXLAN
    tunnels start from); None when it can."""
    if address.is_unspecified:
        return "the unspecified address names no host: no peer could connect to it"
    if address.is_loopback:
        return "a loopback address never leaves this host: no peer could reach it"
    if address.is_multicast:
        return "a multicast address cannot be a BGP session's end: give this node's unicast address"
    if address.is_link_local:
        # IPv4 link-local is also the pods' side of the node (169.254.1.1 is their gateway).
        return ("a link-local address reaches only its own link and, for IPv6, needs a zone that"
                " neither BGP nor the Node can carry: give a global or unique-local address")
    if address.version == 4 and address.is_reserved:
        # 240.0.0.0/4 and the limited broadcast 255.255.255.255: Linux routes neither to a peer.
        return ("an address of 240.0.0.0/4 (reserved, 255.255.255.255 the broadcast) is not sent "
                "by this host's kernel: give the node's unicast address")
    return None


def not_on_this_host(address: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                     addresses=host_addresses) -> bool:
    """True when no interface of this network namespace has `address` (its prefix aside)."""
    return all(a.address.ip != address.ip for a in addresses())


async def from_kubernetes_node(wanted: FromKubernetesNode, node: str, client,
                               addresses=host_addresses, *, say: bool = True,
                               ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """The address kubernetes-internal-ip picks: the Kubernetes Node `node`'s InternalIP of the
    wanted version, as this host carries it (logged unless not `say`). `client` is a KubeClient
    (datastore/kube_client.py); its DatastoreUnavailable is left to the caller, which waits and
    asks again."""
    from percale.datastore.kube_client import KubeError

    setting = f"{_method_setting(wanted.version)}: {KUBERNETES_INTERNAL_IP}"
    try:
        obj = await client.request("GET", f"/api/v1/nodes/{node}")
    except KubeError as err:
        if err.status == 404:
            raise RegistrationError(f"{setting}: there is no Kubernetes Node {node!r}") from None
        raise RegistrationError(f"{setting}: reading the Kubernetes Node {node!r}: {err}") from None
    internal = []
    for entry in (obj.get("status") or {}).get("addresses") or []:
        if entry.get("type") == "InternalIP":
            try:
                internal.append(ipaddress.ip_address(entry.get("address", "")))
            except ValueError:
                continue  # not an address: the kubelet never writes one; skip rather than fail
    return autodetect(wanted.version, KUBERNETES_INTERNAL_IP, addresses(), internal_ips=internal,
                      say=say)


async def kubernetes_addresses(addresses: tuple, node: str, store: Datastore,
                               kubeconfig: str | None, host=host_addresses, *,
                               say: bool = True) -> tuple:
    """`addresses` (resolve()'s answers, then the AS number) with each FromKubernetesNode replaced
    by the address it names, and each UnlessRegistered of kubernetes-internal-ip given that
    address as `found` when the Node has none of its own to keep (only then: a Node that keeps
    its address needs no Kubernetes API). The Kubernetes API is the datastore's own on the
    kubernetes datastore; with etcd it is reached through `kubeconfig` (else $KUBECONFIG,
    ~/.kube/config or the pod's service account), as calico-node reaches it for this method.
    `say`: log what is found (autodetect)."""
    lookups = [a for a in addresses if isinstance(a, FromKubernetesNode)
               or (isinstance(a, UnlessRegistered) and a.method == KUBERNETES_INTERNAL_IP
                   and a.found is None and not await registered(store, node, a.version))]
    if not lookups:
        return addresses
    from percale.datastore.kube_client import KubeClient, KubeConfigError, configuration
    from percale.datastore.kubernetes import KubeDatastore

    own = None
    if isinstance(store, KubeDatastore):
        client = store.client
    else:
        try:
            client = own = KubeClient(await configuration(kubeconfig))
        except KubeConfigError as err:
            raise RegistrationError(f"{_method_setting(lookups[0].version)}: "
                                    f"{KUBERNETES_INTERNAL_IP} needs the Kubernetes API: {err}"
                                    ) from None
    try:
        resolved = []
        for wanted in addresses:
            if wanted not in lookups:
                resolved.append(wanted)
                continue
            found = await from_kubernetes_node(FromKubernetesNode(wanted.version), node, client,
                                               host, say=say)
            resolved.append(replace(wanted, found=found)
                            if isinstance(wanted, UnlessRegistered) else found)
        return tuple(resolved)
    finally:
        if own is not None:
            await own.close()


async def registered(store: Datastore, node: str, version: int) -> str | None:
    """The address of IP `version` Node `node` has (None: none, or no Node)."""
    try:
        bgp = (await store.get(Key("Node", node))).value.spec.bgp
    except NotFound:
        return None
    if bgp is None:
        return None
    address = bgp.ipv4_address if version == 4 else bgp.ipv6_address
    return None if address is None else str(address)


async def register(store: Datastore, node: str, ipv4, ipv6, as_number: int | None = None,
                   addresses=host_addresses) -> None:
    """Create or update Node `node` with the resolved addresses (see resolve) and AS number,
    refusing an address another Node already has. An UnlessRegistered keeps the Node's address,
    or registers one found on `addresses()`. Retries on a concurrent update."""
    if ipv4 in (None, "none") and ipv6 in (None, "none") and as_number is None:
        return  # nothing to write: "none" keeps the Node's addresses, and makes no Node
    # Found once, however often a concurrent update makes the Node be read again.
    detected: dict[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface] = {}
    for _ in range(10):
        try:
            current = await store.get(Key("Node", node))
            document, revision = current.value.to_document(), current.revision
        except NotFound:
            document = {"apiVersion": "percale.io/v1", "kind": "Node",
                        "metadata": {"name": node}, "spec": {}}
            revision = None
        bgp = dict(document.get("spec", {}).get("bgp") or {})
        for field, value in (("ipv4Address", ipv4), ("ipv6Address", ipv6)):
            if isinstance(value, UnlessRegistered):
                value = await _for_empty_setting(store, node, field, value, bgp.get(field),
                                                 detected, addresses)
                if value is not None:
                    bgp[field] = str(value)
            elif value is not None and value != "none":
                await _refuse_duplicate(store, node, field, value)
                bgp[field] = str(value)
        if as_number is not None:
            bgp["asNumber"] = as_number
        spec = document.setdefault("spec", {})
        if bgp:
            spec["bgp"] = bgp
        else:
            spec.pop("bgp", None)
        wanted = parse(document)
        try:
            if revision is None:
                await store.create(wanted)
            elif wanted != current.value:
                await store.update(wanted, revision=revision)
            return
        except (Conflict, AlreadyExists):
            continue  # someone else wrote the Node meanwhile: read it again
    raise RegistrationError(f"Node {node!r}: kept changing while it was being registered")


async def _for_empty_setting(store: Datastore, node: str, field: str, wanted: UnlessRegistered,
                             registered: str | None, detected: dict, addresses,
                             ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    """The address an empty --ip registers as spec.bgp.`field`: None to keep the `registered`
    one, or to register none, warned, when another Node has the one found. RegistrationError
    when there is neither (calico-node stops too: a node needs an IPv4 address unless told
    `none`). `detected` keeps what was found across register's retries."""
    if registered:
        log.info("--ip is empty: Node %s keeps its IPv%d address %s", node, wanted.version,
                 registered)
        return None
    if wanted.version not in detected:
        try:
            detected[wanted.version] = wanted.found or autodetect(
                wanted.version, wanted.method, addresses())
        except RegistrationError as err:
            raise RegistrationError(
                f"{err} (--ip is empty and Node {node!r} has no IPv{wanted.version} address to "
                "keep: give --ip ADDR/PREFIX, or --ip none for a node without one)") from None
    found = detected[wanted.version]
    try:
        await _refuse_duplicate(store, node, field, found)
    except RegistrationError as err:
        # Found, not asked for: hosts made from one image, or test namespaces, can share an
        # address that no one meant as their BGP address. An explicit --ip still stops here.
        log.warning("%s: Node %s registers no IPv%d address (--ip is empty); give it with --ip",
                    err, node, wanted.version)
        return None
    return found


async def _refuse_duplicate(store: Datastore, node: str, field: str, address) -> None:
    for item in (await store.list("Node")).items:
        other = item.value
        if other.metadata.name == node or other.spec.bgp is None:
            continue
        theirs = other.spec.bgp.ipv4_address if field == "ipv4Address" else other.spec.bgp.ipv6_address
        if theirs is not None and ipaddress.ip_interface(str(theirs)).ip == address.ip:
            raise RegistrationError(
                f"spec.bgp.{field}: {address.ip} is already used by Node {other.metadata.name!r}")
