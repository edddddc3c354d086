"""The pod's kernel side, as Calico wires it: a veth pair, the pod's /32 (and /128), a link-local
gateway answered by proxy ARP on the host side, and a host route to the pod.

    pod netns:  eth0  10.244.3.7/32
                169.254.1.1 dev eth0 scope link
                default via 169.254.1.1 dev eth0
    host:       pcl<hash>  (mac ee:ee:ee:ee:ee:ee, proxy_arp=1, no address)
                10.244.3.7 dev pcl<hash> scope link proto 201

IPv6 likewise: the pod's /128 and `default via fe80::ecee:eeff:feee:eeee dev eth0`, the host
veth's own link-local address (no proxy). For such a pod configure turns IPv6 on at both ends,
whatever the node's or the sandbox's defaults, and turns off duplicate address detection there,
as Calico does.

Owner: this module owns the host veths and the /32 (/128) host routes of pods, the latter tagged
RouteProtocol.POD; nothing else in percale touches them. The CNI ADD makes them (create_link,
configure); the agent's reconciler (node/pod_routes.py) reads them back with read_host_routes
and puts back or removes routes with repair_host_routes, as felix keeps Calico's.

Where it runs: the functions block (netlink) and step into the pod's network namespace with
setns(2) to open a socket there, then step back; setns moves only the calling thread. The agent
runs them in its dataplane worker threads (dataplane/workers.py), never on its own event loop. Each function is
all or nothing: what it made is removed again when a later step fails.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import os
import random
import socket
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from percale.dataplane.netlink import IFF_UP, RT_SCOPE_LINK, Link, Netlink, NetlinkError
from percale.dataplane.route_owners import RouteProtocol

HOST_VETH_PREFIX = "pcl"
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
# The link-local address the kernel gives a host veth with HOST_VETH_MAC (EUI-64).
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"

PROTOCOL = RouteProtocol.POD

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h
_libc = ctypes.CDLL(None, use_errno=True)
# Each worker thread's netlink socket in the node's namespace: a socket is not shared between
# threads, as one thread's request would read another's answer.
_local = threading.local()


class DataplaneError(Exception):
    """The kernel refused a step; whatever this module had set up for the pod is gone again."""


class InterfaceExists(DataplaneError):
    pass


@dataclass(frozen=True)
class PodLink:
    host_name: str
    host_mac: str
    container_name: str
    container_mac: str
    mtu: int
    # create_link deleted the pod's interface an ADD killed midway had left under this name
    replaced_leftover: bool = False


def host_veth_name(namespace: str, pod: str, ifname: str = "eth0") -> str:
    """pcl + 12 hex digits of SHA-1("<namespace>.<pod>"): stable for a pod across restarts and
    container IDs, so DEL finds it from the pod's name alone; 15 characters, the kernel's limit.

    A pod's other interfaces (net1 from a second network, as Multus adds them) hash
    "<namespace>.<pod>/<ifname>": under the pod's one name, the second ADD took the first's host
    veth for a stale one and deleted it, leaving eth0's address and endpoint to nothing. The
    separator is '/', which neither a pod name nor a kernel interface name can hold: with '.',
    pod "web" on net1 and pod "web.net1" on eth0 hashed alike, and the ADD of either deleted the
    other's host veth as its own stale one. eth0 keeps Calico's "<namespace>.<pod>"."""
    wired = f"{namespace}.{pod}" if ifname == "eth0" else f"{namespace}.{pod}/{ifname}"
    return HOST_VETH_PREFIX + hashlib.sha1(wired.encode()).hexdigest()[:12]


def _sysctl(path: str, value: str) -> None:
    fd = os.open(f"/proc/sys/{path}", os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def _in_pod(netns: str, sysctls: Iterable[tuple[str, str]] = ()) -> Iterator[Netlink]:
    """A netlink socket inside the pod's namespace, named by its path; `sysctls` (path under
    /proc/sys, value) are written there first."""
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _in_namespace(target, sysctls) as pod:
            yield pod
    finally:
        os.close(target)


@contextmanager
def _in_namespace(target: int, sysctls: Iterable[tuple[str, str]] = ()) -> Iterator[Netlink]:
    """A netlink socket inside the namespace open as `target`. A socket stays in the namespace
    it was made in, so the thread steps in, makes it, and steps back at once. `sysctls` are
    written while it is in: /proc/sys/net is the calling thread's namespace's."""
    # thread-self: /proc/self is the main thread, and a worker thread must come back to its own.
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            for path, value in sysctls:
                _sysctl(path, value)
            pod = Netlink()
        finally:
            _setns(home)
    finally:
        os.close(home)
    try:
        yield pod
    finally:
        pod.close()


def _namespace_id(path: str) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


# The namespace the agent started in: the node's own. A request naming it would wire, or on DEL
# delete, the node's interfaces (DEL removes CNI_IFNAME from CNI_NETNS: eth0 is the uplink).
_NODE_NAMESPACE = _namespace_id("/proc/self/ns/net")


def is_node_namespace(path: str) -> bool:
    """Whether `path` names the node's own network namespace."""
    try:
        return _namespace_id(path) == _NODE_NAMESPACE
    except OSError:
        return False  # no such path, or none that can exist (over PATH_MAX, a loop)


