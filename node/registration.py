"""The node's own Node resource, written at start as calico-node's startup writes it.

`--ip` / `IP` (and `--ip6` / `IP6`) say where this node's BGP address comes from:
  * empty: leave whatever the Node says (it may have been written with percalectl);
  * `autodetect`: find it with `--ip-autodetection-method` (calico.md §1.10: first-found,
    interface=REGEX,..., skip-interface=REGEX,..., cidr=CIDR,..., can-reach=ADDRESS, or
    kubernetes-internal-ip: the InternalIP of this node's Kubernetes Node, as the operator's
    `kubernetes: NodeInternalIP` asks, read from the API once it answers);
  * `none`: this node has no address of that family (the field is removed);
  * an address with its prefix (10.0.0.5/24): used as given. The prefix matters — CrossSubnet
    compares subnets — so a bare address is refused rather than stored as a /32. So is one no
    peer could reach (unspecified, loopback, multicast, link-local). One that is on none of this
    host's interfaces is only warned about, as calico-node warns: it may be added after the agent
    starts (a lab node gets its fabric address so).

The Node is created when it does not exist. Another node already using the address is an error,
as in Calico: two nodes with one BGP address would steal each other's sessions.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from percale.dataplane.host import HostAddress, host_addresses, source_address_towards
from percale.datastore import AlreadyExists, Conflict, Datastore, Key, NotFound
from percale.api import autodetection, parse
from percale.api.fields import IPv4Interface, IPv6Interface
from percale.api.meta import explained

# calico.md §1.10: interfaces first-found never picks (container, bridge, tunnel and pod links).
FIRST_FOUND_EXCLUDED = (
    r"^docker.*", r"^cbr.*", r"^dummy.*", r"^podman.*", r"^virbr.*", r"^lxcbr.*", r"^veth.*",
    r"^lo", r"^br-.*", r"^cali.*", r"^tunl.*", r"^flannel.*", r"^kube-ipvs.*", r"^cni.*",
    r"^vxlan\.calico.*", r"^vxlan-v6\.calico.*", r"^wireguard\.cali.*", r"^wg-v6\.cali.*",
    r"^nodelocaldns.*",
    # percale's own pod and tunnel links.
    r"^pcl.*", r"^vxlan\.percale.*", r"^vxlan6\.percale.*",
)


KUBERNETES_INTERNAL_IP = "kubernetes-internal-ip"


class RegistrationError(ValueError):
    """The node's address settings cannot be honoured; the message names the setting."""


@dataclass(frozen=True)
class FromKubernetesNode:
    """What resolve() answers for `autodetect` with kubernetes-internal-ip: the address is known
    only once the Kubernetes API answers (from_kubernetes_node), and the agent waits for that as
    it waits for its datastore."""
    version: int


def _method_setting(version: int) -> str:
    return "--ip-autodetection-method" if version == 4 else "--ip6-autodetection-method"


