"""Time from `kubectl create` of the Installation to Ready=True on a lab cluster of N nodes (the
k8sop3 topology grown to N lab kubelets), from an empty cluster with manifests/operator.yaml
created, as a cluster user installs percale:

  ready      Installation created -> condition Ready=True (percale-node Ready on every node,
             the controllers' Deployment available)
  pods       then a Deployment of 2 pods per node, placed by kube-scheduler -> rolled out
  reach      then every pod pings every other pod
  restart    a percale-node pod deleted -> its replacement Ready and the Installation Ready

    .venv/bin/python bench/operator_lab.py [--nodes 3,10]

There is no yardstick here (no tigera operator runs on this machine): the aim is the issue's
60 s on 3 nodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from percale.lab import pods  # noqa: E402
from percale.lab.runner import open_lab  # noqa: E402

TEMPLATE = REPO / "topologies" / "k8sop3.clab.yml"
KUBECTL = "/etc/percale/kube/kubectl"


def topology(n: int, directory: Path) -> Path:
    """k8sop3 with n kubelet nodes, its relative paths made absolute."""
    spec = yaml.safe_load(TEMPLATE.read_text())
    spec["name"] = f"k8sop{n}"
    nodes = spec["topology"]["nodes"]
    kube = nodes["kube"]
    kube["binds"] = [b.replace("k8s3/", f"{TEMPLATE.parent}/k8s3/", 1) if b.startswith("k8s3/") else b
                     for b in kube["binds"]]
    template = nodes.pop("node1")
    for name in [k for k in nodes if k.startswith("node")]:
        del nodes[name]
    names = [f"node{i}" for i in range(1, n + 1)]
    kube["cmd"] = kube["cmd"].split(" node1")[0] + " " + " ".join(names)
    for i, name in enumerate(names, start=1):
        node = json.loads(json.dumps(template))
        node["cmd"] = template["cmd"].replace("node1", name).replace("10.0.0.11", f"10.0.0.{10 + i}")
        node["exec"] = [f"ip addr add 10.0.0.{10 + i}/24 dev eth1"]
        nodes[name] = node
    spec["topology"]["links"] = [{"endpoints": [f"{name}:eth1", f"sw:n{i}"]}
                                 for i, name in enumerate(names, start=1)]
    path = directory / f"k8sop{n}.clab.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        lab = open_lab(topology(n, Path(tmp)))
        lab.down()
        try:
            start = time.perf_counter()
            lab.up()
            figures = {"lab up": time.perf_counter() - start}

            def kubectl(*args: str) -> str:
                done = lab.exec("kube", [KUBECTL, *args], capture=True, timeout=300)
                if done.returncode != 0:
                    raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr}")
                return done.stdout

            kubectl("create", "-f", str(REPO / "manifests" / "operator.yaml"))
            kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout", "60s")
            start = time.perf_counter()
            kubectl("create", "-f", str(REPO / "topologies" / "k8sop3" / "installation.yaml"))
            kubectl("wait", "--for", "condition=Ready", "installation/default", "--timeout", "300s")
            figures["ready"] = time.perf_counter() - start

            start = time.perf_counter()
            kubectl("apply", "-f", str(REPO / "topologies" / "k8sop3" / "pingers.yaml"))
            kubectl("scale", "deployment", "pingers", "--replicas", str(2 * n))
            kubectl("rollout", "status", "deployment/pingers", "--timeout", "300s")
            figures["pods"] = time.perf_counter() - start
            start = time.perf_counter()
            while not all(pods.ping_matrix(lab).values()):
                if time.perf_counter() - start > 120:
                    raise RuntimeError("pods do not reach each other")
            figures["reach"] = time.perf_counter() - start

            victim = json.loads(kubectl("get", "pods", "-n", "percale-system", "-l",
                                        "app.kubernetes.io/name=percale-node", "--field-selector",
                                        "spec.nodeName=node1", "-o", "json"))["items"][0]
            start = time.perf_counter()
            kubectl("delete", "pod", "-n", "percale-system", victim["metadata"]["name"])
            kubectl("wait", "--for", "condition=Ready", "pod", "-n", "percale-system", "-l",
                    "app.kubernetes.io/name=percale-node", "--timeout", "120s")
            kubectl("wait", "--for", "condition=Ready", "installation/default", "--timeout", "120s")
            figures["restart"] = time.perf_counter() - start
            return figures
        finally:
            lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="3,10", help="cluster sizes, comma-separated")
    sizes = [int(n) for n in parser.parse_args().nodes.split(",")]
    rows = [(n, measure(n)) for n in sizes]
    print(f"{'nodes':>5}  {'lab up':>7}  {'ready':>7}  {'pods':>7}  {'reach':>7}  {'restart':>7}  (seconds)")
    for n, f in rows:
        print(f"{n:>5}  {f['lab up']:7.1f}  {f['ready']:7.1f}  {f['pods']:7.1f}  {f['reach']:7.1f}  "
              f"{f['restart']:7.1f}")
    three = dict(rows).get(3)
    if three:
        print(f"aim: Ready within 60 s on 3 nodes: {'met' if three['ready'] < 60 else 'MISSED'} "
              f"({three['ready']:.1f} s)")


if __name__ == "__main__":
    main()