def netns_problem(path: str) -> str | None:
    """Why `path` is not a network namespace a pod can be wired in; None when it is one. Safe
    in any process: it opens the file and asks the kernel its type, and enters nothing."""
    if not path:
        return "is not set"
    try:
        found = os.stat(path)
    except OSError as err:
        return f"cannot be opened: {err.strerror}"
    # A namespace file is a regular file (nsfs). Anything else is refused before it is opened:
    # opening a FIFO waits for a writer (the agent stood still meanwhile), and opening a device
    # can have effects of its own.
    if not stat.S_ISREG(found.st_mode):
        return "is not a namespace"
    if (found.st_dev, found.st_ino) == _NODE_NAMESPACE:
        return "is the node's own network namespace, not a pod's"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        return f"cannot be opened: {err.strerror}"
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        return "is not a namespace"
    finally:
        os.close(fd)
    return None if kind == _CLONE_NEWNET else "is a namespace, but not a network namespace"


def _host_netlink() -> Netlink:
    """This thread's netlink socket in the node's namespace, kept open between pods."""
    host = getattr(_local, "host", None)
    if host is None:
        host = _local.host = Netlink()
    return host


def warm_up() -> None:
    """Open this thread's netlink socket, so its first pod pays no start-up cost."""
    _host_netlink()


def _random_mac() -> str:
    # Locally administered, unicast: the kernel would pick one like it, but knowing it saves
    # reading the link back.
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def create_link(netns: str, ifname: str, host_name: str, mtu: int, *,
                replace_leftover: bool = False, spare_mac: str | None = None) -> PodLink:
    """The veth pair, the host end up and with its sysctls: the part of wiring a pod that needs
    no address, so it runs while IPAM picks one. Raises InterfaceExists, or DataplaneError having
    removed what it made.

    `replace_leftover`: an `ifname` already in the pod whose peer is `host_name` was left by an
    ADD of this pod that the agent's death cut short (the caller found no attachment of the
    container standing, and knows no other ADD of the veth runs): it is deleted, pair and host
    routes, and the ADD goes on (PodLink.replaced_leftover says so). Not one with `spare_mac`,
    the MAC the endpoint of the pod's other container records: that is its live pod, in the
    namespace a runtime named by mistake. Looked at only when `ifname` is there already, so an
    ADD into an empty namespace pays nothing for it."""
    host = _host_netlink()
    container_mac = _random_mac()
    made = replaced = False
    try:
        with _in_pod(netns) as pod:
            existing = pod.link(name=ifname)
            if existing is not None:
                leftover = host.link(name=host_name) if replace_leftover else None
                if leftover is None or not _is_pair(leftover, existing) or (
                        spare_mac and (existing.mac or "").lower() == spare_mac.lower()):
                    raise InterfaceExists(f"the container already has an interface named {ifname}")
                host.delete_link(leftover.index)  # its peer, and the routes through it, go too
                replaced = True
            stale = host.link(name=host_name)
            if stale is not None:
                # A host veth left by an earlier ADD of this pod: its container is gone.
                host.delete_link(stale.index)
            # The peer is born inside the pod's netns under its final name; the host end is born
            # up (the pod has no address or route yet, so nothing flows before the sysctls
            # below hold), the pod's end is brought up by configure(), which looks it up anyway.
            fd = os.open(netns, os.O_RDONLY)
            try:
                host.add_veth(host_name, HOST_VETH_MAC, mtu, peer=ifname, peer_mac=container_mac,
                              peer_netns_fd=fd, up=True)
                made = True
            finally:
                os.close(fd)
            _host_sysctls(host_name)
    except InterfaceExists:
        raise
    except OSError as err:
        if made:
            _delete(host, host_name)
        raise DataplaneError(f"creating {ifname} in {netns}: {err}") from None
    except BaseException:
        if made:
            _delete(host, host_name)
        raise
    return PodLink(host_name, HOST_VETH_MAC, ifname, container_mac, mtu, replaced)


