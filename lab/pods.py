"""Pods in a lab: a network namespace wired by the node's CNI plugins, called exactly as a
container runtime calls them (libcni's way of running a conflist):

  ADD   each plugin of 10-percale.conflist in order, in the node's namespace, with the CNI_*
        environment and the plugin's config on stdin (`name` and `cniVersion` from the list,
        `prevResult` from the plugin before); a failure runs DEL for the whole list, as a
        runtime cleans up a sandbox it could not set up
  DEL   the plugins in reverse order, with the ADD's result as prevResult

and the ping matrix between pods.

In a lab that runs Kubernetes (its control plane leaves an admin kubeconfig and kubectl in
<lab dir>/kube/, as topologies/k8s3/control-plane.sh does), a pod is first created as a Pod bound
to its node, as the scheduler would, since the endpoint is written on it; and deleted after DEL.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from percale.lab.runner import Lab, LabError, kubelet_pods, sh
from percale.lab.topology import netns_name_problem

IFNAME = "eth0"
K8S_NAMESPACE = "default"
# A pod's name and its Kubernetes namespace reach the plugins in CNI_ARGS (K8S_POD_NAME=...;...),
# where ';' and '=' would forge fields, and the pod's name ends its network namespace's name. In
# a lab that runs Kubernetes the pod's name is also its container's and its `run` label's, so a
# DNS-1123 label, as a namespace's name is.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class PluginFailed(LabError):
    """A CNI plugin answered with an error: `code` is its CNI error code."""

    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    namespace: str  # its network namespace
    container_id: str
    addresses: tuple[str, ...]

    @classmethod
    def from_record(cls, record: dict) -> Pod:
        return cls(record["name"], record["node"], record["namespace"], record["container_id"],
                   tuple(record["addresses"]))


def pods(lab: Lab) -> list[Pod]:
    """The lab's pods with a network namespace of their own: those `add` made, and those lab
    kubelets run (hostNetwork pods left out: they are their node; and pods still being set up,
    whose containers have not started)."""
    made = [Pod.from_record(r) for r in lab.state().get("pods", {}).values()]
    return made + [Pod(_kubelet_pod_name(r), r["node"], r["netns"], r["uid"], tuple(r["addresses"]))
                   for r in kubelet_pods(lab) if r["netns"] and r["containers"]]


def _kubelet_pod_name(record: dict) -> str:
    """A pod's name in the lab: its own in `default`, NAMESPACE/NAME elsewhere."""
    if record["namespace"] == K8S_NAMESPACE:
        return record["name"]
    return f"{record['namespace']}/{record['name']}"


def exec_argv(lab: Lab, name: str, container: str | None = None) -> tuple[list[str], dict | None]:
    """The command prefix and environment that run a program in a pod: in a kubelet's pod,
    inside the container (its mounts, network namespace and environment, as `kubectl exec`
    does); in a pod `add` made, in its network namespace. NAME is a pod's lab name or, when
    unique, its bare name."""
    records = kubelet_pods(lab)
    matches = [r for r in records if name in (_kubelet_pod_name(r), r["name"])]
    if len(matches) > 1:
        raise LabError(f"{len(matches)} pods are named {name!r}: say NAMESPACE/NAME")
    if matches:
        containers = matches[0]["containers"]
        if not containers:
            raise LabError(f"pod {name} is being set up: none of its containers runs yet")
        if container is None:
            container = next(iter(containers))
        if container not in containers:
            raise LabError(f"pod {name} has no container {container!r} (it has "
                           f"{', '.join(containers)})")
        pid = containers[container]
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            raise LabError(f"pod {name}: container {container} is not running") from None
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        return ["nsenter", "-t", str(pid), "-m", "-n", "--"], env
    made = [p for p in pods(lab) if p.name == name]
    if not made:
        raise LabError(f"lab {lab.topology.name!r} has no pod {name!r}")
    return ["ip", "netns", "exec", made[0].namespace], None


def _conflist(lab: Lab, node: str) -> dict:
    path = lab.node_dir(node) / "cni" / "net.d" / "10-percale.conflist"
    try:
        return json.loads(path.read_text())
    except OSError:
        raise LabError(f"node {node} has no CNI network config ({path}): is it a percale node?") from None


