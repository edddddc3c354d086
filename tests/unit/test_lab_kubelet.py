"""The lab kubelet's pure parts: image names, Kubernetes' $(VAR) expansion, the order of binds."""

from __future__ import annotations

import json

import pytest

from percale.lab import kubelet

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("image,name", [
    ("percale/node:0.1.0", "percale/node"),
    ("registry.example.com:5000/percale/node:0.1.0", "percale/node"),
    ("percale/pause@sha256:abcd", "percale/pause"),
    ("quay.io/percale/node", "percale/node"),
])
def test_image_names_drop_registry_tag_and_digest(image, name):
    assert kubelet.image_name(image) == name


def test_expansion_follows_kubernetes_rules():
    env = {"NODENAME": "node1", "MTU": "1450"}
    assert kubelet.expand("--node-name=$(NODENAME)", env) == "--node-name=node1"
    assert kubelet.expand("$(MTU)$(MTU)", env) == "14501450"
    assert kubelet.expand("$(UNSET) stays", env) == "$(UNSET) stays"  # unknown: left as written
    assert kubelet.expand("$$(NODENAME)", env) == "$(NODENAME)"  # $$ escapes


def test_a_container_without_a_command_runs_what_its_image_maps_to():
    node = kubelet.Kubelet.__new__(kubelet.Kubelet)
    assert node.argv({"image": "percale/pause:3.10"}, {}) == ["sleep", "infinity"]
    assert node.argv({"image": "percale/node:0.1.0", "command": ["percalectl"],
                      "args": ["--node", "$(N)"]}, {"N": "x"}) == ["percalectl", "--node", "x"]
    with pytest.raises(RuntimeError, match="busybox"):
        node.argv({"image": "busybox"}, {})


def test_a_bind_that_covers_another_bind_source_goes_last(tmp_path):
    node = kubelet.Kubelet.__new__(kubelet.Kubelet)
    node.root = tmp_path / "run" / "percale" / "lab" / "node1"
    pod = {"spec": {"volumes": [
        {"name": "run", "hostPath": {"path": "/var/run/percale"}},
        {"name": "netns", "hostPath": {"path": "/var/run/netns"}},
        {"name": "bin", "hostPath": {"path": "/opt/cni/bin"}}]}}
    container = {"volumeMounts": [{"name": "run", "mountPath": str(tmp_path / "run" / "percale")},
                                  {"name": "netns", "mountPath": "/var/run/netns"},
                                  {"name": "bin", "mountPath": "/host/opt/cni/bin"}]}
    running = kubelet.RunningPod("uid", "p", "ns", None)
    binds = node.mounts(pod, container, running)
    # /var/run/netns is the machine's own (shared), so not bound; the bind onto .../run/percale
    # would hide the node's directory, where the other source lives: it comes last.
    assert [target for _, target in binds] == ["/host/opt/cni/bin", str(tmp_path / "run" / "percale")]


@pytest.mark.parametrize("cmd", ["percale-lab-kubelet --node-name k --root {root}",
                                 "percale-lab-kubelet --root={root} --node-name k",
                                 "percale-lab-kubelet --root /elsewhere --root={root}"])
def test_the_lab_finds_a_kubelets_pods_under_its_root_in_either_form(tmp_path, monkeypatch, cmd):
    """`--root=DIR` is what argparse takes too: the lab looked only for `--root DIR`, and
    `lab up`, `status` and `pod list` failed with "'--root' is not in list"."""
    from percale.lab import pods, runner
    from percale.lab.topology import parse

    monkeypatch.setattr(runner, "LAB_ROOT", tmp_path / "labs")
    root = tmp_path / "root"
    (root / "pods" / "u1").mkdir(parents=True)
    record = {"name": "web", "namespace": "default", "node": "k", "uid": "u1",
              "netns": "clab-t-k.default-web", "addresses": ["10.0.0.5"], "containers": {"web": 1}}
    (root / "pods" / "u1" / "pod.json").write_text(json.dumps(record))
    doc = {"name": "t", "topology": {"nodes": {"k": {"kind": "linux",
                                                     "cmd": cmd.format(root=root)}}}}
    lab = runner.Lab(parse(doc, tmp_path / "t.clab.yml"))
    assert pods.kubelet_pods(lab) == [record]


@pytest.mark.parametrize("cmd", ["percale-lab-kubelet --node-name k",
                                 "percale-lab-kubelet --root", "percale-lab-kubelet 'unclosed"])
def test_a_kubelet_without_a_root_has_no_pods(tmp_path, monkeypatch, cmd):
    """Such a kubelet does not start (--root is required); the lab's commands go on."""
    from percale.lab import pods, runner
    from percale.lab.topology import parse

    monkeypatch.setattr(runner, "LAB_ROOT", tmp_path / "labs")
    doc = {"name": "t", "topology": {"nodes": {"k": {"kind": "linux", "cmd": cmd}}}}
    assert pods.kubelet_pods(runner.Lab(parse(doc, tmp_path / "t.clab.yml"))) == []
