"""Small BGP labs for interop tests: namespaces joined by veth pairs, real peers (GoBGP, BIRD)
started inside them and stopped by PID, everything removed by name afterwards.

Two shapes:
  * `Lab`: two bare namespaces, `a` (percale's speaker, driven by the test) and `b` (the peer);
  * `Router`: one namespace with a real router in it and a bridge that percale nodes (CNINode,
    each in its own namespace) join with a veth pair, so several nodes and the router share one
    L2 segment, as nodes under a top-of-rack switch do.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.processes import stop_process


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def resource(kind: str, name: str, spec: dict, **meta) -> object:
    """A percale resource, parsed as the datastore stores it."""
    from percale.api import parse
    return parse({"apiVersion": "percale.io/v1", "kind": kind,
                  "metadata": {"name": name, **meta}, "spec": spec})


@dataclass
class _Processes:
    """Processes started inside namespaces, logging into `workdir`, stopped by PID."""

    workdir: Path = field(default_factory=lambda: Path(f"/tmp/percale-bgp-{uuid.uuid4().hex[:8]}"))
    processes: list[subprocess.Popen] = field(default_factory=list)

    def exec(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *args, check=check)

    def start(self, ns: str, *args: str, log: str) -> subprocess.Popen:
        out = open(self.workdir / log, "a")
        process = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out,
                                   stderr=subprocess.STDOUT, cwd=self.workdir)
        self.processes.append(process)
        return process

    def stop_processes(self) -> None:
        for process in self.processes:
            stop_process(process)

    def _gobgp(self, ns: str, conf: str) -> None:
        (self.workdir / "gobgpd.toml").write_text(conf)
        self.start(ns, "gobgpd", "-f", str(self.workdir / "gobgpd.toml"), "-p",
                   "--api-hosts", "127.0.0.1:50051", "--pprof-disable", log="gobgpd.log")
        wait_for(lambda: self.exec(ns, "gobgp", "neighbor", check=False).returncode == 0, 15)

    def _gobgp_rib(self, ns: str) -> dict:
        out = self.exec(ns, "gobgp", "global", "rib", "-a", "ipv4", "-j", check=False).stdout
        try:
            return json.loads(out or "{}")
        except json.JSONDecodeError:
            return {}  # gobgpd is starting or stopping


def gobgp_config(asn: int, router_id: str, local_address: str,
                 neighbors: list[tuple[str, int]], *, restart_time: int = 120,
                 ttl_min: int | None = None, passive: bool = False) -> str:
    """gobgpd.toml: one neighbour per (address, AS), graceful restart on (helper mode).
    `ttl_min`: GTSM on every neighbour (GoBGP sends with TTL 255 and drops what arrives below
    ttl-min). `passive`: GoBGP never connects out, so a session is the other side's doing."""
    conf = [f'[global.config]\n  as = {asn}\n  router-id = "{router_id}"\n'
            f'  local-address-list = ["{local_address}"]\n']
    for address, peer_as in neighbors:
        conf.append(
            f'[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "{address}"\n'
            f'    peer-as = {peer_as}\n  [neighbors.timers.config]\n    hold-time = 30\n'
            '    connect-retry = 1\n'
            '  [neighbors.graceful-restart.config]\n    enabled = true\n'
            f'    restart-time = {restart_time}\n'
            '  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n'
            '      afi-safi-name = "ipv4-unicast"\n'
            '    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n')
        if ttl_min is not None:
            conf.append(f'  [neighbors.ttl-security.config]\n    enabled = true\n    ttl-min = {ttl_min}\n')
        if passive:
            conf.append('  [neighbors.transport.config]\n    passive-mode = true\n')
    return "".join(conf)


