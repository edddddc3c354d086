"""The lab kubelet's pure parts: image names, Kubernetes' $(VAR) expansion, the order of binds."""

from __future__ import annotations

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
