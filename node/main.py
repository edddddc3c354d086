"""`percale-node`: the node agent: the CNI server and the BGP agent in one asyncio process.

It opens the datastore, registers the node, turns on forwarding (pods reach each other through
the host), and then runs, side by side:

  * the view (datastore/cache.py): each kind the agent needs listed once and followed by its
    watch; every part below reads it and reacts to its changes;
  * the CNI server (node/cni_server.py, cni_handlers.py): IPAM over the view, writes to the
    datastore, pods wired by the dataplane worker threads;
  * BGP (bgpd/agent.py), once this node's Node has a BGP address: ExaBGP announces the node's
    blocks, and learned routes go through the RIB to the kernel (dataplane/fib.py);
  * network policy (node/policy_agent.py): the view's policies, profiles and endpoints compiled
    into the `inet percale` nftables table; a CNI ADD returns once the pod's chains are in;
  * the pods' host routes kept as the endpoints say (node/pod_routes.py);
  * an autodetected address detected again every --autodetect-poll-interval, and a change
    written to the Node (node/address_monitor.py), as calico-node's monitor-addresses;
  * its status on the status socket and as the node's NodeStatus (node/status.py), and
    /livez, /readyz, /metrics (node/health.py).

One agent runs per state directory (--bgp-dir: ExaBGP's pid file, configuration and socket): a
second one is refused at start (hold_agent_lock). Two served the same sockets and killed each
other's ExaBGP through its pid file for as long as both ran.

It stops cleanly on SIGTERM or SIGINT, leaving its routes in the kernel and letting peers keep
ours (graceful restart). Assembly only: the logic lives in the packages it wires together.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import faulthandler
import logging
import os
import re
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from percale.api import InvalidResource, Node
from percale.api.listen import listen_address
from percale.api.meta import DNS_SUBDOMAIN_RULE
from percale.dataplane.blackholes import Blackholes
from percale.bgpd import secret_sources
from percale.bgpd.agent import BGPAgent
from percale.bgpd.speaker import ExaBGP
from percale.bgpd.status import NoBGP
from percale.dataplane.fib import FIB
from percale.datastore.options import (
    ConfigFile,
    EtcdCACertFile,
    EtcdCertFile,
    EtcdEndpoints,
    DatastoreType,
    EtcdKeyFile,
    Kubeconfig,
    datastore_settings,
)
from percale.dataplane.host import (
    DEFAULT_MTU_PATTERN, enable_forwarding, enable_ipv6_forwarding,
)
from percale.dataplane.nat import OutgoingNAT
from percale.dataplane.route_owners import RouteProtocol
from percale.datastore import DatastoreError, DatastoreUnavailable
from percale.datastore.cache import AGENT_KINDS, Cache, CachedDatastore
from percale.datastore.config import ConfigError, load_config, open_datastore
from percale.ipam.allocator import IPAM, read_pools
from percale.ipc.unix_server import SocketFile
from percale.node import address_monitor, health, registration
from percale.node.host_mtu import HostMTUFollower, check_host_mtu, decide_host_mtu
from percale.node.cni_handlers import CNIHandlers
from percale.node.cni_server import DEFAULT_SOCKET, serve
from percale.bgpd.status import DEFAULT_STATUS_SOCKET
from percale.node.pod_routes import PodRoutes
from percale.node.policy_agent import POLICY_KINDS, PolicyAgent
from percale.node.pools import DEFAULT_MTU_FILE, PoolFollower
from percale.node.status import NodeStatusPublisher, serve_status
from percale.vxlan.agent import VXLANAgent
from percale.vxlan.plan import MTUTooSmall

log = logging.getLogger("percale.node")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


class AgentFailed(Exception):
    """A part of the agent that must run until it stops ended on its own."""


class AgentRunning(Exception):
    """Another percale-node holds this agent's state directory."""


LOCK_FILE = "percale-node.lock"