@dataclass(frozen=True)
class PodMeta:
    """What a runtime tells the plugins of a pod besides its sandbox: its Kubernetes namespace
    (CNI_ARGS), its labels (the network config's `args.cni.labels`) and its named ports
    (`args.percale.namedPorts`, as NAME -> (PROTOCOL, PORT))."""

    namespace: str = K8S_NAMESPACE
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, str, int], ...] = ()

    def conf_args(self) -> dict:
        args: dict = {}
        if self.labels:
            args["cni"] = {"labels": [{"key": k, "value": v} for k, v in self.labels]}
        if self.ports:
            args["percale"] = {"namedPorts": [{"name": n, "protocol": p, "port": port}
                                              for n, p, port in self.ports]}
        return args

    def record(self) -> dict:
        return {"k8s_namespace": self.namespace, "labels": dict(self.labels),
                "ports": [list(p) for p in self.ports]}

    @classmethod
    def from_record(cls, record: dict) -> PodMeta:
        return cls(record.get("k8s_namespace", K8S_NAMESPACE),
                   tuple(sorted(record.get("labels", {}).items())),
                   tuple(tuple(p) for p in record.get("ports", [])))


def _run_plugin(lab: Lab, node: str, command: str, conf: dict, pod_netns: str,
                container_id: str, pod: str, meta: PodMeta) -> dict:
    plugin = lab.node_dir(node) / "cni" / "bin" / conf["type"]
    env = {
        "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
        "CNI_NETNS": f"/var/run/netns/{pod_netns}", "CNI_IFNAME": IFNAME,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={meta.namespace};K8S_POD_NAME={pod};"
                    f"K8S_POD_INFRA_CONTAINER_ID={container_id}",
        "CNI_PATH": str(plugin.parent), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    done = subprocess.run(["ip", "netns", "exec", lab.topology.namespace(node), str(plugin)],
                          input=json.dumps(conf), env=env, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        code = None
        try:
            error = json.loads(done.stdout)
            code = error.get("code")
            reason = f"{error.get('msg')}" + (f": {error['details']}" if error.get("details") else "")
        except ValueError:
            reason = (done.stderr or done.stdout).strip()
        raise PluginFailed(f"CNI {command} by {conf['type']} on {node} for pod {pod}: {reason}", code)
    return json.loads(done.stdout) if done.stdout.strip() else {}


def _chain(lab: Lab, node: str, command: str, pod_netns: str, container_id: str, pod: str,
           meta: PodMeta, previous: dict | None = None) -> dict:
    conflist = _conflist(lab, node)
    plugins = conflist["plugins"] if command == "ADD" else list(reversed(conflist["plugins"]))
    result = previous
    for plugin in plugins:
        conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        if meta.conf_args():
            conf["args"] = meta.conf_args()
        if result:
            conf["prevResult"] = result
        answer = _run_plugin(lab, node, command, conf, pod_netns, container_id, pod, meta)
        if command == "ADD":
            result = answer
    return result or {}


def _kubectl(lab: Lab, node: str, *args: str, input: str | None = None) -> None:
    """kubectl as the lab's admin, from inside `node` (the apiserver is on the lab's management
    network, which the host is not on)."""
    kube = lab.dir / "kube"
    sh("ip", "netns", "exec", lab.topology.namespace(node), str(kube / "kubectl"),
       "--kubeconfig", str(kube / "kubeconfig"), *args, input=input)


def _runs_kubernetes(lab: Lab) -> bool:
    return (lab.dir / "kube" / "kubeconfig").exists()


def _create_pod(lab: Lab, node: str, name: str, meta: PodMeta) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": meta.namespace,
                        "labels": {"run": name, **dict(meta.labels)}},
           "spec": {"nodeName": node, "containers": [{"name": name, "image": "percale.invalid/pause"}]}}
    _kubectl(lab, node, "create", "-f", "-", input=json.dumps(pod))


def _check_label(what: str, value: str) -> None:
    if not DNS_LABEL.fullmatch(value):
        raise LabError(f"{what} {value!r}: must be a DNS-1123 label (at most 63 lowercase letters, "
                       "digits and '-', beginning and ending with a letter or digit), as "
                       "Kubernetes names are")


