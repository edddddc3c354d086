"""A real Kubernetes control plane for tests, started as envtest starts one: a real etcd, the
kube-apiserver built from k8s.io/kubernetes (scripts/k8s-binaries.sh, cached per release), its own
CA, serving certificate and service-account keys, RBAC on, an admin client certificate in
system:masters, a kubeconfig per user, and percale's CRDs installed and established.

Everything is stopped by PID; the binaries are built on first use, so no test is skipped for
want of them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from tests.helpers.etcd_server import EtcdServer, free_port
from tests.helpers.pki import CertificateAuthority, signing_key
from tests.helpers.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


@cache
def binaries() -> Path:
    """The folder holding kube-apiserver, kube-controller-manager, kube-scheduler and kubectl."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "k8s-binaries.sh")], check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class KubeControlPlane:
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="percale-kube-")))
    port: int = field(default_factory=free_port)
    etcd: EtcdServer | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0, *, controller_manager: bool = False) -> KubeControlPlane:
        """`controller_manager` also runs the real kube-controller-manager (garbage collector,
        namespace, DaemonSet and Deployment controllers), as admin."""
        bin_dir = binaries()
        self.etcd = EtcdServer().start()
        self.ca = CertificateAuthority(self.work / "pki")
        serving = self.ca.issue("apiserver", "kube-apiserver", server=True,
                                hosts=("localhost", "127.0.0.1", "10.0.0.1", "kubernetes.default.svc"))
        sa_private, sa_public = signing_key(self.work / "pki", "service-accounts")
        args = [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd.endpoint}",
            "--etcd-prefix=/registry",
            f"--secure-port={self.port}", "--bind-address=127.0.0.1",
            f"--advertise-address=127.0.0.1",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={self.ca.cert}",
            f"--service-account-issuer={self.url}",
            f"--service-account-key-file={sa_public}",
            f"--service-account-signing-key-file={sa_private}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.work / 'certs'}",
            "--v=0",
        ]
        self._args = args
        self._launch()
        self.admin = self.kubeconfig("admin", groups=("system:masters",))
        self._wait_ready(timeout)
        self.kubectl("apply", "-f", str(CRDS))
        self.kubectl("apply", "-f", str(ROOT / "manifests" / "rbac.yaml"))
        # Before the controller-manager: its garbage collector learns the kinds from discovery
        # when it starts and then only every 30 s. An owner of a kind it does not know yet (an
        # Installation) is retried with a doubling back-off, so its deletion could go unnoticed
        # for a minute or more.
        self._wait_discoverable(timeout)
        if controller_manager:
            log = open(self.work / "kube-controller-manager.log", "ab")
            self.manager = subprocess.Popen(
                [str(bin_dir / "kube-controller-manager"), f"--kubeconfig={self.admin}",
                 "--leader-elect=false", "--controllers=garbagecollector,namespace,daemonset,"
                 "deployment,replicaset,serviceaccount", "--secure-port=0",
                 f"--service-account-private-key-file={sa_private}",
                 f"--root-ca-file={self.ca.cert}", "--concurrent-gc-syncs=5",
                 "--v=0"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        return self

    def _wait_discoverable(self, timeout: float) -> None:
        """Until discovery lists every served resource of every CRD installed (it lists only
        established CRDs, so they are established too)."""
        wanted: dict[str, set[str]] = {}
        for crd in self.get_json("crd")["items"]:
            for version in crd["spec"]["versions"]:
                if version["served"]:
                    group_version = f"{crd['spec']['group']}/{version['name']}"
                    wanted.setdefault(group_version, set()).add(crd["spec"]["names"]["plural"])
        deadline = time.monotonic() + timeout
        while True:
            for group_version in list(wanted):
                done = self.kubectl("get", "--raw", f"/apis/{group_version}", check=False)
                if done.returncode == 0:
                    wanted[group_version] -= {r["name"] for r in json.loads(done.stdout)["resources"]}
                    if not wanted[group_version]:
                        del wanted[group_version]
            if not wanted:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRDs not in discovery within {timeout}s: {wanted}")
            time.sleep(0.2)

    def _launch(self) -> None:
        log = open(self.work / "kube-apiserver.log", "ab")
        self.process = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()

    def restart(self, timeout: float = 90.0) -> None:
        """Stop the apiserver and start it again on the same etcd: its watch cache starts anew,
        at the newest revision, so a client resuming an older watch is told 410."""
        os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(30)
        self._launch()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=self.ca.cert)
        pair = self._users["admin"]
        context.load_cert_chain(pair.cert, pair.key)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"kube-apiserver was not ready within {timeout}s: {self.log_tail()}")

    def log_tail(self, size: int = 3000) -> str:
        return (self.work / "kube-apiserver.log").read_text(errors="replace")[-size:]

    def kubeconfig(self, user: str, *, groups: tuple[str, ...] = (), server: str | None = None) -> str:
        """A kubeconfig for a client certificate with that user name (CN) and groups (O);
        `server` when the apiserver is reached another way than its own address (a relay)."""
        if not hasattr(self, "_users"):
            self._users = {}
        pair = self.ca.issue(f"user-{user.replace(':', '-')}", user, groups=groups)
        self._users[user] = pair
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": server or self.url,
                                                      "certificate-authority": self.ca.cert}}],
            "users": [{"name": user, "user": {"client-certificate": pair.cert,
                                              "client-key": pair.key}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
        self._written = getattr(self, "_written", 0) + 1
        path = self.work / f"kubeconfig-{self._written}-{user.replace(':', '-')}"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    def kubectl(self, *args: str, kubeconfig: str | None = None, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(binaries() / "kubectl"), f"--kubeconfig={kubeconfig or self.admin}", *args],
            check=check, capture_output=True, text=True, input=input, timeout=60)

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wipe(self) -> None:
        """Delete every percale custom object and every Pod: each test starts from an empty
        datastore. (Namespaces stay: without a namespace controller they never finish
        terminating.)"""
        kinds = ",".join(p.name.split("_", 1)[1].removesuffix(".yaml") + ".percale.io"
                         for p in sorted(CRDS.glob("percale.io_*.yaml")))
        # --all-namespaces: percale's NetworkPolicies are namespaced, and one left in a test's own
        # namespace showed up in the next test's view of every namespace.
        self.kubectl("delete", kinds, "--all", "--all-namespaces", "--wait=false")
        self.kubectl("delete", "pods", "--all", "--all-namespaces", "--force",
                     "--grace-period=0", "--wait=false")
        self.kubectl("delete", "nodes", "--all", "--wait=false")

    def pod(self, namespace: str, name: str, *, node: str | None = None,
            labels: dict[str, str] | None = None) -> dict:
        """Create a Pod (and its namespace when missing), as the Kubernetes side of a pod the
        CNI plugin is asked to wire. No kubelet runs it; it is an object to annotate."""
        if self.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            self.kubectl("create", "namespace", namespace)
        spec: dict = {"containers": [{"name": "main", "image": "percale.invalid/pause"}]}
        if node:
            spec["nodeName"] = node
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
               "spec": spec}
        return json.loads(self.kubectl("create", "-o", "json", "-f", "-",
                                       input=json.dumps(pod)).stdout)

    def node(self, name: str, address: str | None = None,
             labels: dict[str, str] | None = None) -> dict:
        """Create a Kubernetes Node as a kubelet registers one (a lab has no kubelet)."""
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                      **(labels or {})}}}
        created = json.loads(self.kubectl("create", "-o", "json", "-f", "-",
                                          input=json.dumps(node)).stdout)
        if address:
            created["status"] = {"addresses": [{"type": "InternalIP", "address": address},
                                               {"type": "Hostname", "address": name}]}
            created = json.loads(self.kubectl(
                "replace", "--subresource=status", "-o", "json", "-f", "-",
                input=json.dumps(created)).stdout)
        return created

    def stop(self) -> None:
        manager = getattr(self, "manager", None)
        if manager is not None:
            stop_process(manager)
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.etcd:
            self.etcd.stop()
        shutil.rmtree(self.work, ignore_errors=True)