@dataclass
class Lab(_Processes):
    """Two namespaces, `a` (percale) and `b` (the peer), on 10.99.0.0/24 and fd00:99::/64."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    @property
    def a(self) -> str:
        return f"bga{self.tag}"

    @property
    def b(self) -> str:
        return f"bgb{self.tag}"

    def up(self) -> Lab:
        self.workdir.mkdir(parents=True)
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", f"va{self.tag}", "netns", self.a, "type", "veth",
           "peer", "name", f"vb{self.tag}", "netns", self.b)
        for ns, dev, n in ((self.a, f"va{self.tag}", 1), (self.b, f"vb{self.tag}", 3)):
            self.exec(ns, "ip", "addr", "add", f"10.99.0.{n}/24", "dev", dev)
            self.exec(ns, "ip", "addr", "add", f"fd00:99::{n}/64", "dev", dev, "nodad")
            self.exec(ns, "ip", "link", "set", dev, "up")
        return self

    def gobgp(self, neighbors: list[tuple[str, int]], asn: int = 64512, router_id: str = "10.99.0.3") -> None:
        self._gobgp(self.b, gobgp_config(asn, router_id, "10.99.0.3", neighbors))

    def gobgp_rib(self) -> dict:
        return self._gobgp_rib(self.b)

    def down(self) -> None:
        self.stop_processes()
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)
        sh("rm", "-rf", str(self.workdir), check=False)


# ---------------------------------------------------------------------------------------------
# A router namespace that percale nodes join


@dataclass(frozen=True)
class BirdPeer:
    """One `protocol bgp` of a BIRD config. `export`: "all", "none", or "static" (the routes of
    the config's static protocol only)."""

    name: str
    local: str
    local_as: int
    neighbor: str
    neighbor_as: int
    rr_client: bool = False
    password: str | None = None
    graceful_restart: bool = True
    export: str = "all"
    # Trace the session to BIRD's log (`debug all`: messages sent and received, routes added and
    # removed), which Router.bird_log() reads.
    debug: bool = False
    # The session's address family (4 or 6): its `ipv4` or `ipv6` channel; "static" exports
    # the static routes of that family.
    family: int = 4
    # eBGP to a neighbour that is not on a connected network (BIRD's `multihop`).
    multihop: bool = False


def bird_config(router_id: str, peers: list[BirdPeer], static: list[str] = (), *,
                precise_since: bool = False) -> str:
    """A BIRD 2 configuration: the peers, and `static` prefixes (IPv4 or IPv6) originated as
    blackholes. `precise_since`: `show protocols` gives each protocol's last state change to the
    microsecond, date included, in one word (Router.bird_since), so a session that went down and
    came back within the same second still shows a new time.

    iBGP sessions take `direct` + `gateway direct` (reference/exabgp.md §2.1): BIRD as a route
    reflector then needs no IGP to resolve next hops, and reflects them unchanged. Timers are
    short so a session comes back within a second or two in a test."""
    lines = [f"router id {router_id};", "log stderr all;", "protocol device { scan time 1; }"]
    if precise_since:
        lines.insert(1, 'timeformat protocol "%FT%T.%6f";')
    static4 = [p for p in static if ipaddress.ip_network(p).version == 4]
    static6 = [p for p in static if ipaddress.ip_network(p).version == 6]
    for name, channel, prefixes in (("originated", "ipv4", static4), ("originated6", "ipv6", static6)):
        if prefixes:
            lines.append(f"protocol static {name} {{")
            lines.append(f"    {channel};")
            lines += [f"    route {prefix} blackhole;" for prefix in prefixes]
            lines.append("}")
    for p in peers:
        ibgp = p.local_as == p.neighbor_as
        export = {"all": "all", "none": "none",
                  "static": 'where proto = "originated"' if p.family == 4
                  else 'where proto = "originated6"'}[p.export]
        lines += [
            f"protocol bgp {p.name} {{",
            f"    local {p.local} as {p.local_as};",
            f"    neighbor {p.neighbor} as {p.neighbor_as};",
            "    hold time 30;",
            "    connect delay time 1;",
            "    connect retry time 1;",
            "    error wait time 1, 5;",
            f"    graceful restart {'on' if p.graceful_restart else 'off'};",
        ]
        if ibgp:
            lines.append("    direct;")
        if p.multihop:
            lines.append("    multihop;")
        if p.rr_client:
            lines.append("    rr client;")
        if p.debug:
            lines.append("    debug all;")
        if p.password is not None:
            lines.append(f'    password "{p.password}";')
        channel = "ipv4" if p.family == 4 else "ipv6"
        lines.append(f"    {channel} {{ {'gateway direct; ' if ibgp else ''}import all; export {export}; }};")
        lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class BirdRoute:
    prefix: str
    via: str | None  # the gateway; None for a blackhole
    protocol: str  # the BIRD protocol it came from


# "10.244.9.0/26   unicast [gob 14:53:33.013] * (100) [?]"; further routes to the same prefix
# leave the prefix out.
_BIRD_ROUTE = re.compile(r"^(?:(?P<prefix>[0-9a-f.:]+/\d+)|\s+)\s*\w+\s+\[(?P<proto>\S+)\s[^\]]*\]\s*(?P<best>\*)?")


@dataclass
class Router(_Processes):
    """A namespace with a bridge `br0` holding `address`: the router's side of an L2 segment
    that nodes join with `attach`. Runs BIRD (`bird`) or GoBGP (`gobgp`)."""

    address: str = "10.99.0.254/24"
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    ports: int = 0
    bird_process: subprocess.Popen | None = None

    @property
    def ns(self) -> str:
        return f"rt{self.tag}"

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def up(self) -> Router:
        self.workdir.mkdir(parents=True)
        sh("ip", "netns", "add", self.ns)
        self.exec(self.ns, "ip", "link", "set", "lo", "up")
        self.exec(self.ns, "ip", "link", "add", "br0", "type", "bridge")
        self.exec(self.ns, "ip", "addr", "add", self.address, "dev", "br0")
        self.exec(self.ns, "ip", "link", "set", "br0", "up")
        return self

    def join(self, other: Router) -> None:
        """Put `other` (started with `up`, its address in this router's subnet) on this router's
        segment: a veth pair whose ends are ports of both bridges, so several routers (each its
        own GoBGP or BIRD, each in its own namespace) and the nodes share one L2 segment."""
        port = f"port{self.ports}"
        self.ports += 1
        sh("ip", "link", "add", port, "netns", self.ns, "type", "veth", "peer", "name", "uplink",
           "netns", other.ns)
        self.exec(self.ns, "ip", "link", "set", port, "master", "br0")
        self.exec(other.ns, "ip", "link", "set", "uplink", "master", "br0")
        self.exec(self.ns, "ip", "link", "set", port, "up")
        self.exec(other.ns, "ip", "link", "set", "uplink", "up")

    def attach(self, netns: str, address: str, ifname: str = "fabric") -> None:
        """Join namespace `netns` (a CNINode's, say) to the segment: a veth pair, `ifname` with
        `address` on the node's side, the other end a port of br0."""
        port = f"port{self.ports}"
        self.ports += 1
        sh("ip", "link", "add", ifname, "netns", netns, "type", "veth", "peer", "name", port,
           "netns", self.ns)
        self.exec(netns, "ip", "addr", "add", address, "dev", ifname)
        self.exec(netns, "ip", "link", "set", ifname, "up")
        self.exec(self.ns, "ip", "link", "set", port, "master", "br0")
        self.exec(self.ns, "ip", "link", "set", port, "up")

    # -- BIRD ------------------------------------------------------------------------------

    @property
    def bird_socket(self) -> str:
        return str(self.workdir / "bird.ctl")

    def bird(self, config: str) -> None:
        """Start BIRD 2 with this configuration (in the foreground, so it is ours to stop)."""
        (self.workdir / "bird.conf").write_text(config)
        self.bird_process = self.start(
            self.ns, "bird", "-f", "-c", str(self.workdir / "bird.conf"), "-s", self.bird_socket,
            "-P", str(self.workdir / "bird.pid"), log="bird.log")
        if not wait_for(lambda: self.birdc_ok("show status"), 10):
            raise RuntimeError("BIRD did not start: " + (self.workdir / "bird.log").read_text())

    def bird_reconfigure(self, config: str) -> None:
        (self.workdir / "bird.conf").write_text(config)
        out = self.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise RuntimeError(f"birdc configure: {out}")

    def bird_log(self) -> str:
        return (self.workdir / "bird.log").read_text(errors="replace")

    def birdc(self, command: str, check: bool = True) -> str:
        return sh("birdc", "-s", self.bird_socket, *command.split(), check=check).stdout

    def birdc_ok(self, command: str) -> bool:
        return sh("birdc", "-s", self.bird_socket, *command.split(), check=False).returncode == 0

    def bird_state(self, protocol: str) -> str:
        """A protocol's BGP state as `show protocols` gives it (Established, Active, Connect,
        OpenSent, ...), '' when BIRD does not answer."""
        for line in self.birdc(f"show protocols {protocol}", check=False).splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0] == protocol:
                return fields[5] if len(fields) > 5 else fields[3]
        return ""

    def bird_established(self, protocol: str) -> bool:
        return self.bird_state(protocol) == "Established"

    def bird_since(self, protocol: str) -> str:
        """When the protocol last changed state (`show protocols`' Since column), '' when BIRD
        does not answer; see bird_config's precise_since."""
        for line in self.birdc(f"show protocols {protocol}", check=False).splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0] == protocol:
                return fields[4]
        return ""

    def bird_routes(self, protocol: str | None = None, family: int = 4) -> dict[str, BirdRoute]:
        """BIRD's routes in master4 (master6 for family 6), prefix -> the route it prefers
        (`show route`)."""
        args = ["show", "route"] + (["protocol", protocol] if protocol else [])
        if family == 6:
            args += ["table", "master6"]
        out = sh("birdc", "-s", self.bird_socket, *args, check=False).stdout
        routes: dict[str, BirdRoute] = {}
        prefix, current = None, None
        for line in out.splitlines():
            first = _BIRD_ROUTE.match(line)
            if first:
                prefix = first.group("prefix") or prefix
                current = BirdRoute(prefix, None, first.group("proto"))
                if prefix not in routes or first.group("best"):
                    routes[prefix] = current
            elif current is not None and (via := re.match(r"^\s+via\s+(\S+)", line)):
                current.via = via.group(1)
        return routes

    # -- GoBGP -----------------------------------------------------------------------------

    def gobgp(self, neighbors: list[tuple[str, int]], asn: int = 64512,
              router_id: str | None = None, *, restart_time: int = 120,
              ttl_min: int | None = None, passive: bool = False) -> None:
        self._gobgp(self.ns, gobgp_config(asn, router_id or self.ip, self.ip, neighbors,
                                          restart_time=restart_time, ttl_min=ttl_min,
                                          passive=passive))

    def gobgp_rib(self) -> dict:
        """GoBGP's global RIB, prefix -> paths (each with "stale" when graceful restart keeps it)."""
        return self._gobgp_rib(self.ns)

    def gobgp_neighbor(self, neighbor: str) -> dict:
        """`gobgp neighbor <address> -j`: GoBGP's view of one session ({} when it does not
        answer)."""
        out = self.exec(self.ns, "gobgp", "neighbor", neighbor, "-j", check=False).stdout
        try:
            found = json.loads(out or "{}")
        except json.JSONDecodeError:
            return {}
        return found if isinstance(found, dict) else {}

    def gobgp_established(self, neighbor: str) -> bool:
        out = self.exec(self.ns, "gobgp", "neighbor", neighbor, "-j", check=False).stdout
        try:
            return json.loads(out)["state"]["session_state"] in (6, "established", "ESTABLISHED")
        except (json.JSONDecodeError, KeyError, TypeError):
            return False

    def down(self) -> None:
        self.stop_processes()
        sh("ip", "netns", "del", self.ns, check=False)
        sh("rm", "-rf", str(self.workdir), check=False)