def _is_pair(host_link: Link, pod_link: Link) -> bool:
    """Whether the two are the ends of one veth pair: each names the other as its peer (a veth
    in another namespace is named by its index there)."""
    return host_link.peer_index == pod_link.index and pod_link.peer_index == host_link.index


def configure(netns: str, ifname: str, host_name: str, addresses: list[Interface]) -> None:
    """The pod's addresses and routes, and the host's routes to it. Raises DataplaneError; the
    caller removes the pair."""
    host = _host_netlink()
    ipv6 = any(a.version == 6 for a in addresses)
    try:
        if ipv6:
            _host_sysctls_v6(host_name)
        with _in_pod(netns, _pod_sysctls_v6(ifname) if ipv6 else ()) as pod:
            link = pod.link(name=ifname)
            if link is None:
                raise DataplaneError(f"configuring {ifname} in {netns}: the interface is gone")
            pod.set_link_up(link.index)  # before the routes: the kernel refuses a route via a down link
            for address in addresses:
                pod.add_address(link.index, ipaddress.ip_interface(address.ip),
                                nodad=address.version == 6)
            try:
                if any(a.version == 4 for a in addresses):
                    gateway = ipaddress.IPv4Address(GATEWAY_V4)
                    pod.add_route(ipaddress.IPv4Network(f"{GATEWAY_V4}/32"), oif=link.index,
                                  scope=RT_SCOPE_LINK)
                    pod.add_route(ipaddress.IPv4Network("0.0.0.0/0"), gateway=gateway, oif=link.index)
                if any(a.version == 6 for a in addresses):
                    pod.add_route(ipaddress.IPv6Network("::/0"),
                                  gateway=ipaddress.IPv6Address(GATEWAY_V6), oif=link.index)
            except NetlinkError as err:
                if err.errno != errno.EEXIST:
                    raise
                # Another interface of the pod (percale's eth0, from a first network) holds the
                # gateway and default routes: percale wires one interface per pod.
                raise DataplaneError(
                    f"configuring {ifname} in {netns}: the pod's gateway and default routes are "
                    "already through another of its interfaces; percale wires one interface per "
                    "pod") from None
        host_link = host.link(name=host_name)
        if host_link is None:
            raise DataplaneError(f"configuring {ifname} in {netns}: {host_name} is gone")
        for address in addresses:
            _route_to_pod(host, address, host_link.index)
    except DataplaneError:
        raise
    except OSError as err:
        raise DataplaneError(f"configuring {ifname} in {netns}: {err}") from None


