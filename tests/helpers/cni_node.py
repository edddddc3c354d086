"""A node for CNI tests: a network namespace with an uplink and a default route, percale-node
running inside it, and pod namespaces to wire, all removed by name and PID afterwards.

The node namespace stands in for a Kubernetes host, so the tests never touch this machine's own
routes or sysctls; plugins run inside it exactly as a runtime on that host runs them.
"""

from __future__ import annotations

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

    @property
    def netns(self) -> str:
        return self.name

    @property
    def socket(self) -> str:
        return str(self.workdir / "cni.sock")

    @property
    def bin_dir(self) -> Path:
        return self.workdir / "bin"

    def start(self, mtu: int | None = None) -> CNINode:
        self.workdir.mkdir(parents=True)
        sh("ip", "netns", "add", self.name)
        # An uplink with a default route: proxy ARP answers for 169.254.1.1 only when the node
        # has a route to it through another interface, as a real host does.
        # Both ends stay inside the node's namespace (this kernel has no dummy device).
        up, peer = "uplink", "uplink-peer"
        self.exec("ip", "link", "add", up, "type", "veth", "peer", "name", peer)
        for link in ("lo", up, peer):
            self.exec("ip", "link", "set", link, "up")
        self.exec("ip", "addr", "add", "192.0.2.10/24", "dev", up)
        self.exec("ip", "route", "add", "default", "via", "192.0.2.1", "dev", up, "onlink")
        self.install()
        log = open(self.workdir / "agent.log", "w")
        args = ["ip", "netns", "exec", self.name, str(VENV_BIN / "percale-node"),
                "--node-name", self.name, "--cni-socket", self.socket,
                "--etcd-endpoints", self.etcd_endpoint,  # a unix:// endpoint
                "--bgp-dir", str(self.workdir / "bgp")]
        if mtu:
            args += ["--mtu", str(mtu)]
        self.agent = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not Path(self.socket).exists():
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("percale-node did not start: " + (self.workdir / "agent.log").read_text())
            time.sleep(0.05)
        return self

    def install(self) -> None:
        """The plugins as `percalectl cni install` writes them."""
        done = subprocess.run(
            [str(VENV_BIN / "percalectl"), "cni", "install", "--bin-dir", str(self.bin_dir),
             "--conf-dir", str(self.workdir / "net.d"), "--node-name", self.name,
             "--agent-socket", self.socket], capture_output=True, text=True)
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
        for pod in self.pods:
            sh("ip", "netns", "del", pod, check=False)
        sh("ip", "netns", "del", self.name, check=False)
        subprocess.run(["rm", "-rf", str(self.workdir)], check=False)


def netconf(node: CNINode, *, version: str = "1.0.0", **extra) -> dict:
    """The percale entry of 10-percale.conflist, as a runtime passes it to the plugin."""
    return {"cniVersion": version, "name": "k8s-pod-network", "type": "percale",
            "nodename": node.name, "agent_socket": node.socket, "mtu": 0,
            "ipam": {"type": "percale-ipam"}, **extra}
