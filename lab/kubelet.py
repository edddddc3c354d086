"""A lab kubelet: what a lab node needs of a kubelet for the pods of percale's operator to run on
it, with no container runtime and no images.

    percale-lab-kubelet --kubeconfig FILE --node-name NODE --node-ip ADDR --root DIR

Run as a lab node's `cmd` (inside the node's network namespace), it

  * registers the node's Node (InternalIP, capacity, Ready) and renews its Lease every 10 s;
  * runs each Pod bound to the node as processes: init containers in order, then the
    containers, each in a mount namespace of its own where the pod's hostPath volumes (kept
    under DIR: every lab node has its own "host") and its service-account token
    (/var/run/secrets/kubernetes.io/serviceaccount, from a TokenRequest bound to the pod) are
    bind-mounted; hostNetwork pods in the node's network namespace, others in a namespace of
    their own wired through the node's CNI conflist as a runtime wires it (ADD, then DEL);
  * resolves env (value, fieldRef, configMapKeyRef) and $(VAR) in command and args; an image
    without a command runs what IMAGES says (percale's programs come from the venv);
  * reports pod status (Running, the pod IPs, Ready from readiness probes) and, when a pod is
    deleted, stops it, runs CNI DEL and removes the Pod.

There are no container root filesystems: a mount point missing on the machine (/host/opt/cni/bin,
/opt/cni/bin, the service-account directory) is created there, empty, as a runtime creates it in
a container's root; what is mounted on it stays inside the container's mount namespace.

Standard library and PyYAML only: the lab imports nothing of percale's own packages.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

# Images the lab knows, and what a container of one runs when its spec gives no command.
IMAGES = {"percale/node": ["percale-node"], "percale/pause": ["sleep", "infinity"]}
HEARTBEAT = 10.0
# Host paths every lab node shares with the machine (network namespaces, kernel modules): used
# as they are. Every other hostPath is the node's own, under --root.
SHARED_HOST_PATHS = ("/var/run/netns", "/run/netns", "/lib/modules", "/proc", "/sys")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
REFERENCE_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class API:
    """A few calls to the apiserver with the kubeconfig's client certificate."""

    def __init__(self, kubeconfig: str):
        config = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"]
        self.ca = cluster["certificate-authority"]
        self.context = ssl.create_default_context(cafile=self.ca)
        self.context.load_cert_chain(user["client-certificate"], user["client-key"])
        host = self.server.removeprefix("https://")
        self.host, _, port = host.partition(":")
        self.port = int(port or 443)

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[int, dict]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": content_type,
                                                             "Accept": "application/json"})
            response = conn.getresponse()
            text = response.read()
            return response.status, (json.loads(text) if text else {})
        finally:
            conn.close()


@dataclass
class Container:
    """One container's process, restarted as restartPolicy says with the kubelet's back-off."""
    spec: dict
    process: subprocess.Popen
    started_at: str = field(default_factory=lambda: now())
    restarts: int = 0
    restart_after: float | None = None  # when it exited: the earliest time it runs again
    last_exit: int | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class RunningPod:
    uid: str
    name: str
    namespace: str
    netns: str | None
    containers: list[Container] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    cni_result: dict | None = None
    started_at: str = field(default_factory=lambda: now())
    reported: str = ""

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [c.process for c in self.containers]