def _host_sysctls(host_name: str) -> None:
    # Proxy ARP makes the host answer for 169.254.1.1 with its own MAC, without an address on
    # the veth; no delay, or the pod's first packets wait for the proxy timer.
    _sysctl(f"net/ipv4/conf/{host_name}/proxy_arp", "1")
    _sysctl(f"net/ipv4/neigh/{host_name}/proxy_delay", "0")
    _sysctl(f"net/ipv4/conf/{host_name}/forwarding", "1")
    # The host may DNAT the pod's packets to 127.0.0.1 (a service on the node's loopback):
    # without it the kernel drops them as martians arriving here. Calico sets it too.
    _sysctl(f"net/ipv4/conf/{host_name}/route_localnet", "1")


def _host_sysctls_v6(host_name: str) -> None:
    # Before the pod's end goes up. The host end is born up but has no carrier until then, and
    # the kernel gives it its link-local address, the pod's IPv6 gateway, only with the carrier.
    # Without accept_dad=0 that address stays tentative for about 2 s of duplicate address
    # detection (pointless on a point-to-point link), and the host ignores the pod's neighbour
    # solicitations for it: a new pod's first IPv6 packets waited 2 s. Calico writes it too.
    _sysctl(f"net/ipv6/conf/{host_name}/accept_dad", "0")
    # A host with net.ipv6.conf.default.disable_ipv6=1 makes the veth without IPv6: the host
    # route to the pod was refused ("IPv6 is disabled on nexthop device"). As Calico's.
    _sysctl(f"net/ipv6/conf/{host_name}/disable_ipv6", "0")
    _sysctl(f"net/ipv6/conf/{host_name}/proxy_ndp", "1")
    _sysctl(f"net/ipv6/conf/{host_name}/accept_ra", "0")
    _sysctl(f"net/ipv6/conf/{host_name}/forwarding", "1")


def _pod_sysctls_v6(ifname: str) -> list[tuple[str, str]]:
    """Written inside the pod before its interface goes up. A sandbox made with IPv6 off
    (all/default disable_ipv6=1, and so its interfaces) refused the pod's IPv6 address ("IPv6
    is disabled on this device"); `all` turns it on for the interfaces there already, `default`
    for later ones, `lo` as Calico. No duplicate address detection on the pod's end either,
    as Calico: its link-local address is usable as soon as the link is up."""
    return [("net/ipv6/conf/all/disable_ipv6", "0"), ("net/ipv6/conf/default/disable_ipv6", "0"),
            ("net/ipv6/conf/lo/disable_ipv6", "0"), (f"net/ipv6/conf/{ifname}/accept_dad", "0")]


def _route_to_pod(host: Netlink, address: Interface, host_index: int) -> None:
    destination = ipaddress.ip_network(address.ip)
    try:
        host.add_route(destination, oif=host_index, scope=RT_SCOPE_LINK, protocol=PROTOCOL)
    except NetlinkError as err:
        if err.errno != errno.EEXIST:
            raise
        # Calico refuses too: the address is already routed to another interface (a blackhole
        # for a /32 block, another pod), and replacing that route would steal traffic.
        raise DataplaneError(f"{destination} is already routed elsewhere; not replacing that route") from None


def _delete(host: Netlink, host_name: str) -> bool:
    link = host.link(name=host_name)
    return link is not None and host.delete_link(link.index)


@dataclass(frozen=True)
class Unwired:
    """A pod interface unwire() cut off, for tear_down() to delete: the namespace it is in, held
    open (so it is that namespace, whatever path names it later), its identity, and the
    interface's index (an ADD's new interface of the same name is another index)."""
    netns_fd: int
    namespace: tuple[int, int]  # (st_dev, st_ino), as pending_key() reads it from a path
    index: int
    ifname: str

    @property
    def key(self) -> tuple[int, int, str]:
        return (*self.namespace, self.ifname)


def pending_key(netns: str, ifname: str) -> tuple[int, int, str] | None:
    """The Unwired.key an interface `ifname` in the namespace at `netns` would have; None if
    the path names nothing."""
    try:
        return (*_namespace_id(netns), ifname)
    except OSError:
        return None