def add(lab: Lab, node: str, name: str, meta: PodMeta = PodMeta()) -> Pod:
    """A pod on `node`: its namespace, a CNI ADD through the conflist, recorded in the lab once
    its namespace exists (and forgotten again if the ADD fails)."""
    _check_label("pod name", name)
    _check_label("pod namespace", meta.namespace)
    lab.node(node)
    if not lab.is_percale(lab.topology.nodes[node]):
        raise LabError(f"node {node} is not a percale node (image {lab.topology.nodes[node].image!r})")
    if not lab.owns(lab.topology.namespace(node)):
        raise LabError(f"node {node} is not up (percalectl lab up -t {lab.topology.path})")
    if any(p.name == name for p in pods(lab)):
        raise LabError(f"a pod named {name!r} exists already")
    netns = f"{lab.topology.namespace(node)}.{name}"
    if problem := netns_name_problem(netns):
        raise LabError(f"pod {name!r}: its namespace name {problem}")
    if lab._namespace_exists(netns):
        raise LabError(f"pod {name!r}: network namespace {netns!r} exists already")
    container_id = uuid.uuid4().hex

    def claim(state: dict) -> None:
        if name in state.setdefault("pods", {}):  # added meanwhile, on another node
            raise LabError(f"a pod named {name!r} exists already")
        state["pods"][name] = {"name": name, "node": node, "namespace": netns,
                               "container_id": container_id, "addresses": [], **meta.record()}

    lab.make_namespace(netns, claim)
    try:
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        if _runs_kubernetes(lab):
            _create_pod(lab, node, name, meta)
            # Only a Pod this lab made is deleted with it: a Pod of the same name made some
            # other way (create refuses to replace it) is not the lab's to remove.
            with lab._editing() as state:
                state["pods"][name]["k8s_pod"] = True
        result = _chain(lab, node, "ADD", netns, container_id, name, meta)
    except BaseException:
        try:
            _chain(lab, node, "DEL", netns, container_id, name, meta)
        except LabError:
            pass  # the ADD's failure is the one to report (a runtime retries the DEL later)
        finally:
            _forget(lab, name, netns)
        raise
    addresses = tuple(ip["address"].split("/")[0] for ip in result.get("ips", []))
    with lab._editing() as state:
        state["pods"][name]["addresses"] = list(addresses)
        state["pods"][name]["result"] = result
    return Pod(name, node, netns, container_id, addresses)


def delete(lab: Lab, name: str) -> None:
    record = lab.state().get("pods", {}).get(name)
    if record is None:
        raise LabError(f"no pod named {name!r} in lab {lab.topology.name!r}")
    try:
        _chain(lab, record["node"], "DEL", record["namespace"], record["container_id"], name,
               PodMeta.from_record(record), record.get("result"))
    finally:
        _forget(lab, name, record["namespace"])


def _forget(lab: Lab, name: str, netns: str) -> None:
    sh("ip", "netns", "del", netns, check=False)
    record = lab.state().get("pods", {}).get(name)
    if record and record.get("k8s_pod") and _runs_kubernetes(lab):
        try:
            _kubectl(lab, record["node"], "delete", "pod", name, "-n",
                     record.get("k8s_namespace", K8S_NAMESPACE), "--force",
                     "--grace-period=0", "--ignore-not-found")
        except LabError:
            pass  # the control plane is gone already (lab down)
    with lab._editing() as state:
        state.get("pods", {}).pop(name, None)


def ping(source: Pod, address: str, count: int = 1, wait: float = 1.0) -> bool:
    done = subprocess.run(["ip", "netns", "exec", source.namespace, "ping", "-n", "-q",
                           "-c", str(count), "-W", f"{wait:g}", address],
                          capture_output=True, text=True)
    return done.returncode == 0


def ping_matrix(lab: Lab, count: int = 1, wait: float = 1.0) -> dict[tuple[str, str], bool]:
    """(from pod, to pod) -> reached, for every ordered pair of distinct pods, first address."""
    every = pods(lab)
    pairs = [(a, b) for a in every for b in every if a.name != b.name and b.addresses]
    with ThreadPoolExecutor(8) as pool:
        results = pool.map(lambda pair: ping(pair[0], pair[1].addresses[0], count, wait), pairs)
        return {(a.name, b.name): ok for (a, b), ok in zip(pairs, results, strict=True)}


def format_matrix(lab: Lab, matrix: dict[tuple[str, str], bool]) -> str:
    """Rows are sources, columns destinations; long names (a Deployment's pods) number the
    columns after the rows instead of repeating the names."""
    names = [p.name for p in pods(lab)]
    width = max([len(n) for n in names] + [4])
    if width <= 16:
        labels, cell = names, width
    else:
        labels, cell = [str(i) for i in range(1, len(names) + 1)], 4
        names_width = width
        width = names_width + 5
    lines = [" " * width + "  " + " ".join(label.rjust(cell) for label in labels)]
    for i, a in enumerate(names):
        cells = ["-" if a == b else ("ok" if matrix.get((a, b)) else "FAIL") for b in names]
        row = a if labels is names else f"{i + 1:>2}  {a}"
        lines.append(row.ljust(width) + "  " + " ".join(c.rjust(cell) for c in cells))
    return "\n".join(lines)
