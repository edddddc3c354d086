"""The lab runner's promises, on small topologies of plain processes (no percale): what `up`
makes `down` removes, also after `up` failed or was killed halfway, and nothing it did not make;
refusals are one line naming the node and the step."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from percale.lab import pods, runner
from percale.lab.runner import Lab, LabError, open_lab

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
        assert "Error: node b: exec 'false' failed (exit status 1)\n" in up.stderr
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


def write_doc(tmp_path: Path, name: str, nodes: dict, **extra) -> Path:
    doc = {"name": name, "mgmt": {"ipv4-subnet": "172.20.99.0/24"}, "topology": {"nodes": nodes},
           **extra}
    path = tmp_path / f"{name}.clab.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.contextmanager
def foreign_namespace(name: str):
    """A namespace some other tool made, with a process in it; removed by name afterwards."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    process = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def untouched(name: str, process: subprocess.Popen) -> bool:
    return namespaces(name) == [name] and process.poll() is None


def test_down_and_up_leave_a_namespace_the_lab_did_not_make_alone(tmp_path):
    """With `prefix: ""` a node's namespace is named by the node alone, which another tool may
    have taken: `down` (the lab never up) must not remove it or kill its process, and `up` must
    refuse before making anything."""
    name = f"rt{uuid.uuid4().hex[:6]}"
    victim = f"rv{uuid.uuid4().hex[:6]}"
    path = write_doc(tmp_path, name, {victim: {"kind": "linux", "cmd": "sleep 600"}}, prefix="")
    with foreign_namespace(victim) as process:
        try:
            down = lab_cli("down", "-t", str(path))
            assert down.returncode == 0, down.stderr
            assert down.stdout == f"lab {name}: removed 0 namespaces\n"
            assert untouched(victim, process)

            up = lab_cli("up", "-t", str(path))
            assert up.returncode == 1
            assert up.stderr == (f"Error: lab '{name}': network namespace '{victim}' exists already, "
                                 "made by something other than this lab: remove it (ip netns del "
                                 "NAME) or change the topology's prefix or node names\n")
            assert untouched(victim, process)
            assert not open_lab(path).dir.exists()
        finally:
            open_lab(path).down()
        assert untouched(victim, process)


def test_up_refuses_an_existing_management_namespace(tmp_path):
    name = f"rt{uuid.uuid4().hex[:6]}"
    path = write(tmp_path, name)
    with foreign_namespace(f"clab-{name}-mgmt") as process:
        try:
            up = lab_cli("up", "-t", str(path))
            assert up.returncode == 1
            assert f"Error: lab '{name}': network namespace 'clab-{name}-mgmt' exists already" in up.stderr
            assert namespaces(f"clab-{name}-") == [f"clab-{name}-mgmt"]  # nothing made
            assert untouched(f"clab-{name}-mgmt", process)
            assert lab_cli("down", "-t", str(path)).stdout == f"lab {name}: removed 0 namespaces\n"
            assert untouched(f"clab-{name}-mgmt", process)
        finally:
            open_lab(path).down()


def test_a_failed_up_removes_only_the_namespaces_it_made(tmp_path, monkeypatch):
    """A namespace made by someone else after `up` looked (here: `up` told nothing is in the
    way) makes `ip netns add` fail; the cleanup removes what `up` made before, not that one."""
    name = f"rt{uuid.uuid4().hex[:6]}"
    taken = f"clab-{name}-b"
    path = write(tmp_path, name)
    monkeypatch.setattr(Lab, "_needed_namespaces", lambda self: [])
    with foreign_namespace(taken) as process:
        try:
            with pytest.raises(LabError, match=f"ip netns add {taken}: .*File exists"):
                open_lab(path).up()
            assert namespaces(f"clab-{name}-") == [taken]  # mgmt and a made, and removed
            assert untouched(taken, process)
            assert not open_lab(path).dir.exists()
        finally:
            open_lab(path).down()