def unwire(netns: str, ifname: str) -> Unwired | None:
    """Cut the pod off at once: its host routes removed and its host veth down. Deleting the pair
    takes the kernel tens of milliseconds, so DEL answers after this and deletes the pair
    afterwards (tear_down); the routes are gone before the pod's addresses can be reused. None
    when there is nothing to cut off: the namespace or the interface is gone (the runtime
    deleted the namespace, and the pair went with it)."""
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            with _in_namespace(target) as pod:
                link = pod.link(name=ifname)
        except OSError:
            link = None  # not a network namespace (any more): nothing of the pod is in it
        if link is None:
            os.close(target)
            return None
        if link.peer_index:
            _cut_off(link.peer_index)
        found = os.fstat(target)
    except BaseException:
        os.close(target)
        raise
    return Unwired(target, (found.st_dev, found.st_ino), link.index, ifname)


def _cut_off(host_index: int) -> None:
    host = _host_netlink()
    for family in (socket.AF_INET, socket.AF_INET6):
        # Only this pod's routes: the kernel filters by protocol and interface, so a node with
        # 100k BGP routes pays nothing for them.
        for route in host.routes(family, protocol=PROTOCOL, oif=host_index):
            host.delete_route(route.destination, oif=host_index, protocol=PROTOCOL)
    try:
        host.set_link_up(host_index, up=False)
    except NetlinkError as err:
        if err.errno not in (errno.ENODEV, errno.ENOENT):
            raise


def tear_down(unwired: Unwired) -> bool:
    """Delete the pod interface unwire() cut off; its host end goes with it. By its index in the
    namespace unwire() found it in: looked up by name, it could be the interface a newer ADD into
    the same namespace has made meanwhile. False if it was gone already. Closes
    `unwired.netns_fd`."""
    try:
        with _in_namespace(unwired.netns_fd) as pod:
            return pod.delete_link(unwired.index)
    finally:
        os.close(unwired.netns_fd)


def host_link_exists(host_name: str) -> bool:
    """Whether the node has an interface of that name (a pod's host veth still standing)."""
    return _host_netlink().link(name=host_name) is not None


def remove_host_veth(host_name: str) -> bool:
    """Undo a create_link whose pod could not be wired."""
    return _delete(_host_netlink(), host_name)


def check(netns: str, ifname: str, host_name: str, addresses: list[Interface]) -> list[str]:
    """What differs from what create_link and configure leave behind; [] when the pod is wired
    as it should be."""
    host = _host_netlink()
    host_link = host.link(name=host_name)
    if host_link is None:
        return [f"host interface {host_name} is missing"]
    problems = [f"host route to {address.ip} via {host_name} is missing"
                for address in _unrouted(host, host_link.index, addresses)]
    if not Path(netns).exists():
        return problems + [f"network namespace {netns} is gone"]
    with _in_pod(netns) as pod:
        link = pod.link(name=ifname)
        if link is None:
            return problems + [f"container interface {ifname} is missing"]
        return problems + _pod_side_problems(pod, link, addresses)


def _unrouted(host: Netlink, host_index: int, addresses: list[Interface]) -> list[Interface]:
    """The addresses with no host route of this module's through the interface `host_index`."""
    routed = {route.destination
              for family in (socket.AF_INET, socket.AF_INET6)
              for route in host.routes(family, protocol=PROTOCOL, oif=host_index)}
    return [a for a in addresses if ipaddress.ip_network(a.ip) not in routed]


def _pod_side_problems(pod: Netlink, link: Link, addresses: list[Interface]) -> list[str]:
    """What the pod's interface `link` lacks of what configure gives it."""
    problems = []
    have = {a.interface for a in pod.addresses(index=link.index)}
    for address in addresses:
        want = ipaddress.ip_interface(address.ip)
        if want not in have:
            problems.append(f"address {want} is missing from {link.name}")
    # Both families, as configure sets both up: without the IPv6 half a dual-stack pod that
    # lost its IPv6 default route passed CHECK.
    for version, family, gateway in ((4, socket.AF_INET, GATEWAY_V4),
                                     (6, socket.AF_INET6, GATEWAY_V6)):
        if any(a.version == version for a in addresses):
            gateways = {str(r.gateway) for r in pod.routes(family, default_only=True)}
            if gateway not in gateways:
                problems.append(f"default route via {gateway} is missing")
    return problems


