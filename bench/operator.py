"""percale-operator's figures against a real control plane (kube-apiserver and
kube-controller-manager from tests/helpers/kube_apiserver.py), the operator with its own
identity from manifests/operator.yaml:

  a  `kubectl create` of manifests/installation.yaml -> every rendered object exists
  b  drift: the DaemonSet deleted -> recreated, p50 / max over ROUNDS deletions
  c  the operator's RSS and CPU while idle (nothing changes for IDLE seconds)

    .venv/bin/python bench/operator.py

Time to Ready needs pods that run: bench/operator_lab.py measures it on a lab cluster.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import run_script  # noqa: E402
from tests.helpers.kube_apiserver import ROOT, KubeControlPlane  # noqa: E402

ROUNDS, IDLE = 10, 30.0
OPERATOR = str(Path(sys.executable).parent / "percale-operator")
NS = "percale-system"


def exists(plane, *args: str) -> dict | None:
    done = plane.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def until(check, timeout: float = 60.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if check():
            return time.perf_counter() - start
        time.sleep(0.02)
    raise RuntimeError("timed out")


def process_cpu_and_rss(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return cpu, rss


def run() -> None:
    plane = KubeControlPlane().start(controller_manager=True)
    operator = None
    try:
        plane.kubectl("apply", "-f", str(ROOT / "manifests" / "operator.yaml"))
        identity = plane.kubeconfig("system:serviceaccount:percale-operator:percale-operator")
        log = open(plane.work / "operator.log", "ab")
        operator = subprocess.Popen([OPERATOR], env={**os.environ, "KUBECONFIG": identity},
                                    stdout=log, stderr=subprocess.STDOUT)
        time.sleep(3)  # started and watching
        objects = [("daemonset", "-n", NS, "percale-node"), ("deployment", "-n", NS, "percale-controllers"),
                   ("configmap", "-n", NS, "percale-cni-config"), ("ippool", "default-ipv4-ippool"),
                   ("clusterrole", "percale-node")]
        start = time.perf_counter()
        plane.kubectl("create", "-f", str(ROOT / "manifests" / "installation.yaml"))
        until(lambda: all(exists(plane, *o) for o in objects))
        rendered = time.perf_counter() - start

        delays = []
        for _ in range(ROUNDS):
            uid = exists(plane, "daemonset", "-n", NS, "percale-node")["metadata"]["uid"]
            plane.kubectl("delete", "daemonset", "-n", NS, "percale-node", "--wait=false")
            t = time.perf_counter()
            until(lambda: (d := exists(plane, "daemonset", "-n", NS, "percale-node")) and d["metadata"]["uid"] != uid)
            delays.append(time.perf_counter() - t)

        time.sleep(5)
        cpu0, _ = process_cpu_and_rss(operator.pid)
        time.sleep(IDLE)
        cpu1, rss = process_cpu_and_rss(operator.pid)
        print(f"percale-operator against kube-apiserver + kube-controller-manager (v1.37.2), {os.cpu_count()} CPUs")
        print(f"a  Installation created -> every rendered object exists   {rendered:.2f} s")
        print(f"b  DaemonSet deleted -> recreated, {ROUNDS} rounds          p50 {statistics.median(delays) * 1000:.0f} ms,"
              f" max {max(delays) * 1000:.0f} ms (includes kubectl polling, ~20 ms)")
        print(f"c  idle {IDLE:.0f} s: CPU {(cpu1 - cpu0) / IDLE * 100:.1f}% of a core, RSS {rss / 1024:.0f} MB")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(15)
        plane.stop()


def main() -> int:
    return run_script("bench/operator.py", run, needs_root=False,
                      cleaned="operator, apiserver, controller-manager and etcd stopped")


if __name__ == "__main__":
    sys.exit(main())