def test_a_cmd_that_cannot_run_fails_up(tmp_path):
    """Docker fails to start a container whose command is not found; so does `up`, with the exit
    status and the node's log, and removes what it made. A cmd that ends well is a node whose
    work is done."""
    name = f"rt{uuid.uuid4().hex[:6]}"
    nodes = {"a": {"kind": "linux", "cmd": "sleep 600"},
             "b": {"kind": "linux", "cmd": "nosuchcommand --flag"}}
    path = write_doc(tmp_path, name, nodes)
    try:
        started = time.monotonic()
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 1
        assert "Error: node b: cmd 'nosuchcommand --flag' ended (exit status 127)\n" in up.stderr
        assert "nosuchcommand: not found" in up.stderr
        assert "Traceback" not in up.stderr
        assert time.monotonic() - started < 10
        assert namespaces(f"clab-{name}-") == []
        assert not open_lab(path).dir.exists()

        path = write_doc(tmp_path, name, {**nodes, "b": {"kind": "linux", "cmd": "true"}})
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 0, up.stderr
        assert {row["name"]: row["state"] for row in open_lab(path).status()} == {
            "a": "running", "b": "exited"}
    finally:
        open_lab(path).down()


def test_an_unhealthy_node_says_how_its_healthcheck_failed(tmp_path):
    name = f"rt{uuid.uuid4().hex[:6]}"
    path = write_doc(tmp_path, name, {"a": {"kind": "linux", "cmd": "sleep 600", "healthcheck": {
        "test": "echo >&2 not yet; exit 3", "retries": 2, "interval": 0.1}}})
    try:
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 1
        assert up.stderr == ("Error: node a: not healthy ('echo >&2 not yet; exit 3': exit status 3: "
                             "not yet)\n")
        assert namespaces(f"clab-{name}-") == []
    finally:
        open_lab(path).down()


@pytest.mark.parametrize("pod", ["a/b", "", "p" * 250, "a b", "..", "a;K8S_POD_NAMESPACE=x", "Web"])
def test_a_pod_name_is_checked_before_anything_is_made(tmp_path, pod):
    name = f"rt{uuid.uuid4().hex[:6]}"
    path = write_doc(tmp_path, name, {"a": {"kind": "linux", "image": "percale/node",
                                            "cmd": "percale-node"}})
    try:
        added = lab_cli("pod", "add", "-t", str(path), "a", pod)
        assert added.returncode == 1
        assert added.stderr == (f"Error: pod name {pod!r}: must be a DNS-1123 label (at most 63 "
                                "lowercase letters, digits and '-', beginning and ending with a "
                                "letter or digit), as Kubernetes names are\n")
        listed = lab_cli("pod", "list", "-t", str(path))
        assert listed.stdout.splitlines()[1:] == []
        assert not open_lab(path).dir.exists()
        namespace = lab_cli("pod", "add", "-t", str(path), "a", "web", "--namespace", "x;y")
        assert namespace.returncode == 1 and "Error: pod namespace 'x;y': must be" in namespace.stderr
    finally:
        open_lab(path).down()


def test_a_pod_is_recorded_only_once_its_namespace_exists(tmp_path):
    """A pod whose namespace could not be made is no pod (`pod list` would show a phantom), and
    a namespace of that name that some other tool made stays, with what runs in it."""
    name = f"rt{uuid.uuid4().hex[:6]}"
    path = write_doc(tmp_path, name, {"p": {"kind": "linux", "image": "percale/node",
                                            "cmd": "percale-node"}})
    lab = open_lab(path)
    try:
        lab._namespace(f"clab-{name}-p")  # the node, as `up` makes it (its agent not needed)
        with foreign_namespace(f"clab-{name}-p.web") as process:
            with pytest.raises(LabError, match=f"network namespace 'clab-{name}-p.web' exists already"):
                pods.add(lab, "p", "web")
            assert pods.pods(lab) == []
            # Made, then the ADD fails (this node has no CNI config): forgotten and removed.
            with pytest.raises(LabError, match="has no CNI network config"):
                pods.add(lab, "p", "web2")
            assert pods.pods(lab) == []
            assert namespaces(f"clab-{name}-p.") == [f"clab-{name}-p.web"]
            assert lab.down() == [f"clab-{name}-p"]
            assert untouched(f"clab-{name}-p.web", process)
    finally:
        open_lab(path).down()