@dataclass(frozen=True)
class Attachment:
    """The pod's end of an earlier ADD, found in the namespace a new ADD names: the peer of the
    pod's host veth. `wired`: up, with the addresses and the default routes configure gives,
    and the host routes to it in place."""
    link: PodLink
    wired: bool


def find_attachment(netns: str, ifname: str, host_name: str,
                    addresses: list[Interface]) -> Attachment | None:
    """The interface `ifname` in `netns` when it is the peer of `host_name`; None when it is not
    there (that attachment is in another namespace, or gone). A wired one's missing host
    routes are put back: the ADD that made them may have died before it got to them, and its
    retry answers that the pod is reachable."""
    host = _host_netlink()
    host_link = host.link(name=host_name)
    if host_link is None:
        return None
    try:
        with _in_pod(netns) as pod:
            link = pod.link(name=ifname)
            if link is None or not _is_pair(host_link, link):
                return None
            wired = bool(link.flags & IFF_UP) and not _pod_side_problems(pod, link, addresses)
    except OSError as err:
        raise DataplaneError(f"looking for {ifname} in {netns}: {err}") from None
    found = PodLink(host_name, host_link.mac or HOST_VETH_MAC, ifname, link.mac or "", link.mtu)
    if wired:
        try:
            for address in _unrouted(host, host_link.index, addresses):
                _route_to_pod(host, address, host_link.index)
        except DataplaneError:
            wired = False  # the address is routed elsewhere: wiring it afresh says so (103)
    return Attachment(found, wired)


# -- the pods' host routes, kept by the agent (node/pod_routes.py) --------------------------------

@dataclass(frozen=True)
class HostRoutes:
    """The pods' host routes in the kernel and the links they may go through, read together.
    `routes`: (destination, interface index) of each route of this module's protocol in the
    main table; `links`: each link of the node by name, as (index, up)."""
    routes: frozenset[tuple[Network, int]]
    links: Mapping[str, tuple[int, bool]]


def read_host_routes() -> HostRoutes:
    """One dump of the routes with this module's protocol (per family, the kernel filtering, so
    BGP's 100k routes cost nothing), then one of the links. In that order: a route's interface
    either is in the links read after it or is gone, and its routes with it; read the other
    way round, a veth made in between would be unknown while its route was not."""
    with Netlink() as nl:
        routes = frozenset((route.destination, route.oif)
                           for family in (socket.AF_INET, socket.AF_INET6)
                           for route in nl.routes(family, protocol=PROTOCOL))
        links = {link.name: (link.index, bool(link.flags & IFF_UP)) for link in nl.links()}
    return HostRoutes(routes, links)


def repair_host_routes(remove: Iterable[tuple[Network, int]],
                       add: Iterable[tuple[Network, int]]) -> dict[Network, str]:
    """Delete, then add, host routes to pods, each (destination, interface index). A deletion
    names the interface and the protocol, so it can only take the very route it was decided on
    (a pod's ADD may have routed the address through a new veth meanwhile). Additions the kernel
    refuses come back as {destination: why}: the address is routed elsewhere (another owner's
    route, which is never replaced, as configure does not). An interface deleted or taken down
    meanwhile (its pod's DEL, an ADD replacing it) is no refusal: nothing is to be routed
    through it."""
    refused: dict[Network, str] = {}
    with Netlink() as nl:
        for destination, index in remove:
            nl.delete_route(destination, oif=index, protocol=PROTOCOL)  # gone already: fine
        for destination, index in add:
            try:
                nl.add_route(destination, oif=index, scope=RT_SCOPE_LINK, protocol=PROTOCOL)
            except NetlinkError as err:
                if err.errno == errno.EEXIST:
                    refused[destination] = "already routed elsewhere; not replacing that route"
                elif err.errno not in (errno.ENODEV, errno.ENETDOWN):
                    raise
    return refused