def autodetect(version: int, method: str, addresses: list[HostAddress],
               can_reach=source_address_towards,
               internal_ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
               ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """This node's address of one IP version, picked from `addresses` by a Calico detection
    method (for kubernetes-internal-ip, the host's address that is one of the Kubernetes Node's
    `internal_ips`, with that interface's prefix). Raises RegistrationError naming the method
    when nothing matches."""
    setting = _method_setting(version)
    candidates = [a for a in addresses if a.address.version == version]
    name, _, value = (method or "first-found").partition("=")
    values = autodetection.method_values(value)
    # The operator refuses an Installation whose method these rules refuse (installation/model.py).
    if name in ("interface", "skip-interface"):
        problem = autodetection.interfaces_problem(value)
    elif name == "cidr" and values:
        problem = next(filter(None, (autodetection.cidr_problem(v, version) for v in values)), None)
    elif name == "can-reach":
        problem = autodetection.can_reach_problem(value, version)
    else:
        problem = None
    if problem:
        raise RegistrationError(f"{setting}: {name}={value}: {problem}")
    # Calico's enumerating methods take global unicast addresses only: a 169.254 address given
    # global scope (a cloud's metadata link) is no node address (unusable_problem).
    unicast = [a for a in candidates if unusable_problem(a.address.ip) is None]
    if name == "first-found":
        picked = [a for a in unicast
                  if not any(re.match(p, a.interface) for p in FIRST_FOUND_EXCLUDED)]
    elif name in ("interface", "skip-interface") and values:
        patterns = [re.compile(v) for v in values]
        matches = [a for a in unicast if any(p.match(a.interface) for p in patterns)]
        picked = matches if name == "interface" else [a for a in unicast if a not in matches]
    elif name == "cidr" and values:
        networks = [ipaddress.ip_network(v, strict=False) for v in values]
        picked = [a for a in unicast if any(a.address.ip in n for n in networks)]
    elif name == "can-reach" and len(values) == 1:
        source = can_reach(values[0])
        picked = [a for a in candidates if source and str(a.address.ip) == source]
    elif name == KUBERNETES_INTERNAL_IP and not value:
        wanted = [ip for ip in internal_ips if ip.version == version]
        if not wanted:
            raise RegistrationError(
                f"{setting}: {KUBERNETES_INTERNAL_IP}: the Kubernetes Node has no IPv{version} InternalIP")
        picked = [a for a in candidates if a.address.ip in wanted]
        if not picked:
            raise RegistrationError(
                f"{setting}: {KUBERNETES_INTERNAL_IP}: the Kubernetes Node's InternalIP "
                f"{', '.join(map(str, wanted))} is on none of this host's interfaces")
    else:
        raise RegistrationError(
            f"{setting}: {method!r} is not a detection method; use first-found, interface=REGEX,"
            f" skip-interface=REGEX, cidr=CIDR, can-reach=ADDRESS or {KUBERNETES_INTERNAL_IP}")
    if not picked:
        raise RegistrationError(f"{setting}: no IPv{version} address found with {method or 'first-found'}")
    return picked[0].address


def resolve(version: int, setting: str | None, method: str | None, addresses=host_addresses,
            ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | FromKubernetesNode | str | None:
    """What `--ip` (4) or `--ip6` (6) asks for: None to leave the Node alone, "none" to remove the
    address, the address with its prefix, or FromKubernetesNode."""
    flag = "--ip" if version == 4 else "--ip6"
    if not setting:
        return None
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
                               addresses=host_addresses) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """The address kubernetes-internal-ip picks: the Kubernetes Node `node`'s InternalIP of the
    wanted version, as this host carries it. `client` is a KubeClient (datastore/kube_client.py);
    its DatastoreUnavailable is left to the caller, which waits and asks again."""
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
    return autodetect(wanted.version, KUBERNETES_INTERNAL_IP, addresses(), internal_ips=internal)


async def kubernetes_addresses(addresses: tuple, node: str, store: Datastore,
                               kubeconfig: str | None, host=host_addresses) -> tuple:
    """`addresses` (resolve()'s answers, then the AS number) with each FromKubernetesNode replaced
    by the address it names. The Kubernetes API is the datastore's own on the kubernetes
    datastore; with etcd it is reached through `kubeconfig` (else $KUBECONFIG, ~/.kube/config or
    the pod's service account), as calico-node reaches it for this method."""
    if not any(isinstance(a, FromKubernetesNode) for a in addresses):
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
            version = next(a.version for a in addresses if isinstance(a, FromKubernetesNode))
            raise RegistrationError(f"{_method_setting(version)}: {KUBERNETES_INTERNAL_IP} needs the"
                                    f" Kubernetes API: {err}") from None
    try:
        return tuple([await from_kubernetes_node(a, node, client, host)
                      if isinstance(a, FromKubernetesNode)
                      else a for a in addresses])
    finally:
        if own is not None:
            await own.close()


async def register(store: Datastore, node: str, ipv4, ipv6, as_number: int | None = None) -> None:
    """Create or update Node `node` with the resolved addresses (see resolve) and AS number,
    refusing an address another Node already has. Retries on a concurrent update."""
    if ipv4 is None and ipv6 is None and as_number is None:
        return
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
            if value == "none":
                bgp.pop(field, None)
            elif value is not None:
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


async def _refuse_duplicate(store: Datastore, node: str, field: str, address) -> None:
    for item in (await store.list("Node")).items:
        other = item.value
        if other.metadata.name == node or other.spec.bgp is None:
            continue
        theirs = other.spec.bgp.ipv4_address if field == "ipv4Address" else other.spec.bgp.ipv6_address
        if theirs is not None and ipaddress.ip_interface(str(theirs)).ip == address.ip:
            raise RegistrationError(
                f"spec.bgp.{field}: {address.ip} is already used by Node {other.metadata.name!r}")
