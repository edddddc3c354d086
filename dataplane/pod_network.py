"""The pod's kernel side, as Calico wires it: a veth pair, the pod's /32 (and /128), a link-local
gateway answered by proxy ARP on the host side, and a host route to the pod.

    pod netns:  eth0  10.244.3.7/32
                169.254.1.1 dev eth0 scope link
                default via 169.254.1.1 dev eth0
    host:       pcl<hash>  (mac ee:ee:ee:ee:ee:ee, proxy_arp=1, no address)
                10.244.3.7 dev pcl<hash> scope link proto percale

Owner: this module owns the host veths and the /32 (/128) host routes of pods, all tagged with
ROUTE_PROTOCOL; nothing else in percale touches them. Functions here block (netlink) and enter
other network namespaces with setns(2) for the whole process: the CNI handlers run them only in
single-threaded worker processes (cni_handlers.DATAPLANE_WORKERS), never in the agent itself.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

# Shared with the agent's process, which does not import this module (pod_link says why).
from percale.dataplane.pod_link import (  # noqa: F401  (re-exported for callers of this module)
    GATEWAY_V4,
    GATEWAY_V6,
    HOST_VETH_MAC,
    HOST_VETH_PREFIX,
    DataplaneError,
    InterfaceExists,
    PodLink,
    host_veth_name,
)

# Every route percale programs carries this protocol number, so percale reconciles only its own
# routes (kube-router and Calico's felix learned to do this the hard way).
ROUTE_PROTOCOL = 201
_SCOPE_LINK = 253
_IFA_F_NODAD = 0x02

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_host: IPRoute | None = None


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def _in_pod(netns: str) -> Iterator[IPRoute]:
    """A netlink socket inside the pod's namespace. A socket stays in the namespace it was made
    in, so the process steps in, makes it, and steps back at once; pyroute2's own netns=
    option forks a child per call instead, which costs about 4 ms a pod."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            pod = IPRoute()
            pod.link_lookup(ifname="lo")  # the socket is opened here, inside the pod's namespace
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
    try:
        yield pod
    finally:
        pod.close()


def _host_netlink() -> IPRoute:
    """This worker's netlink socket in the node's namespace, kept open between pods."""
    global _host
    if _host is None:
        _host = IPRoute()
    return _host


def ignore_stop_signals() -> None:
    """For the agent's netlink workers: a Ctrl-C or SIGTERM sent to the agent's process group
    must not kill a worker halfway through a pod; the agent stops its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def warm_up() -> int:
    """Open the node's netlink socket, so a worker's first pod pays no start-up cost; returns
    the worker's PID, so the agent can tell that every worker is up."""
    _host_netlink().get_links()
    return os.getpid()


def _random_mac() -> str:
    # Locally administered, unicast: the kernel would pick one like it, but knowing it saves
    # reading the link back.
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def detect_mtu() -> int:
    """The MTU of the interface that carries the default route (the underlay), else 1500."""
    ipr = _host_netlink()
    for family in (2, 10):
        for route in ipr.get_default_routes(family=family):
            oif = route.get_attr("RTA_OIF")
            if oif:
                links = ipr.get_links(oif)
                if links:
                    return int(links[0].get_attr("IFLA_MTU"))
    return 1500


def create_link(netns: str, ifname: str, host_name: str, mtu: int) -> PodLink:
    """The veth pair, up, with the host side's sysctls: the part of wiring a pod that needs no
    address, so it runs while IPAM picks one. Raises InterfaceExists, or DataplaneError having
    removed what it made."""
    host = _host_netlink()
    container_mac = _random_mac()
    try:
        with _in_pod(netns) as pod:
            if pod.link_lookup(ifname=ifname):
                raise InterfaceExists(f"the container already has an interface named {ifname}")
            stale = host.link_lookup(ifname=host_name)
            if stale:
                # A host veth left by an earlier ADD of this pod: its container is gone.
                host.link("del", index=stale[0])
            # The peer is born inside the pod's netns under its final name.
            host.link("add", ifname=host_name, kind="veth", address=HOST_VETH_MAC, mtu=mtu,
                      peer={"ifname": ifname, "net_ns_fd": netns, "mtu": mtu,
                            "address": container_mac})
            _host_sysctls(host_name)
            host.link("set", ifname=host_name, state="up")
            pod.link("set", ifname=ifname, state="up")
    except InterfaceExists:
        raise
    except (NetlinkError, OSError) as err:
        _delete(host, host_name)
        raise DataplaneError(f"creating {ifname} in {netns}: {err}") from None
    except BaseException:
        _delete(host, host_name)
        raise
    return PodLink(host_name, HOST_VETH_MAC, ifname, container_mac, mtu)


def configure(netns: str, ifname: str, host_name: str, addresses: list[Interface]) -> None:
    """The pod's addresses and routes, and the host's routes to it. Raises DataplaneError; the
    caller removes the pair."""
    host = _host_netlink()
    try:
        if any(a.version == 6 for a in addresses):
            _host_sysctls_v6(host_name)
        with _in_pod(netns) as pod:
            index = pod.link_lookup(ifname=ifname)[0]
            for address in addresses:
                prefix = 32 if address.version == 4 else 128
                pod.addr("add", index=index, address=str(address.ip), prefixlen=prefix,
                         flags=_IFA_F_NODAD if address.version == 6 else 0)
            if any(a.version == 4 for a in addresses):
                pod.route("add", dst=f"{GATEWAY_V4}/32", oif=index, scope=_SCOPE_LINK)
                pod.route("add", dst="0.0.0.0/0", gateway=GATEWAY_V4, oif=index)
            if any(a.version == 6 for a in addresses):
                pod.route("add", dst="::/0", gateway=GATEWAY_V6, oif=index)
        host_index = host.link_lookup(ifname=host_name)[0]
        for address in addresses:
            _route_to_pod(host, address, host_index, host_name)
    except DataplaneError:
        raise
    except (NetlinkError, OSError, IndexError) as err:
        raise DataplaneError(f"configuring {ifname} in {netns}: {err}") from None