def hold_agent_lock(state_dir: Path, node: str) -> int:
    """An exclusive flock on <state_dir>/percale-node.lock, held as long as the returned
    descriptor is open (the kernel lets go when the process ends, however it ends). AgentRunning,
    naming the holder, when another process holds it. The file keeps "<pid> <node>" of the
    holder for that message; it is never removed, as a lock file removed while another process
    opens it locks nothing. The descriptor is not inherited (os.open's default): an ExaBGP that
    outlived its agent would otherwise hold the lock and keep every later agent out."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 256, 0).decode(errors="replace").split()
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        pid = holder[0] if holder else "unknown"
        their_node = holder[1] if len(holder) > 1 else node
        raise AgentRunning(f"another percale-node (pid {pid}) is running for node {their_node} "
                           f"(lock {path})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {node}\n".encode(), 0)
    return fd


async def register_when_reachable(store, node: str, addresses: tuple, stop: asyncio.Event,
                                  kubeconfig: str | None = None) -> bool:
    """Register the node, waiting for the datastore (and for kubernetes-internal-ip, the
    Kubernetes API) as long as it takes (as calico-node waits for its datastore): a node that
    starts with its etcd, or on a machine too busy to answer within the client's deadline, must
    not give up. False if stopped meanwhile."""
    delay = 0.5
    while True:
        try:
            resolved = await registration.kubernetes_addresses(addresses, node, store, kubeconfig)
            await registration.register(store, node, *resolved)
            return True
        except DatastoreUnavailable as err:
            log.warning("datastore not reachable yet (%s); trying again in %.1f s", err, delay)
        try:
            # not wait_for, which in Python 3.11 can swallow a cancellation for good
            async with asyncio.timeout(delay):
                await stop.wait()
            return False
        except TimeoutError:
            delay = min(delay * 2, 10)


@dataclass(frozen=True)
class Options:
    """percale-node's settings, checked (main() turns the command line into these)."""

    node: str
    cni_socket: str = DEFAULT_SOCKET
    status_socket: str = DEFAULT_STATUS_SOCKET
    host_mtu: int = 0  # 0: detect it from the interfaces matching mtu_pattern
    mtu_pattern: str = DEFAULT_MTU_PATTERN
    mtu_file: str = DEFAULT_MTU_FILE
    backend: str = "bgp"  # bgp, vxlan or none (Calico's CALICO_NETWORKING_BACKEND)
    bgp_dir: Path = Path("/var/run/percale/bgp")
    secrets_dir: Optional[Path] = None
    health_listen: Optional[tuple[str, int]] = ("127.0.0.1", 9099)  # None: no health endpoints
    router_id: Optional[str] = None
    policy_reconcile_seconds: float = 30.0
    pod_routes_reconcile_seconds: float = 30.0
    # The families whose address is detected again while the agent runs, and how often.
    detected: tuple[address_monitor.Detected, ...] = ()
    autodetect_poll_seconds: float = 60.0


def resolve_node_name(given: Optional[str]) -> str:
    """The node's name: `given`, else as calico-node and the kubelet name a node by default, the
    host name lower-cased. RegistrationError if it cannot name a Node (found at start, not as a
    traceback once the Node is written)."""
    name = given or socket.gethostname().strip().lower()
    if not Node.is_valid_name(name):
        setting = "--node-name (NODENAME)" if given else "the host name (set --node-name or NODENAME)"
        raise registration.RegistrationError(f"{setting} {name!r}: not a node name ({DNS_SUBDOMAIN_RULE})")
    return name


# sun_path in <sys/un.h> is 108 bytes with its terminating NUL: a longer path fails only when the
# socket is bound, after the node has registered, as an OSError naming neither setting nor limit.
SOCKET_PATH_MAX = 107