def test_a_process_that_ended_before_it_was_recorded_is_not_waited_for():
    """A node whose cmd (`true`) ends before `up` reads its start time is recorded without one;
    `down` waited for ever for such a process to go (None matched None)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    record = {"pid": ended.pid, "start": None}
    assert not runner.alive(record)
    started = time.monotonic()
    runner._signal_session(record, signal.SIGTERM, 10)
    assert time.monotonic() - started < 1


def fxlab_name() -> str:
    return f"fxlab{uuid.uuid4().hex[:6]}"


def test_down_removes_the_pods_its_kubelets_recorded_and_no_other_labs(tmp_path):
    """A lab kubelet names its pods' namespaces `<its node's namespace>.<namespace>-<pod>`, and
    `down` took every namespace so named: lab A's down removed lab `A-k.b` (same prefix) and
    killed its processes. It takes what the kubelet recorded (<root>/pods/*/pod.json), so a
    kubelet that died still has its pods removed. A command killed by a signal exits as a
    shell says it (128 + the signal), not 247."""
    a = fxlab_name()
    b = f"{a}-k.b"
    root = tmp_path / "kroot"
    path_a = write_doc(tmp_path, a, {"k": {"kind": "linux", "cmd":
                                           f"percale-lab-kubelet --help --root={root}"}},
                       prefix="fxlab")
    path_b = write_doc(tmp_path, b, {"n": {"kind": "linux", "cmd": "sleep 600"}}, prefix="fxlab")
    pod_ns = f"fxlab-{a}-k.default-web"
    container = None
    try:
        for path in (path_a, path_b):
            up = lab_cli("up", "-t", str(path))
            assert up.returncode == 0, up.stderr
        # What a kubelet leaves when it is killed with its pod running.
        subprocess.run(["ip", "netns", "add", pod_ns], check=True)
        container = subprocess.Popen(["ip", "netns", "exec", pod_ns, "sleep", "600"])
        (root / "pods" / "u1").mkdir(parents=True)
        (root / "pods" / "u1" / "pod.json").write_text(json.dumps({
            "name": "web", "namespace": "default", "node": "k", "uid": "u1", "netns": pod_ns,
            "addresses": [], "containers": {"web": container.pid}}))
        # As docs/lab.md writes it: `--` ends percalectl's options (it was run as the command).
        assert lab_cli("pod", "exec", "-t", str(path_a), "web", "--", "true").returncode == 0
        assert lab_cli("exec", "-t", str(path_b), "n", "--", "true").returncode == 0
        killed = lab_cli("pod", "exec", "-t", str(path_a), "web", "sh", "-c", "kill -9 $$")
        assert killed.returncode == 128 + signal.SIGKILL, killed.stderr
        killed = lab_cli("exec", "-t", str(path_b), "n", "sh", "-c", "kill -9 $$")
        assert killed.returncode == 128 + signal.SIGKILL, killed.stderr
        b_pids = [pid for row in open_lab(path_b).status() for pid in row["pids"]]

        down = lab_cli("down", "-t", str(path_a))
        assert down.returncode == 0 and "removed 3 namespaces" in down.stdout, down.stderr
        assert namespaces(f"fxlab-{a}-") == [f"fxlab-{b}-mgmt", f"fxlab-{b}-n"]
        assert b_pids and not any(gone(pid) for pid in b_pids)
        assert container.wait(10) == -signal.SIGKILL
    finally:
        if container is not None and container.poll() is None:
            container.kill()
            container.wait()
        for path in (path_a, path_b):
            open_lab(path).down()
        subprocess.run(["ip", "netns", "del", pod_ns], capture_output=True)
    assert namespaces(f"fxlab-{a}") == []


def test_bind_paths_are_rewritten_once(tmp_path):
    """Exec commands, the healthcheck and `lab exec` were rewritten twice (by their callers and
    again by Lab.exec): with a bind /srv/x:/srv, /srv/sub became /srv/x/x/sub."""
    name = fxlab_name()
    target = tmp_path / "srv"
    host = target / "x"
    (host / "sub").mkdir(parents=True)
    check = f"test -d {target}/sub"
    path = write_doc(tmp_path, name, {"a": {
        "kind": "linux", "cmd": "sleep 600", "binds": [f"{host}:{target}"], "exec": [check],
        "healthcheck": {"test": check, "retries": 1}}})
    try:
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 0, up.stderr
        assert lab_cli("exec", "-t", str(path), "a", "test", "-d", f"{target}/sub").returncode == 0
        assert open_lab(path).exec("a", ["test", "-d", f"{target}/sub"]).returncode == 0
    finally:
        open_lab(path).down()
    assert namespaces(f"clab-{name}-") == []


def test_start_on_a_lab_that_is_down_is_one_line_and_writes_nothing(tmp_path):
    """It was a FileNotFoundError traceback that left an empty state.json, after which `up`
    refused ("already up")."""
    name = fxlab_name()
    path = write_doc(tmp_path, name, {"a": {"kind": "linux", "cmd": "sleep 600"}})
    try:
        started = lab_cli("start", "-t", str(path), "a")
        assert started.returncode == 1
        assert started.stderr == (f"Error: node a is not up (percalectl lab up -t "
                                  f"{open_lab(path).topology.path})\n")
        assert not open_lab(path).dir.exists()
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 0, up.stderr
    finally:
        open_lab(path).down()
    assert namespaces(f"clab-{name}-") == []


def test_down_works_when_the_file_no_longer_validates(tmp_path):
    """A file edited after `up` (or written for an older percale) that no longer validates:
    `down` refused, and the lab could be neither brought down nor up again. It goes by the
    file's name and prefix and what state.json records, and says so."""
    name = fxlab_name()
    nodes = {"a": {"kind": "linux", "cmd": "sleep 600"}, "b": {"kind": "linux", "cmd": "sleep 600"}}
    path = write_doc(tmp_path, name, nodes, prefix="fxlab")
    try:
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 0, up.stderr
        lab = open_lab(path)
        pids = [pid for row in lab.status() for pid in row["pids"]]
        write_doc(tmp_path, name, {**nodes, "b": {"kind": "ceos"}}, prefix="fxlab")
        assert lab_cli("status", "-t", str(path)).returncode == 1
        down = lab_cli("down", "-t", str(path))
        assert down.returncode == 0, down.stderr
        assert down.stderr == (f"lab {name}: {path}: topology.nodes.b.kind: 'ceos' is not a kind "
                               "this runner implements (linux, bridge, ovs-bridge); bringing down "
                               f"what {lab.state_file} records\n")
        assert down.stdout == f"lab {name}: removed 3 namespaces\n"
        assert namespaces(f"fxlab-{name}-") == [] and all(gone(pid) for pid in pids)
        assert not lab.dir.exists()

        write_doc(tmp_path, name, nodes, prefix="fxlab")
        up = lab_cli("up", "-t", str(path))
        assert up.returncode == 0, up.stderr
        path.write_text("name: [unclosed")
        down = lab_cli("down", "-t", str(path))
        assert down.returncode == 1
        assert down.stderr.startswith(f"Error: {path}: not valid YAML")
    finally:
        write_doc(tmp_path, name, nodes, prefix="fxlab")
        open_lab(path).down()
    assert namespaces(f"fxlab-{name}-") == []