# ---------------------------------------------------------------------------------------------
# Percale nodes (tests/helpers/cni_node.py) on a router's segment

POOL = "10.244.0.0/16"


def setup_store(etcd, *resources, pool: str = POOL) -> None:
    """The IP pool, then `resources` (Nodes, BGPPeers, ...), written to the test's etcd."""
    from tests.helpers.ipam_world import add_pool
    from tests.helpers.store import with_store

    from tests.helpers.store import put_node

    async def work(store):
        await add_pool(store, "pods", pool)
        for r in resources:
            await (put_node(store, r) if r.kind == "Node" else store.create(r))

    with_store(etcd.endpoint, work)


def block_of(ip, size: int = 26) -> str:
    """The IPAM block holding a pod's address."""
    return str(ipaddress.ip_interface(f"{ip}/{size}").network)


def far_block(*node_names: str, pool: str = POOL) -> str:
    """A block of the pool that none of these nodes claims for its first pods, for a route a
    router originates inside the pool: the last block of the first node's walk of the pool
    (ipam/pools.py), checked against every node's first block."""
    return far_blocks(1, *node_names, pool=pool)[0]


def far_blocks(count: int, *node_names: str, pool: str = POOL) -> list[str]:
    """`count` such blocks, from the far end of the first node's walk of the pool."""
    from percale.ipam.pools import candidate_blocks
    ippool = resource("IPPool", "pods", {"cidr": pool})
    firsts = {str(next(candidate_blocks(ippool, name))) for name in node_names}
    found = [str(b) for b in reversed(list(candidate_blocks(ippool, node_names[0])))
             if str(b) not in firsts][:count]
    if len(found) < count:
        raise ValueError("no free block")
    return found


def diagnose(router: Router, *nodes) -> str:
    """What to print when a lab test fails: the router's view and log, each node's routes and
    agent log."""
    parts = []
    if router.bird_process is not None:
        parts += [router.birdc("show protocols all", check=False),
                  router.birdc("show route", check=False)]
    for log in ("gobgpd.log", "bird.log"):
        if (router.workdir / log).exists():
            parts.append((router.workdir / log).read_text(errors="replace")[-3000:])
    for node in nodes:
        parts.append(node.exec("ip", "route", check=False).stdout)
        parts.append((node.workdir / "agent.log").read_text(errors="replace")[-3000:])
    return "\n".join(parts)


def wait_for(condition, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False