class Kubelet:
    def __init__(self, args: argparse.Namespace):
        self.api = API(args.kubeconfig)
        self.node, self.ip, self.root = args.node_name, args.node_ip, Path(args.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.netns_prefix = subprocess.run(["ip", "netns", "identify", str(os.getpid())],
                                           capture_output=True, text=True).stdout.strip() or self.node
        self.pods: dict[str, RunningPod] = {}
        # The reference plugins (portmap, ...) are part of a node's OS, as in a node image.
        bin_dir = self.host_path("/opt/cni/bin")
        for plugin in REFERENCE_PLUGINS.glob("*"):
            if not (bin_dir / plugin.name).exists():
                (bin_dir / plugin.name).symlink_to(plugin)

    # -- the node --------------------------------------------------------------------------

    def register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node, "labels": {
            "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"}}}
        status, _ = self.api.call("POST", "/api/v1/nodes", body)
        if status not in (201, 409):
            raise RuntimeError(f"cannot register node {self.node}: {status}")
        self.heartbeat()

    def heartbeat(self) -> None:
        status, node = self.api.call("GET", f"/api/v1/nodes/{self.node}")
        if status != 200:
            return
        stamp = now()
        node["status"] = {
            **node.get("status", {}),
            "addresses": [{"type": "InternalIP", "address": self.ip},
                          {"type": "Hostname", "address": self.node}],
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "lab kubelet is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime":
                            next((c["lastTransitionTime"] for c in node.get("status", {}).get("conditions", [])
                                  if c["type"] == "Ready" and c["status"] == "True"), stamp)}],
            "nodeInfo": {"kubeletVersion": "v1.37.2-lab", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "percale-lab://1",
                         "kernelVersion": os.uname().release, "osImage": "percale lab",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }
        self.api.call("PUT", f"/api/v1/nodes/{self.node}/status", node)
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40,
                          "renewTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        status, current = self.api.call("GET", f"{path}/{self.node}")
        if status == 200:
            current["spec"] = lease["spec"]
            self.api.call("PUT", f"{path}/{self.node}", current)
        else:
            self.api.call("POST", path, lease)

    # -- pods ------------------------------------------------------------------------------

    def sync(self) -> None:
        status, listed = self.api.call("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.node}")
        if status != 200:
            return
        seen = set()
        for pod in listed.get("items", []):
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            if pod["metadata"].get("deletionTimestamp"):
                self.stop(pod)
                continue
            if uid not in self.pods:
                try:
                    self.start(pod)
                except Exception as err:  # noqa: BLE001 - one pod's failure is its own
                    # Not yet (no network config before percale-node runs, say): undo, and
                    # try again at the next sync, as a kubelet retries a sandbox.
                    print(f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}: {err}", flush=True)
                    failed = self.pods.pop(uid, None)
                    if failed is not None:
                        self.teardown(failed)  # a runtime's DEL after a failed ADD
                    continue
            self.keep_running(pod, self.pods[uid])
            self.report(pod)
        for uid in list(self.pods):
            if uid not in seen:
                self.teardown(self.pods.pop(uid))

    def host_path(self, path: str) -> Path:
        where = self.root / "host" / path.lstrip("/")
        where.mkdir(parents=True, exist_ok=True)
        return where

    def mounts(self, pod: dict, container: dict, running: RunningPod) -> list[tuple[str, str]]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        binds = []
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "hostPath" in volume:
                path = volume["hostPath"]["path"]
                if path in SHARED_HOST_PATHS:
                    if mount["mountPath"] != path:
                        binds.append((path, mount["mountPath"]))
                    continue
                binds.append((str(self.host_path(path)), mount["mountPath"]))
        token_dir = self.root / "pods" / running.uid / "serviceaccount"
        if token_dir.exists():
            binds.append((str(token_dir), SA_DIR))
        # A bind onto /var/run/percale hides the lab directory the other sources live in: the
        # binds whose target covers another's source go last.
        return sorted(binds, key=lambda bind: any(
            source.startswith(bind[1].rstrip("/") + "/") for source, _ in binds))

    def token(self, pod: dict, running: RunningPod) -> None:
        sa = pod["spec"].get("serviceAccountName", "default")
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        status, answer = self.api.call(
            "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": 86400, "boundObjectRef": {
                 "kind": "Pod", "apiVersion": "v1", "name": name, "uid": running.uid}}})
        if status != 201:
            return
        folder = self.root / "pods" / running.uid / "serviceaccount"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "token").write_text(answer["status"]["token"])
        (folder / "namespace").write_text(ns)
        (folder / "ca.crt").write_text(Path(self.api.ca).read_text())

    def env(self, pod: dict, container: dict, running: RunningPod) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8",
               "HOSTNAME": self.node if pod["spec"].get("hostNetwork") else pod["metadata"]["name"],
               "KUBERNETES_SERVICE_HOST": self.api.host, "KUBERNETES_SERVICE_PORT": str(self.api.port)}
        fields = {"spec.nodeName": self.node, "metadata.name": pod["metadata"]["name"],
                  "metadata.namespace": pod["metadata"]["namespace"],
                  "status.podIP": (running.ips or [self.ip])[0], "status.hostIP": self.ip,
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default")}
        for item in container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = expand(item.get("value", ""), env)
            elif "fieldRef" in source:
                env[item["name"]] = fields.get(source["fieldRef"]["fieldPath"], "")
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                status, cm = self.api.call(
                    "GET", f"/api/v1/namespaces/{pod['metadata']['namespace']}/configmaps/{ref['name']}")
                env[item["name"]] = (cm.get("data") or {}).get(ref["key"], "") if status == 200 else ""
        return env

    def argv(self, container: dict, env: dict[str, str]) -> list[str]:
        command = container.get("command") or IMAGES.get(image_name(container["image"]), [])
        if not command:
            raise RuntimeError(f"image {container['image']} is not one the lab knows and the "
                               "container gives no command")
        return [expand(a, env) for a in [*command, *container.get("args", [])]]

    def spawn(self, pod: dict, container: dict, running: RunningPod) -> subprocess.Popen:
        env = self.env(pod, container, running)
        binds = self.mounts(pod, container, running)
        # A slave copy of the node's mounts: network namespaces the kubelet adds later still
        # appear inside (the DaemonSet's HostToContainer), the container's binds stay inside.
        script = "".join(
            f"mkdir -p {shlex.quote(target)} && mount --bind {shlex.quote(source)} {shlex.quote(target)} && "
            for source, target in binds) + f"cd {shlex.quote(container.get('workingDir', '/'))} && exec \"$@\""
        argv = ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script, "container",
                *self.argv(container, env)]
        if running.netns:
            argv = ["ip", "netns", "exec", running.netns, *argv]
        log = open(self.root / "pods" / running.uid / f"{container['name']}.log", "ab")
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd="/")
        log.close()
        return process

    def start(self, pod: dict) -> None:
        meta = pod["metadata"]
        host = bool(pod["spec"].get("hostNetwork"))
        netns = None if host else f"{self.netns_prefix}.{meta['namespace']}-{meta['name']}"[:200]
        # The namespace is the pod's once this kubelet has made it: until then teardown (after a
        # failed start) has none to delete, and one of that name that exists already (left by a
        # kubelet killed earlier, or another's) stays as it is.
        running = RunningPod(meta["uid"], meta["name"], meta["namespace"], None)
        (self.root / "pods" / running.uid).mkdir(parents=True, exist_ok=True)
        self.pods[running.uid] = running
        self.token(pod, running)
        if host:
            running.ips = [self.ip]
        else:
            added = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True)
            if added.returncode != 0:
                raise RuntimeError(f"cannot make network namespace {netns}: "
                                   f"{added.stderr.strip() or added.returncode}")
            running.netns = netns
            # Recorded as soon as it exists (the lab's `down` removes what is recorded), not
            # once the pod runs: a kubelet killed during the CNI ADD would leave it unknown.
            self.record(running)
            subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
            running.cni_result = self.cni(running, "ADD")
            running.ips = [ip["address"].split("/")[0] for ip in running.cni_result.get("ips", [])]
        for init in pod["spec"].get("initContainers", []):
            done = self.spawn(pod, init, running)
            if done.wait(300) != 0:
                raise RuntimeError(f"init container {init['name']} exited with {done.returncode}")
        for container in pod["spec"]["containers"]:
            running.containers.append(Container(container, self.spawn(pod, container, running)))
        self.record(running)

    def record(self, running: RunningPod) -> None:
        """<root>/pods/<uid>/pod.json: where the lab's tools find a pod (its network namespace,
        its addresses, its containers' PIDs to enter), as crictl asks a runtime; no containers
        while the pod is being set up."""
        record = {"name": running.name, "namespace": running.namespace, "node": self.node,
                  "uid": running.uid, "netns": running.netns, "addresses": running.ips,
                  "containers": {c.spec["name"]: c.process.pid for c in running.containers}}
        path = self.root / "pods" / running.uid / "pod.json"
        path.with_suffix(".new").write_text(json.dumps(record))
        path.with_suffix(".new").replace(path)

    def keep_running(self, pod: dict, running: RunningPod) -> None:
        """Restart exited containers as restartPolicy says, waiting 10 s, 20 s, ... up to 5 min
        between restarts (CrashLoopBackOff meanwhile), as a kubelet does."""
        policy = pod["spec"].get("restartPolicy", "Always")
        for container in running.containers:
            code = container.process.poll()
            if code is None:
                continue
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                continue
            if container.restart_after is None:
                container.last_exit = code
                container.restart_after = time.monotonic() + min(10 * 2 ** container.restarts, 300)
                print(f"pod {running.namespace}/{running.name}: container {container.spec['name']} "
                      f"exited with {code}; restarting it in "
                      f"{container.restart_after - time.monotonic():.0f} s", flush=True)
            elif time.monotonic() >= container.restart_after:
                container.process = self.spawn(pod, container.spec, running)
                container.restarts += 1
                container.started_at = now()
                container.restart_after = None
                self.record(running)

    def cni(self, running: RunningPod, command: str, previous: dict | None = None) -> dict:
        """The node's conflist, plugin by plugin, as a runtime runs it; the plugins see the
        node's /opt/cni/bin and /var/run/percale (the agent's socket) where the node's
        processes see them."""
        conf_dir = self.host_path("/etc/cni/net.d")
        lists = sorted(conf_dir.glob("*.conflist"))
        if not lists:
            raise RuntimeError("no CNI network config on this node yet")
        conflist = json.loads(lists[0].read_text())
        plugins = conflist["plugins"] if command == "ADD" else list(reversed(conflist["plugins"]))
        result = previous
        bin_dir = self.host_path("/opt/cni/bin")
        run_dir = self.host_path("/var/run/percale")
        for plugin in plugins:
            conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
            if result:
                conf["prevResult"] = result
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": running.uid,
                   "CNI_NETNS": f"/var/run/netns/{running.netns}", "CNI_IFNAME": "eth0",
                   "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={running.namespace};K8S_POD_NAME={running.name}",
                   "CNI_PATH": "/opt/cni/bin", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            done = subprocess.run(
                ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
                 f"mkdir -p /opt/cni/bin && mount --bind {shlex.quote(str(bin_dir))} /opt/cni/bin"
                 f" && mount --bind {shlex.quote(str(run_dir))} /var/run/percale"
                 " && exec \"$@\"", "cni", f"/opt/cni/bin/{plugin['type']}"],
                input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"CNI {command} {plugin['type']}: {done.stdout.strip() or done.stderr.strip()}")
            if command == "ADD":
                result = json.loads(done.stdout)
        return result or {}

    def probe(self, pod: dict) -> bool:
        for container in pod["spec"]["containers"]:
            check = (container.get("readinessProbe") or {}).get("httpGet")
            if check is None:
                continue
            host = check.get("host") or (self.pods[pod["metadata"]["uid"]].ips or [self.ip])[0]
            try:
                with urllib.request.urlopen(f"http://{host}:{check['port']}{check.get('path', '/')}",
                                            timeout=2) as answer:
                    if answer.status >= 400:
                        return False
            except OSError:
                return False
        return True

    def report(self, pod: dict) -> None:
        running = self.pods.get(pod["metadata"]["uid"])
        containers = running.containers if running else []
        alive = bool(containers) and all(c.alive for c in containers)
        ready = bool(alive and self.probe(pod))
        stamp = now()
        phase = "Running" if containers else "Pending"
        states = [self.container_state(c) for c in containers]
        key = json.dumps([phase, ready, running.ips if running else [], states])
        if running is not None and running.reported == key:
            return
        status = {
            "phase": phase, "hostIP": self.ip, "hostIPs": [{"ip": self.ip}],
            "startTime": running.started_at if running else stamp,
            "conditions": [{"type": t, "status": "True" if (t not in ("Ready", "ContainersReady") or ready) else "False",
                            "lastTransitionTime": stamp}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": c.spec["name"], "image": c.spec["image"], "imageID": "",
                                   "containerID": f"percale-lab://{running.uid}/{c.spec['name']}",
                                   "ready": ready and c.alive, "restartCount": c.restarts,
                                   "started": c.alive, "state": state,
                                   **({"lastState": {"terminated": {"exitCode": c.last_exit}}}
                                      if c.last_exit is not None else {})}
                                  for c, state in zip(containers, states)] or
                                 [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                   "restartCount": 0, "started": False,
                                   "state": {"waiting": {"reason": "ContainerCreating"}}}
                                  for c in pod["spec"]["containers"]],
        }
        if running and running.ips:
            status["podIP"] = running.ips[0]
            status["podIPs"] = [{"ip": ip} for ip in running.ips]
        code, current = self.api.call("GET", f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}")
        if code != 200:
            return
        current["status"] = {**current.get("status", {}), **status}
        code, _ = self.api.call("PUT", f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
                                f"{pod['metadata']['name']}/status", current)
        if code == 200 and running is not None:
            running.reported = key

    @staticmethod
    def container_state(container: Container) -> dict:
        if container.alive:
            return {"running": {"startedAt": container.started_at}}
        if container.restart_after is not None:
            return {"waiting": {"reason": "CrashLoopBackOff", "message":
                                f"exited with {container.last_exit}; back-off before restarting"}}
        return {"terminated": {"exitCode": container.process.returncode, "reason":
                               "Completed" if container.process.returncode == 0 else "Error"}}

    def teardown(self, running: RunningPod, cni: bool = True) -> None:
        (self.root / "pods" / running.uid / "pod.json").unlink(missing_ok=True)
        for process in running.processes:
            if process.poll() is None:
                process.terminate()
        for process in running.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if running.netns:
            try:
                if cni:
                    self.cni(running, "DEL", running.cni_result)
            except RuntimeError as err:
                print(f"pod {running.namespace}/{running.name}: {err}", flush=True)
            subprocess.run(["ip", "netns", "del", running.netns], check=False)

    def stop(self, pod: dict) -> None:
        running = self.pods.pop(pod["metadata"]["uid"], None)
        if running is not None:
            self.teardown(running)
        meta = pod["metadata"]
        self.api.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                      {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                       "preconditions": {"uid": meta["uid"]}})

    def run(self) -> None:
        self.register()
        last = time.monotonic()
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        while not stopping:
            self.sync()
            if time.monotonic() - last > HEARTBEAT:
                self.heartbeat()
                last = time.monotonic()
            time.sleep(1)
        for running in list(self.pods.values()):
            self.teardown(running)


def image_name(image: str) -> str:
    """`registry.example.com:5000/percale/node:0.1.0` -> `percale/node`."""
    path = image.rsplit("@", 1)[0]
    last = path.rsplit("/", 1)
    if ":" in last[-1]:
        path = path.rsplit(":", 1)[0]
    return "/".join(path.split("/")[-2:])


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a known variable is replaced, $$ escapes, the rest stays."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--node-ip", required=True)
    parser.add_argument("--root", required=True, help="this node's host paths and pod files")
    Kubelet(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
