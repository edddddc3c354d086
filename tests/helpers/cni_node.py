"""A node for CNI tests: a network namespace with an uplink and a default route, percale-node
running inside it, and pod namespaces to wire, all removed by name and PID afterwards.

The node namespace stands in for a Kubernetes host, so the tests never touch this machine's own
routes or sysctls; plugins run inside it exactly as a runtime on that host runs them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@dataclass
class PluginResult:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)


@dataclass
class CNINode:
    etcd_endpoint: str
    name: str = field(default_factory=lambda: f"pn{uuid.uuid4().hex[:6]}")
    pods: list[str] = field(default_factory=list)
    agent: subprocess.Popen | None = None
    workdir: Path = field(default_factory=lambda: Path(f"/tmp/percale-cni-{uuid.uuid4().hex[:8]}"))
    # More percale-node options, e.g. ["--secrets-dir", ...]
    agent_args: list[str] = field(default_factory=list)
    mtu: int | None = None
    # How to start the agent (bench/scale.py runs an older percale's this way).
    agent_command: list[str] = field(default_factory=lambda: [str(VENV_BIN / "percale-node")])
    # The Kubernetes datastore instead of etcd: the control plane (tests/helpers/kube_apiserver.py)
    # and the user the agent authenticates as (a client certificate; see its kubeconfig()): by
    # default percale-node:<name> in group percale:nodes, which manifests/rbac.yaml binds to the
    # percale-node ClusterRole -- the agent runs with least privilege, not as system:masters.
    kube: object | None = None
    kube_user: tuple[str, tuple[str, ...]] | None = None
    relay: subprocess.Popen | None = None
    # Which CNI shim `percalectl cni install` puts in bin/: auto (the compiled one), compiled, python.
    shim: str = "auto"
    # The agent's --ip unless agent_args gives one: none, so the Node keeps what the test writes
    # on it (left unset, the agent registers an address it detects, as calico-node does, and a
    # test writing its Node after the start finds it there). None: --ip left unset.
    ip: str | None = "none"

    @property
    def netns(self) -> str:
        return self.name

    @property
    def socket(self) -> str:
        return str(self.workdir / "cni.sock")

    @property
    def status_socket(self) -> str:
        """`percalectl node status --status-socket` for this node (not the host's default)."""
        return str(self.workdir / "status.sock")

    @property
    def bin_dir(self) -> Path:
        return self.workdir / "bin"

    def start(self, mtu: int | None = None) -> CNINode:
        self.workdir.mkdir(parents=True)
        sh("ip", "netns", "add", self.name)
        # An uplink with a default route: proxy ARP answers for 169.254.1.1 only when the node
        # has a route to it through another interface, as a real host does.
        # Both ends stay inside the node's namespace (this kernel has no dummy device).
        up, peer = "eth0", "uplink-peer"  # eth0: the name felix's MTU pattern looks for
        self.exec("ip", "link", "add", up, "type", "veth", "peer", "name", peer)
        for link in ("lo", up, peer):
            self.exec("ip", "link", "set", link, "up")
        self.exec("ip", "addr", "add", "192.0.2.10/24", "dev", up)
        self.exec("ip", "route", "add", "default", "via", "192.0.2.1", "dev", up, "onlink")
        try:
            if self.kube is not None:
                self._reach_apiserver()
            self.install()
            if mtu:
                self.mtu = mtu
            self.start_agent()
        except BaseException:
            # A test whose node does not start never reaches its own clean-up: the agent, its
            # namespace and its directory would outlive it.
            self.stop()
            raise
        return self

    KUBE_PORT = 6443

    def _reach_apiserver(self) -> None:
        """The apiserver listens on the host's loopback: relay 127.0.0.1:6443 inside the node to
        it, register the node's Kubernetes Node as a kubelet would, and write the agent's
        kubeconfig."""
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.netns_relay", self.name, str(self.KUBE_PORT),
             "127.0.0.1", str(self.kube.port)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.relay.stdout.readline().strip() == "ready"
        user, groups = self.kube_user or (f"percale-node:{self.name}", ("percale:nodes",))
        self.kubeconfig = self.kube.kubeconfig(user, groups=groups,
                                               server=f"https://127.0.0.1:{self.KUBE_PORT}")
        self.kube.node(self.name, "192.0.2.10")

    @property
    def datastore_args(self) -> list[str]:
        if self.kube is not None:
            return ["--datastore-type", "kubernetes", "--kubeconfig", self.kubeconfig]
        return ["--etcd-endpoints", self.etcd_endpoint]  # a unix:// endpoint

    def start_agent(self) -> None:
        """Start percale-node in the node's namespace and wait until it serves CNI. Its output
        goes to <workdir>/agent.log, appended across restarts."""
        log = open(self.workdir / "agent.log", "a")
        args = ["ip", "netns", "exec", self.name, *self.agent_command,
                "--node-name", self.name, "--cni-socket", self.socket, *self.datastore_args,
                "--bgp-dir", str(self.workdir / "bgp"), "--status-socket", self.status_socket,
                *self.agent_args]
        if self.ip is not None and not any(a == "--ip" or a.startswith("--ip=")
                                           for a in self.agent_args):
            args += ["--ip", self.ip]
        if self.mtu:
            args += ["--mtu", str(self.mtu)]
        # A socket left by an agent that was killed would look like a live one.
        Path(self.socket).unlink(missing_ok=True)
        self.agent = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not Path(self.socket).exists():
            if self.agent.poll() is not None or time.monotonic() > deadline:
                self.stop_agent()  # one that is still trying must not outlive the test
                raise RuntimeError("percale-node did not start: " + (self.workdir / "agent.log").read_text())
            time.sleep(0.05)

    def restart_agent(self) -> None:
        """SIGTERM the agent (as a node's init system stops it), then start it again."""
        self.stop_agent()
        self.start_agent()

    def agent_children(self) -> list[tuple[int, str]]:
        """The agent's child processes: (pid, command line)."""
        if self.agent is None or self.agent.poll() is not None:
            return []
        children = []
        for task in Path(f"/proc/{self.agent.pid}/task").iterdir():
            try:
                pids = (task / "children").read_text().split()
            except FileNotFoundError:
                continue  # that thread ended meanwhile
            for pid in pids:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except FileNotFoundError:
                    continue
                children.append((int(pid), cmdline.decode(errors="replace").strip()))
        return children

    def metric(self, name: str) -> float:
        """A value of the agent's /metrics (127.0.0.1:9099 in the node's namespace); 0 if absent."""
        script = ("import urllib.request;"
                  "print(urllib.request.urlopen('http://127.0.0.1:9099/metrics', timeout=5).read().decode())")
        text = self.exec(sys.executable, "-c", script).stdout
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + " ") or line.startswith(name + "{"))

    def wait_for_view(self, change) -> None:
        """Make a datastore change (`change()`) and wait until the agent's view has applied at
        least one more event: what the agent reads then includes it."""
        before = self.metric("percale_datastore_view_events_total")
        change()
        deadline = time.monotonic() + 10
        while self.metric("percale_datastore_view_events_total") <= before:
            if time.monotonic() > deadline:
                raise AssertionError("the agent's view did not see the change within 10 s")
            time.sleep(0.02)

    def exabgp_pid(self) -> int | None:
        """The ExaBGP the agent runs, if it runs one now."""
        return next((pid for pid, cmd in self.agent_children() if " server " in f"{cmd} "
                     and "exabgp" in cmd), None)

    def install(self) -> None:
        """The plugins as `percalectl cni install` writes them."""
        done = subprocess.run(
            [str(VENV_BIN / "percalectl"), "cni", "install", "--bin-dir", str(self.bin_dir),
             "--conf-dir", str(self.workdir / "net.d"), "--node-name", self.name,
             "--agent-socket", self.socket, "--shim", self.shim], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        # The reference plugins from Debian sit beside ours, as in /opt/cni/bin.
        for plugin in Path("/usr/lib/cni").iterdir():
            target = self.bin_dir / plugin.name
            if not target.exists():
                target.symlink_to(plugin)

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *args, check=check)

    def new_pod_netns(self) -> str:
        name = f"{self.name}p{len(self.pods)}"
        sh("ip", "netns", "add", name)
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        self.pods.append(name)
        return name

    def plugin(self, plugin: str, command: str, config: dict | str, *, container_id: str = "",
               netns: str | None = None, ifname: str = "eth0", args: str = "",
               env: dict | None = None) -> PluginResult:
        """Run a plugin binary as a container runtime does: in the node's namespace, with the
        CNI_* environment and the network configuration on stdin."""
        environ = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/var/run/netns/{netns}" if netns else "", "CNI_IFNAME": ifname,
            "CNI_ARGS": args, "CNI_PATH": str(self.bin_dir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            **(env or {}),
        }
        stdin = config if isinstance(config, str) else json.dumps(config)
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, str(self.bin_dir / plugin)], input=stdin,
            env=environ, capture_output=True, text=True, timeout=120)
        return PluginResult(done.returncode, done.stdout, done.stderr)

    def add_pod(self) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """A pod: a fresh namespace wired by a CNI ADD, as a runtime does. (netns, its address)."""
        netns = self.new_pod_netns()
        if self.kube is not None:
            self.kube.pod("default", f"p-{netns}", node=self.name)
        added = self.plugin("percale", "ADD", netconf(self), container_id=f"c-{netns}", netns=netns,
                            args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{netns}")
        if added.code != 0:
            raise RuntimeError(f"CNI ADD failed: {added.out} {added.err}")
        return netns, ipaddress.ip_interface(added.json["ips"][0]["address"]).ip

    def routes(self, proto: int, family: int = 4) -> dict[str, str | None]:
        """The node's routes of one protocol and family (4 or 6): prefix -> gateway (None
        without one)."""
        out = self.exec("ip", "-j", f"-{family}", "route", "show", "proto", str(proto),
                        check=False).stdout
        try:
            found = json.loads(out or "[]")
        except json.JSONDecodeError:
            return {}
        host = 32 if family == 4 else 128
        return {r["dst"] if "/" in r["dst"] else f"{r['dst']}/{host}": r.get("gateway") for r in found}

    def stop_agent(self) -> None:
        if self.agent and self.agent.poll() is None:
            os.kill(self.agent.pid, signal.SIGTERM)
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.agent.pid, signal.SIGKILL)
                self.agent.wait()

    def stop(self) -> None:
        self.stop_agent()
        # Whatever the agent left running in the namespace (an ExaBGP orphaned by a killed
        # agent would keep it alive).
        for pid in sh("ip", "netns", "pids", self.name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pod in self.pods:
            sh("ip", "netns", "del", pod, check=False)
        sh("ip", "netns", "del", self.name, check=False)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.kill()
            self.relay.wait()
        subprocess.run(["rm", "-rf", str(self.workdir)], check=False)


def exabgp_servers(netns: str) -> list[int]:
    """PIDs of the ExaBGP servers running in a namespace, whoever started them (an agent, or an
    agent that is gone); processes that have ended but are not yet reaped do not count."""
    found = []
    for pid in sh("ip", "netns", "pids", netns, check=False).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        # `exabgp server ...`, or percale's way of running it: `python -P .../exabgp_pace.py server ...`
        if state != "Z" and b"server" in argv and any(
                a.endswith((b"exabgp", b"exabgp_pace.py")) for a in argv):
            found.append(int(pid))
    return found


def netconf(node: CNINode, *, version: str = "1.0.0", **extra) -> dict:
    """The percale entry of 10-percale.conflist, as a runtime passes it to the plugin."""
    return {"cniVersion": version, "name": "k8s-pod-network", "type": "percale",
            "nodename": node.name, "agent_socket": node.socket, "mtu": 0,
            "ipam": {"type": "percale-ipam"}, **extra}


def meshed_pair(etcd_endpoint: str, etcd_unix_endpoint: str, *,
                ipv6_pool: str | None = None, kube=None) -> tuple[CNINode, CNINode]:
    """Two started nodes joined by a veth pair on 10.99.0.0/24 (.1 and .2), each registered as a
    Node with that BGP address, and a pod pool: with the default BGPConfiguration they form a
    node-to-node mesh. With `ipv6_pool` the nodes are dual-stack: fd00:99::1 and ::2/64 on the
    same link as spec.bgp.ipv6Address too (an IPv6 mesh beside the IPv4 one), and that pool is
    created as well. With `kube` (a KubeControlPlane) the nodes keep their state in the Kubernetes
    datastore instead of etcd. The caller stops both nodes."""
    from percale.api import parse
    from tests.helpers.ipam_world import add_pool
    from tests.helpers.store import put_node, with_store

    a, b = CNINode(etcd_unix_endpoint, kube=kube), CNINode(etcd_unix_endpoint, kube=kube)
    try:
        a.start(), b.start()
        sh("ip", "link", "add", "fabric", "netns", a.netns, "type", "veth", "peer", "name", "fabric",
           "netns", b.netns)
        addresses = ((a, "10.99.0.1/24", "fd00:99::1/64"), (b, "10.99.0.2/24", "fd00:99::2/64"))
        for node, address, address6 in addresses:
            node.exec("ip", "addr", "add", address, "dev", "fabric")
            if ipv6_pool:
                # nodad: ExaBGP cannot bind a tentative address while duplicate detection runs.
                node.exec("ip", "addr", "add", address6, "dev", "fabric", "nodad")
            node.exec("ip", "link", "set", "fabric", "up")

        async def register(store):
            await add_pool(store, "pods", "10.244.0.0/16")
            if ipv6_pool:
                await add_pool(store, "pods6", ipv6_pool)
            for node, address, address6 in addresses:
                bgp = {"ipv4Address": address, **({"ipv6Address": address6} if ipv6_pool else {})}
                await put_node(store, parse({
                    "apiVersion": "percale.io/v1", "kind": "Node", "metadata": {"name": node.name},
                    "spec": {"bgp": bgp}}))

        with_store(kube.admin if kube is not None else etcd_endpoint, register)
    except BaseException:
        a.stop()
        b.stop()
        raise
    return a, b