def _host_sysctls(host_name: str) -> None:
    # Proxy ARP makes the host answer for 169.254.1.1 with its own MAC, without an address on
    # the veth; no delay, or the pod's first packets wait for the proxy timer.
    _sysctl(f"net/ipv4/conf/{host_name}/proxy_arp", "1")
    _sysctl(f"net/ipv4/neigh/{host_name}/proxy_delay", "0")
    _sysctl(f"net/ipv4/conf/{host_name}/forwarding", "1")


def _host_sysctls_v6(host_name: str) -> None:
    _sysctl(f"net/ipv6/conf/{host_name}/proxy_ndp", "1")
    _sysctl(f"net/ipv6/conf/{host_name}/accept_ra", "0")
    _sysctl(f"net/ipv6/conf/{host_name}/forwarding", "1")


def _route_to_pod(host: IPRoute, address: Interface, host_index: int, host_name: str) -> None:
    prefix = 32 if address.version == 4 else 128
    dst = f"{address.ip}/{prefix}"
    try:
        host.route("add", dst=dst, oif=host_index, scope=_SCOPE_LINK, proto=ROUTE_PROTOCOL)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise
        # Calico refuses too: the address is already routed to another interface (a blackhole
        # for a /32 block, another pod), and replacing that route would steal traffic.
        raise DataplaneError(f"{dst} is already routed elsewhere; not replacing that route") from None


def _delete(host: IPRoute, host_name: str) -> bool:
    try:
        host.link("del", ifname=host_name)
        return True
    except NetlinkError as err:
        if err.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise


def tear_down(netns: str, ifname: str) -> bool:
    """Delete the pod's interface from inside its namespace; its host end and the host routes go
    with it. Found by the container's side, not by the host veth's name: a newer container of
    the same pod may own that name by now. False if there was nothing to delete (the namespace
    is gone, and the kernel removed the pair with it)."""
    if not netns or not Path(netns).exists():
        return False
    try:
        with _in_pod(netns) as pod:
            found = pod.link_lookup(ifname=ifname)
            if not found:
                return False
            pod.link("del", index=found[0])
            return True
    except FileNotFoundError:
        return False  # the runtime deleted the namespace meanwhile; the pair went with it
    except NetlinkError as err:
        if err.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise


def unwire(netns: str, ifname: str) -> bool:
    """Cut the pod off at once: its host routes removed and its host veth down. Deleting the pair
    takes the kernel tens of milliseconds, so DEL answers after this and deletes the pair
    afterwards (tear_down); the routes are gone before the pod's addresses can be reused."""
    if not netns or not Path(netns).exists():
        return False
    try:
        with _in_pod(netns) as pod:
            found = pod.link_lookup(ifname=ifname)
            if not found:
                return False
            peer = pod.get_links(found[0])[0].get_attr("IFLA_LINK")
    except (OSError, NetlinkError):
        return False
    host = _host_netlink()
    if not peer:
        return False
    for family in (2, 10):
        for route in host.get_routes(family=family, proto=ROUTE_PROTOCOL, oif=peer):
            try:
                host.route("del", dst=route.get_attr("RTA_DST"), dst_len=route["dst_len"],
                           family=family, oif=peer, proto=ROUTE_PROTOCOL)
            except NetlinkError as err:
                if err.code != errno.ESRCH:
                    raise
    try:
        host.link("set", index=peer, state="down")
    except NetlinkError as err:
        if err.code not in (errno.ENODEV, errno.ENOENT):
            raise
    return True


def remove_host_veth(host_name: str) -> bool:
    """Undo a set_up that failed after the pair was made."""
    return _delete(_host_netlink(), host_name)


def check(netns: str, ifname: str, host_name: str, addresses: list[Interface]) -> list[str]:
    """What differs from what set_up leaves behind; [] when the pod is wired as it should be."""
    problems: list[str] = []
    host = _host_netlink()
    found = host.link_lookup(ifname=host_name)
    if not found:
        return [f"host interface {host_name} is missing"]
    routes = {(r.get_attr("RTA_DST"), r.get_attr("RTA_OIF"))
              for family in (2, 10) for r in host.get_routes(family=family, proto=ROUTE_PROTOCOL)}
    for address in addresses:
        if (str(address.ip), found[0]) not in routes:
            problems.append(f"host route to {address.ip} via {host_name} is missing")
    if not Path(netns).exists():
        return problems + [f"network namespace {netns} is gone"]
    with _in_pod(netns) as pod:
        index = pod.link_lookup(ifname=ifname)
        if not index:
            return problems + [f"container interface {ifname} is missing"]
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=index[0])}
        for address in addresses:
            want = (str(address.ip), 32 if address.version == 4 else 128)
            if want not in have:
                problems.append(f"address {want[0]}/{want[1]} is missing from {ifname}")
        if any(a.version == 4 for a in addresses):
            gateways = {r.get_attr("RTA_GATEWAY") for r in pod.get_default_routes(family=2)}
            if GATEWAY_V4 not in gateways:
                problems.append(f"default route via {GATEWAY_V4} is missing")
        # The same for IPv6, which `configure` sets up just as it does IPv4: without this a
        # dual-stack pod that lost its IPv6 default route passed CHECK.
        if any(a.version == 6 for a in addresses):
            gateways = {r.get_attr("RTA_GATEWAY") for r in pod.get_default_routes(family=10)}
            if GATEWAY_V6 not in gateways:
                problems.append(f"default route via {GATEWAY_V6} is missing")
    return problems
