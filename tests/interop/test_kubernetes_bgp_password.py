"""A BGP password on the Kubernetes datastore, as an operator install runs percale-node (no
--secrets-dir, no Secret mounted): BIRD requires TCP-MD5, the BGPPeer names a Secret in the
namespace percale-node runs in, and the node reads it through the apiserver once the Role and
RoleBinding that let it are there; a rotation reaches the session. percale-node used to read
passwords only from --secrets-dir, so this session never came up."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from tests.helpers.bgp_lab import BirdPeer, Router, bird_config, diagnose, resource, setup_store
from tests.helpers.bgp_lab import wait_for
from tests.helpers.cni_node import CNINode

pytestmark = pytest.mark.interop

NETNS_PREFIX = "fxs"
NAMESPACE = "fxs-node-secrets"
NODE_AS, TOR_AS = 64513, 64600


@dataclass
class PrefixedRouter(Router):
    @property
    def ns(self) -> str:
        return f"{NETNS_PREFIX}r{self.tag}"


def put_secret(kube, password: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "bgp", "namespace": NAMESPACE}, "stringData": {"tor": password}}
    kube.kubectl("apply", "-f", "-", input=json.dumps(secret))


def test_a_password_from_a_secret_read_through_the_api(kube, monkeypatch):
    if kube.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        kube.kubectl("create", "namespace", NAMESPACE)
    kube.kubectl("delete", "secrets,roles,rolebindings", "--all", "-n", NAMESPACE)
    put_secret(kube, "first-pw")
    # The namespace percale-node runs in, as the DaemonSet's pod would know it.
    monkeypatch.setenv("NAMESPACE", NAMESPACE)
    router = PrefixedRouter()
    node = CNINode("", name=f"{NETNS_PREFIX}n{uuid.uuid4().hex[:6]}", kube=kube)

    def config(password: str) -> str:
        return bird_config(router.ip, [BirdPeer("node_a", router.ip, TOR_AS, "10.99.0.1",
                                                NODE_AS, password=password)])

    def md5_lines() -> list[str]:
        conf = node.workdir / "bgp" / "exabgp.conf"
        return [line.strip() for line in conf.read_text().splitlines() if "md5" in line]

    def agent_log() -> str:
        return (node.workdir / "agent.log").read_text(errors="replace")

    try:
        router.up()
        node.start()
        router.attach(node.netns, "10.99.0.1/24")
        router.bird(config("first-pw"))
        setup_store(
            SimpleNamespace(endpoint=kube.admin),
            resource("Node", node.name, {"bgp": {"ipv4Address": "10.99.0.1/24",
                                                 "asNumber": NODE_AS}}),
            resource("BGPPeer", "tor", {
                "peerIP": router.ip, "asNumber": TOR_AS,
                "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}}}))
        # percale-node's identity may not read Secrets: no password, and it says what to create.
        assert wait_for(lambda: "RoleBinding" in agent_log(), 30), agent_log()[-3000:]
        assert md5_lines() == []
        kube.kubectl("create", "role", "bgp-secrets", "-n", NAMESPACE, "--verb=get",
                     "--resource=secrets", "--resource-name=bgp")
        kube.kubectl("create", "rolebinding", "bgp-secrets", "-n", NAMESPACE,
                     "--role=bgp-secrets", "--group=percale:nodes")
        assert wait_for(lambda: router.bird_established("node_a"), 40), diagnose(router, node)
        assert md5_lines() == ['md5-password "first-pw";']

        put_secret(kube, "second-pw")
        router.bird_reconfigure(config("second-pw"))
        assert wait_for(lambda: md5_lines() == ['md5-password "second-pw";'], 20), md5_lines()
        assert wait_for(lambda: router.bird_established("node_a"), 30), diagnose(router, node)
        assert "BGP password secret bgp changed" in agent_log()
        assert agent_log().count("may not read") == 1  # said once, not at every look
    finally:
        node.stop()
        router.down()
