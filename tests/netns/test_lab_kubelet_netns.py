"""The lab kubelet and network namespaces it did not make: a pod whose namespace name is taken
fails to start, and the undo after that failure leaves the namespace that was there."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from percale.lab import kubelet

pytestmark = pytest.mark.netns


class _NoAPI:
    def call(self, method, path, body=None):
        return 404, {}


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_a_failed_start_leaves_a_namespace_of_the_same_name_alone(tmp_path):
    prefix = f"rvk-{uuid.uuid4().hex[:6]}"
    theirs = f"{prefix}.default-web-0"
    subprocess.run(["ip", "netns", "add", theirs], check=True)
    try:
        node = object.__new__(kubelet.Kubelet)
        node.api, node.root, node.pods, node.netns_prefix = _NoAPI(), tmp_path, {}, prefix
        node.node, node.ip = "node1", "10.0.0.1"
        pod = {"metadata": {"uid": "u1", "name": "web-0", "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": "percale/pause"}]}}
        with pytest.raises(RuntimeError, match=f"cannot make network namespace {theirs}"):
            node.start(pod)
        # What sync does after a failed start: the runtime's undo of the pod.
        node.teardown(node.pods.pop("u1"))
        assert theirs in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", theirs], check=False)
