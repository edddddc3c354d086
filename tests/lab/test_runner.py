"""The lab runner's promises, on small topologies of plain processes (no percale): what `up`
makes `down` removes, also after `up` failed or was killed halfway; refusals are one line
naming the node and the step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from percale.lab.runner import open_lab

pytestmark = pytest.mark.lab

PERCALECTL = str(Path(sys.executable).parent / "percalectl")


def namespaces(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in listed.splitlines() if line.startswith(prefix))


def write(tmp_path: Path, name: str, *, fail_exec: bool = False, slow: bool = False) -> Path:
    nodes = {
        "a": {"kind": "linux", "cmd": "sleep 600", "exec": ["ip addr add 10.1.0.1/24 dev eth1"]},
        "b": {"kind": "linux", "cmd": "sleep 600",
              "exec": ["ip addr add 10.1.0.2/24 dev eth1"] + (["false"] if fail_exec else [])},
        "c": {"kind": "linux", "cmd": "sleep 600",
              "healthcheck": {"test": "sleep 30" if slow else "true", "timeout": 60}},
    }
    doc = {"name": name, "mgmt": {"ipv4-subnet": "172.20.99.0/24"},
           "topology": {"nodes": nodes, "links": [{"endpoints": ["a:eth1", "b:eth1"]}]}}
    path = tmp_path / f"{name}.clab.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def gone(pid: int) -> bool:
    """Ended: no such process, or only its exit status is left for init to collect."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def lab_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PERCALECTL, "lab", *args], capture_output=True, text=True, timeout=120)


def test_up_down_and_refusals(tmp_path):
    name = f"rt{uuid.uuid4().hex[:6]}"
    path = write(tmp_path, name)
    try:
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 0, up.stderr
        assert len(namespaces(f"clab-{name}-")) == 4  # a, b, c and the management network
        lab = open_lab(path)
        ping = lab.exec("a", ["ping", "-c", "1", "-W", "2", "10.1.0.2"], capture=True)
        assert ping.returncode == 0, ping.stdout
        # The management network: every node reaches every other over eth0.
        assert lab.exec("a", ["ping", "-c", "1", "-W", "2", "172.20.99.3"], capture=True).returncode == 0
        assert {row["name"]: row["state"] for row in lab.status()} == {
            "a": "running", "b": "running", "c": "running"}

        again = lab_cli("up", "-t", str(path))
        assert again.returncode == 1
        assert again.stderr.strip() == (f"Error: lab '{name}' is already up (percalectl lab down -t "
                                        f"{path} first)")
        missing = lab_cli("exec", "-t", str(path), "zz", "true")
        assert missing.returncode == 1 and "has no node 'zz'" in missing.stderr
        no_pods = lab_cli("pod", "add", "-t", str(path), "a", "p1")
        assert no_pods.returncode == 1 and "node a is not a percale node" in no_pods.stderr
        assert lab_cli("exec", "-t", str(path), "b", "sh", "-c", "exit 7").returncode == 7

        pids = [pid for row in lab.status() for pid in row["pids"]]
        down = lab_cli("down", "-t", str(path))
        assert down.returncode == 0 and "removed 4 namespaces" in down.stdout
        assert namespaces(f"clab-{name}-") == []
        assert all(gone(pid) for pid in pids)
    finally:
        open_lab(path).down()


def test_a_failed_exec_removes_everything_up_made(tmp_path):
    name = f"rt{uuid.uuid4().hex[:6]}"
    path = write(tmp_path, name, fail_exec=True)
    try:
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 1
        assert "Error: node b: exec 'false' failed" in up.stderr
        assert "Traceback" not in up.stderr
        assert namespaces(f"clab-{name}-") == []
        assert not open_lab(path).dir.exists()
    finally:
        open_lab(path).down()


def test_down_cleans_up_after_up_was_killed_halfway(tmp_path):
    name = f"rt{uuid.uuid4().hex[:6]}"
    path = write(tmp_path, name, slow=True)
    up = subprocess.Popen([PERCALECTL, "lab", "up", "-t", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        lab = open_lab(path)
        # Killed while c's healthcheck is still running: a and b started, c's process too.
        deadline = time.monotonic() + 60
        while not (lab.state_file.exists() and len(lab.state().get("processes", [])) >= 3):
            assert time.monotonic() < deadline, up.stdout.read() if up.poll() is not None else "slow"
            time.sleep(0.1)
        os.kill(up.pid, signal.SIGKILL)
        up.wait()
        pids = [p["pid"] for p in lab.state()["processes"]]
        assert namespaces(f"clab-{name}-")
        down = lab_cli("down", "-t", str(path))
        assert down.returncode == 0, down.stderr
        assert namespaces(f"clab-{name}-") == []
        assert all(gone(pid) for pid in pids)
        assert not lab.dir.exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        open_lab(path).down()
