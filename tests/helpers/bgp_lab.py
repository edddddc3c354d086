"""Small BGP labs for interop tests: namespaces joined by veth pairs, real peers (GoBGP, BIRD)
started inside them and stopped by PID, everything removed by name afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@dataclass
class Lab:
    """Two namespaces, `a` (percale) and `b` (the peer), on 10.99.0.0/24 and fd00:99::/64."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    workdir: Path = field(default_factory=lambda: Path(f"/tmp/percale-bgp-{uuid.uuid4().hex[:8]}"))
    processes: list[subprocess.Popen] = field(default_factory=list)

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

    def exec(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *args, check=check)

    def start(self, ns: str, *args: str, log: str) -> subprocess.Popen:
        out = open(self.workdir / log, "w")
        process = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out,
                                   stderr=subprocess.STDOUT, cwd=self.workdir)
        self.processes.append(process)
        return process

    def gobgp(self, neighbors: list[tuple[str, int]], asn: int = 64512, router_id: str = "10.99.0.3") -> None:
        conf = [f'[global.config]\n  as = {asn}\n  router-id = "{router_id}"\n'
                f'  local-address-list = ["10.99.0.3"]\n']
        for address, peer_as in neighbors:
            conf.append(
                f'[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "{address}"\n'
                f'    peer-as = {peer_as}\n  [neighbors.timers.config]\n    hold-time = 30\n'
                '  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 120\n'
                '  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n'
                '      afi-safi-name = "ipv4-unicast"\n'
                '    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n')
        (self.workdir / "gobgpd.toml").write_text("".join(conf))
        self.start(self.b, "gobgpd", "-f", str(self.workdir / "gobgpd.toml"), "-p",
                   "--api-hosts", "127.0.0.1:50051", "--pprof-disable", log="gobgpd.log")
        wait_for(lambda: self.exec(self.b, "gobgp", "neighbor", check=False).returncode == 0, 15)

    def gobgp_rib(self) -> dict:
        out = self.exec(self.b, "gobgp", "global", "rib", "-a", "ipv4", "-j").stdout
        return json.loads(out or "{}")

    def down(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)
        sh("rm", "-rf", str(self.workdir), check=False)


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