def socket_path_problem(path: str) -> str | None:
    """Why `path` cannot be a UNIX socket's path ("is ... long; ..."); None when it can."""
    size = len(os.fsencode(path))
    if size > SOCKET_PATH_MAX:
        return f"is {size} bytes long; a UNIX socket path must be shorter than {SOCKET_PATH_MAX + 1} bytes"
    return None


def warn_if_not_here(*settings: tuple[str, Optional[str], object]) -> None:
    """A warning for each (flag, setting, resolved address) given as an address that none of this
    host's interfaces has, as calico-node warns: not refused, since the address may be added
    after the agent starts, but peers and tunnels reach the node there only once it is."""
    for flag, setting, address in settings:
        if setting == "autodetect" or not isinstance(
                address, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
            continue  # unset, none, or detected: found on the host's interfaces
        try:
            missing = registration.not_on_this_host(address)
        except OSError as err:
            log.debug("could not list this host's addresses to check %s: %s", flag, err)
            continue
        if missing:
            log.warning("%s %s: no interface of this host has %s (yet): peers and VXLAN tunnels"
                        " cannot reach this node there until one has", flag, setting, address.ip)


async def bind_health(listen: tuple[str, int] | None) -> health.Endpoints | None:
    """The health endpoints' address taken, or a RegistrationError naming the setting: one this
    machine cannot listen on (not its address, in use, a name that does not resolve)."""
    if listen is None:
        return None
    endpoints = health.Endpoints()
    try:
        await endpoints.bind(*listen)
    except OSError as err:
        host, port = listen
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise registration.RegistrationError(
            f"--health-listen (PERCALE_HEALTH_LISTEN) {shown!r}: cannot listen there: "
            f"{err.strerror or err}") from None
    return endpoints


async def run(options: Options, settings: dict[str, Optional[str]],
              addresses: tuple = (None, None, None)) -> None:
    # First of all: a second agent must not touch the first one's sockets, ExaBGP or health port.
    lock = hold_agent_lock(options.bgp_dir, options.node)
    try:
        # Bound before anything else: an address the node cannot have stops it before it
        # registers, and /livez answers while registering waits for the datastore
        # (health.Endpoints).
        health_endpoints = await bind_health(options.health_listen)
        try:
            await serve_node(options, settings, addresses, health_endpoints)
        finally:
            if health_endpoints is not None:
                health_endpoints.close()
    finally:
        os.close(lock)


async def serve_node(options: Options, settings: dict[str, Optional[str]], addresses: tuple,
                     health_endpoints: health.Endpoints | None) -> None:
    node, cni_socket, status_socket = options.node, options.cni_socket, options.status_socket
    config = load_config(**settings)
    store = open_datastore(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        registered = await register_when_reachable(store, node, addresses, stop, config.kubeconfig)
    except BaseException:
        await store.close()
        raise
    if not registered:  # stopped while waiting for the datastore
        await store.close()
        return
    enable_forwarding()
    try:
        # IPv6 only where IPv6 pods are (dataplane/host.py), before CNI is served; a pool made
        # later, or one the datastore cannot show now, turns it on as the view brings it
        # (node/pools.py): an agent serves CNI ("try again") while its datastore is away.
        stored_pools = await read_pools(store, lambda err: log.warning(
            "IPv6 forwarding: leaving out a pool that cannot be read: %s", err))
    except DatastoreError:
        stored_pools = []
    except BaseException:
        await store.close()
        raise
    if any(p.spec.network.version == 6 for p in stored_pools):
        enable_ipv6_forwarding()
    # Decided once the datastore answers: by then the host's interfaces are up, and the Node
    # says which of them hold its addresses.
    try:
        host_mtu = await decide_host_mtu(options.host_mtu, options.mtu_pattern, store, node,
                                         addresses[:2])
    except BaseException:
        await store.close()
        raise
    cache = Cache(store, AGENT_KINDS + POLICY_KINDS, node=node)
    view = CachedDatastore(store, cache)
    ipam = IPAM(view, authority=store)
    policy_agent = PolicyAgent(cache, node, reconcile_seconds=options.policy_reconcile_seconds)
    handlers = CNIHandlers(view, ipam, node, host_mtu, policy=policy_agent)
    bgp_on = options.backend == "bgp"
    vxlan_fib = FIB(protocol=RouteProtocol.VXLAN, takeover=True)
    vxlan_agent = VXLANAgent(cache, node, store=view, ipam=ipam, routes=vxlan_fib, tunnels=True,
                             host_mtu=host_mtu, bgp=bgp_on, blackholes=None if bgp_on else Blackholes())
    fib: FIB | None = None
    bgp_agent: BGPAgent | NoBGP
    if bgp_on:
        fib = FIB()
        # reachableBy's host routes to peers: an owner of their own, adopted across a restart.
        peer_routes = FIB(protocol=RouteProtocol.PEER)
        # BGP passwords: the files under --secrets-dir, else the Secrets through the
        # Kubernetes API on that datastore.
        bgp_agent = BGPAgent(cache, node, options.bgp_dir, fib=fib, blackholes=Blackholes(),
                             peer_routes=peer_routes,
                             secrets=secret_sources.choose(options.secrets_dir, store),
                             router_id=options.router_id)
        bgp_agent.on_sync = health.SYNC_SECONDS.observe
        # Blocks the VXLAN side routes are never BGP's to install.
        bgp_agent.programmer.claimed = vxlan_agent.claimed
        vxlan_agent.on_claims = bgp_agent.exclusions_changed
    else:
        bgp_agent = NoBGP()
    pools = PoolFollower(cache, host_mtu, options.mtu_file, OutgoingNAT())
    mtu_follower = HostMTUFollower(
        # Through the view: its Node is this process's copy, so a check costs no request.
        lambda: decide_host_mtu(options.host_mtu, options.mtu_pattern, view, node, addresses[:2],
                                say=False),
        host_mtu, [handlers.set_host_mtu, vxlan_agent.set_host_mtu, pools.set_host_mtu])
    # Before the first list completes, reads go to the datastore itself: CNI is served at once.
    following = asyncio.create_task(cache.run(), name="datastore view")
    await handlers.start()
    server = await serve(handlers.handle, cni_socket)
    cni_file = SocketFile.of(cni_socket)
    log.info("percale-node %s serving CNI on %s", node, cni_socket)
    print(f"percale-node {node}: serving CNI requests on {cni_socket}", flush=True)
    status_server = await serve_status(bgp_agent, node, status_socket)
    status_file = SocketFile.of(status_socket)
    log.info("percale-node %s answering status on %s", node, status_socket)
    pod_routes = PodRoutes(cache, view, node, handlers.adding,
                           resync=options.pod_routes_reconcile_seconds)
    if health_endpoints is not None:
        health_endpoints.attach(bgp_agent, datastore=store, cache=cache, policy=policy_agent)
    parts = [following]
    if isinstance(bgp_agent, BGPAgent):
        parts.append(asyncio.create_task(bgp_agent.run(), name="BGP"))
    parts += [asyncio.create_task(vxlan_agent.run(), name="VXLAN"),
              asyncio.create_task(pools.run(), name="IPPool follower"),
              asyncio.create_task(mtu_follower.run(), name="host MTU"),
              asyncio.create_task(policy_agent.run(), name="policy"),
              asyncio.create_task(pod_routes.run(), name="pod routes"),
              asyncio.create_task(NodeStatusPublisher(store, node, bgp_agent).run(), name="NodeStatus")]
    if options.detected:
        monitor = address_monitor.AddressMonitor(
            store, view, node, options.detected, options.autodetect_poll_seconds,
            kubeconfig=config.kubeconfig)
        parts.append(asyncio.create_task(monitor.run(), name="address monitor"))
    stopping = asyncio.create_task(stop.wait())
    failed: str | None = None
    try:
        # Each runs until cancelled: one that ends has failed, and an agent without its view
        # or its BGP side must not look healthy. It stops, and its supervisor starts it again.
        done, _ = await asyncio.wait({stopping, *parts}, return_when=asyncio.FIRST_COMPLETED)
        for task in parts:
            if task in done:
                error = task.exception() or RuntimeError("it returned")
                failed = f"the {task.get_name()} task ended: {error!r}"
                log.error("%s; stopping", failed, exc_info=error)
    finally:
        stopping.cancel()
        # Gone first, so `node status` says the agent is not running while it stops.
        status_server.close()
        # Only the file this agent bound: one another process bound since is that one's.
        if status_file is not None:
            status_file.unlink()
        for task in reversed(parts):
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass  # a failure was logged above
        await status_server.wait_closed()
        for table in (fib, vxlan_fib):
            if table is not None:
                table.close()
        server.close()
        await server.wait_closed()
        if cni_file is not None:
            cni_file.unlink()
        handlers.close()
        await store.close()
    if failed is not None:
        raise AgentFailed(failed)


@app.command()
def main(
    node_name: Annotated[Optional[str], typer.Option(
        envvar="NODENAME", help="This node's name (default: the host name, lower-cased)")] = None,
    cni_socket: Annotated[str, typer.Option(
        envvar="PERCALE_CNI_SOCKET", help="Unix socket the CNI plugins talk to")] = DEFAULT_SOCKET,
    status_socket: Annotated[str, typer.Option(
        envvar="PERCALE_STATUS_SOCKET",
        help="Unix socket `percalectl node status` reads")] = DEFAULT_STATUS_SOCKET,
    mtu: Annotated[int, typer.Option(
        envvar="PERCALE_MTU", min=0, max=65535,
        help="The host's (underlay) MTU; 0 detects it: the smallest MTU of the up interfaces"
        " matching --mtu-iface-pattern. Pods get it less the overhead of the encapsulations"
        " the enabled pools use (VXLAN 50, IPv6 VXLAN 70); a conflist mtu wins. Above the MTU"
        " of the interface holding the node's address, that interface's MTU is used (logged)")] = 0,
    mtu_iface_pattern: Annotated[str, typer.Option(
        envvar="PERCALE_MTU_IFACE_PATTERN",
        help="Interfaces whose MTU is the host's (felix's MTUIfacePattern)")] = DEFAULT_MTU_PATTERN,
    mtu_file: Annotated[str, typer.Option(
        envvar="PERCALE_MTU_FILE", help="Where the pod MTU is written for other tools")] = DEFAULT_MTU_FILE,
    networking_backend: Annotated[str, typer.Option(
        envvar="PERCALE_NETWORKING_BACKEND",
        help="bgp (ExaBGP, with VXLAN for pools that ask for it; Calico's 'bird' is taken for it),"
        " vxlan (VXLAN only: no BGP process, as Calico's CALICO_NETWORKING_BACKEND=vxlan) or"
        " none (the same here: no BGP process, VXLAN only for pools that ask for it)")] = "bgp",
    config: ConfigFile = None,
    etcd_endpoints: EtcdEndpoints = None,
    etcd_ca_cert_file: EtcdCACertFile = None,
    etcd_cert_file: EtcdCertFile = None,
    etcd_key_file: EtcdKeyFile = None,
    datastore_type: DatastoreType = None,
    kubeconfig: Kubeconfig = None,
    bgp_dir: Annotated[Path, typer.Option(
        envvar="PERCALE_BGP_DIR", help="Where ExaBGP's configuration, socket and log live")] = Path("/var/run/percale/bgp"),
    secrets_dir: Annotated[Optional[Path], typer.Option(
        help="BGP passwords: <dir>/<secret name>/<key>, as a mounted Kubernetes secret"
        " (without it, on the Kubernetes datastore, the Secret in this pod's namespace through"
        " the API, as calico-node); a session whose password cannot be read, or is not 1-80"
        " printable ASCII characters"
        " without quotes or backslashes (what ExaBGP and the kernel take), goes without one"
        " (logged), as in Calico")] = None,
    health_listen: Annotated[str, typer.Option(
        envvar="PERCALE_HEALTH_LISTEN",
        help="HOST:PORT for /livez, /readyz and /metrics ([ADDR]:PORT for IPv6, :PORT for"
        " 127.0.0.1); empty to turn them off")] = "127.0.0.1:9099",
    ip: Annotated[Optional[str], typer.Option(
        "--ip", envvar="IP",
        help="This node's IPv4 BGP address: ADDR/PREFIX, 'autodetect' or 'none'"
        " (no detection: the Node's address stays as it is); unset keeps the Node's address, or"
        " autodetects one when it has none (as calico-node)",
    )] = None,
    ip6: Annotated[Optional[str], typer.Option(
        "--ip6", envvar="IP6",
        help="This node's IPv6 BGP address, as --ip; unset leaves the Node's IPv6 address as"
        " it is",
    )] = None,
    ip_autodetection_method: Annotated[str, typer.Option(
        envvar="IP_AUTODETECTION_METHOD", help="first-found, interface=REGEX,..., skip-interface=REGEX,...,"
        " cidr=CIDR,..., can-reach=ADDRESS or kubernetes-internal-ip (the Kubernetes Node's"
        " InternalIP). As in Calico: the links are looked at from the last made to the first, a"
        " REGEX matches anywhere in a link's name (anchor it with ^ and $), and skip-interface"
        " skips first-found's links (docker*, veth*, cali*, pcl*, ...) as well")] = "first-found",
    ip6_autodetection_method: Annotated[str, typer.Option(
        envvar="IP6_AUTODETECTION_METHOD", help="As --ip-autodetection-method, for --ip6")] = "first-found",
    autodetect_poll_interval: Annotated[str, typer.Option(
        envvar="AUTODETECT_POLL_INTERVAL",
        help="How often an autodetected address (--ip or --ip6 autodetect; an empty --ip while"
        " the Node has no IPv4 address) is detected again, a change written to the Node, as"
        " calico-node's monitor-addresses: a duration such as 60s or 1m30s, above 0"
        )] = address_monitor.DEFAULT_POLL_INTERVAL,
    as_number: Annotated[Optional[int], typer.Option(
        "--as", envvar="AS", min=1, max=4294967295,
        help="This node's AS number (default: BGPConfiguration's asNumber)")] = None,
    router_id: Annotated[Optional[str], typer.Option(
        "--router-id", envvar="PERCALE_ROUTER_ID",
        help="BGP router ID, as Calico's CALICO_ROUTER_ID: unset uses the node's IPv4 address;"
        " 'hash' derives one from the node name (for IPv6-only nodes); else an IPv4 address")] = None,
    policy_reconcile_seconds: Annotated[float, typer.Option(
        envvar="PERCALE_POLICY_RECONCILE_SECONDS", min=0.1,
        help="How often the policy table in the kernel is compared with what percale wrote "
        "(and written whole again when someone changed it)")] = 30.0,
    pod_routes_reconcile_seconds: Annotated[float, typer.Option(
        envvar="PERCALE_POD_ROUTES_RECONCILE_SECONDS", min=0.1,
        help="How often the pods' host routes (protocol 201) are compared with this node's "
        "WorkloadEndpoints: a missing one is put back, one no endpoint wants is removed "
        "(felix's RouteRefreshInterval)")] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the percale node agent (CNI server, BGP, VXLAN, natOutgoing, network policy, status)
    until SIGTERM."""
    if not isinstance(logging.getLevelName(log_level.upper()), int):
        typer.echo(f"percale-node: --log-level {log_level!r}: use debug, info, warning or error", err=True)
        raise typer.Exit(1)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # `kill -QUIT <pid>` prints every thread's stack to stderr and the agent carries on, as a Go
    # program (calico-node) prints its goroutines: for an agent that seems stuck.
    faulthandler.register(signal.SIGQUIT, all_threads=True)
    settings = datastore_settings(config, etcd_endpoints, etcd_ca_cert_file, etcd_cert_file,
                                  etcd_key_file, datastore_type, kubeconfig)
    try:
        backend = {"bird": "bgp"}.get(networking_backend, networking_backend)
        if backend not in ("bgp", "vxlan", "none"):
            raise registration.RegistrationError(
                f"--networking-backend: {networking_backend!r} is not bgp, vxlan or none")
        try:
            re.compile(mtu_iface_pattern)
        except re.error as err:
            raise registration.RegistrationError(
                f"--mtu-iface-pattern: {mtu_iface_pattern!r} is not a regular expression: {err}") from None
        if router_id not in (None, "", "hash"):
            try:
                given_id = ipaddress.IPv4Address(router_id)
            except ValueError:
                raise registration.RegistrationError(
                    f"--router-id: {router_id!r} is neither 'hash' nor an IPv4 address") from None
            if not int(given_id):
                # RFC 6286 §2.1: a non-zero four-octet number; peers refuse an OPEN carrying 0.
                raise registration.RegistrationError(
                    f"--router-id: {router_id!r}: a BGP router ID must not be 0 (RFC 6286)")
        if mtu:  # 0: detected, and checked then
            check_host_mtu(mtu, "--mtu (PERCALE_MTU)")
        try:
            health_at = listen_address(health_listen) if health_listen else None
        except ValueError as err:
            raise registration.RegistrationError(
                f"--health-listen (PERCALE_HEALTH_LISTEN) {health_listen!r}: {err}") from None
        # (setting, its value, what names the socket, the socket's path)
        sockets = [("--cni-socket (PERCALE_CNI_SOCKET)", cni_socket, "the path", cni_socket),
                   ("--status-socket (PERCALE_STATUS_SOCKET)", status_socket, "the path", status_socket)]
        if backend == "bgp":
            # ExaBGP's helper connects back to the agent on a socket in that directory.
            exabgp_socket = str(ExaBGP(bgp_dir, on_event=lambda event: None).socket_path)
            sockets.append(("--bgp-dir (PERCALE_BGP_DIR)", str(bgp_dir),
                            f"ExaBGP's socket there, {exabgp_socket!r},", exabgp_socket))
        for setting, value, subject, path in sockets:
            if problem := socket_path_problem(path):
                raise registration.RegistrationError(f"{setting} {value!r}: {subject} {problem}")
        node = resolve_node_name(node_name)
        addresses = (registration.resolve(4, ip, ip_autodetection_method),
                     registration.resolve(6, ip6, ip6_autodetection_method), as_number)
        warn_if_not_here(("--ip", ip, addresses[0]), ("--ip6", ip6, addresses[1]))
        poll_seconds = address_monitor.poll_seconds(autodetect_poll_interval)
        options = Options(node, cni_socket, status_socket, mtu, mtu_iface_pattern, mtu_file, backend,
                          bgp_dir, secrets_dir, health_at, router_id or None,
                          policy_reconcile_seconds, pod_routes_reconcile_seconds,
                          detected=address_monitor.detected(ip, ip6, ip_autodetection_method,
                                                            ip6_autodetection_method),
                          autodetect_poll_seconds=poll_seconds)
        asyncio.run(run(options, settings, addresses))
    except (ConfigError, DatastoreError, OSError, registration.RegistrationError, MTUTooSmall,
            InvalidResource, AgentFailed, AgentRunning) as err:
        typer.echo(f"percale-node: {err}", err=True)
        raise typer.Exit(1) from None


def entry() -> None:
    app()
