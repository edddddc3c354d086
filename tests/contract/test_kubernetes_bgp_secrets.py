"""BGP passwords on the Kubernetes datastore, read from the Secret through a real kube-apiserver
(bgpd/secret_sources.py `SecretsFromAPI`). percale-node read them only from files under
--secrets-dir, which the operator's DaemonSet never passes: on an operator install every
BGPPeer password was dropped. Calico's calico-node reads the Secret from its own namespace,
given a Role and RoleBinding the user creates; so does percale-node now."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from percale.bgpd import agent as agent_module
from percale.bgpd.agent import BGPAgent
from percale.bgpd.peering import SecretRef
from percale.bgpd.secret_sources import SecretsFromAPI, choose
from percale.datastore import MemoryDatastore
from percale.datastore.cache import Cache
from percale.datastore.kube_client import KubeClient, configuration
from percale.datastore.kubernetes import KubeDatastore
from tests.helpers.bgp_lab import resource
from tests.unit.test_bgp_secrets import RecordedSpeaker

pytestmark = pytest.mark.contract

NAMESPACE = "fxs-bgp-secrets"
REF = SecretRef("bgp", "tor")


@pytest.fixture
def secrets_namespace(kube):
    """An empty namespace for percale-node (namespaces outlive `wipe`: its objects go here)."""
    if kube.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        kube.kubectl("create", "namespace", NAMESPACE)
    kube.kubectl("delete", "secrets,roles,rolebindings", "--all", "-n", NAMESPACE)
    return kube


def put_secret(kube, values: dict[str, str]) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "bgp", "namespace": NAMESPACE}, "stringData": values}
    kube.kubectl("apply", "-f", "-", input=json.dumps(secret))


async def source_for(kubeconfig: str) -> tuple[SecretsFromAPI, KubeClient]:
    client = KubeClient(await configuration(kubeconfig))
    return SecretsFromAPI(client, NAMESPACE), client


def told(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "percale.bgpd" and r.levelno >= logging.ERROR]


async def test_a_secret_is_read_and_its_rotation_seen(secrets_namespace):
    put_secret(secrets_namespace, {"tor": "first-pw", "other": "x"})
    source, client = await source_for(secrets_namespace.admin)
    try:
        assert await source.read(REF) == "first-pw"
        first = await source.version(REF)
        assert await source.version(REF) == first
        # Another key of the Secret changing changes nothing of this password.
        put_secret(secrets_namespace, {"tor": "first-pw", "other": "y"})
        assert await source.version(REF) == first
        put_secret(secrets_namespace, {"tor": "second-pw\n", "other": "y"})
        assert await source.version(REF) != first
        assert await source.read(REF) == "second-pw"  # its line break left out, as from a file
    finally:
        await client.close()


async def test_a_missing_secret_or_key_is_said_once_naming_both(secrets_namespace, caplog):
    source, client = await source_for(secrets_namespace.admin)
    try:
        for _ in range(3):
            assert await source.read(REF) is None
        (said,) = told(caplog)
        assert f"Secret {NAMESPACE}/bgp, key 'tor'" in said and "no such Secret" in said
        assert f"create it in namespace {NAMESPACE}" in said
        before = await source.version(REF)

        caplog.clear()
        put_secret(secrets_namespace, {"not-tor": "pw"})
        assert await source.version(REF) != before  # the agent configures again: said anew
        for _ in range(3):
            assert await source.read(REF) is None
        (said,) = told(caplog)
        assert "'tor'" in said and "no such key" in said

        caplog.clear()
        put_secret(secrets_namespace, {"not-tor": "pw", "tor": 'bad"pw'})
        assert await source.read(REF) is None and await source.read(REF) is None
        (said,) = told(caplog)
        assert "cannot be used" in said and "double quote" in said

        caplog.clear()
        put_secret(secrets_namespace, {"tor": "good-pw"})
        assert await source.read(REF) == "good-pw"
        assert told(caplog) == []
    finally:
        await client.close()


async def test_a_node_without_the_role_is_told_which_role_to_create(secrets_namespace, caplog):
    kube = secrets_namespace
    put_secret(kube, {"tor": "pw-1"})
    kube.node("node-a", "10.0.0.1")
    node_a = kube.kubeconfig("percale-node:node-a", groups=("percale:nodes",))
    source, client = await source_for(node_a)
    try:
        for _ in range(3):
            assert await source.read(REF) is None
        (said,) = told(caplog)
        assert "may not read" in said and f"Secret {NAMESPACE}/bgp, key 'tor'" in said
        assert f"create a Role in namespace {NAMESPACE}" in said and "RoleBinding" in said
        assert "resourceNames: [bgp]" in said and "forbidden" in said.lower()
        forbidden = await source.version(REF)

        # The Role and RoleBinding the message asks for (Calico's docs: "allow calico-node to
        # read the secret"): the next look sees the password.
        kube.kubectl("create", "role", "bgp-secrets", "-n", NAMESPACE, "--verb=get",
                     "--resource=secrets", "--resource-name=bgp")
        kube.kubectl("create", "rolebinding", "bgp-secrets", "-n", NAMESPACE,
                     "--role=bgp-secrets", "--group=percale:nodes")

        async def readable():
            for _ in range(50):
                if await source.version(REF) != forbidden:
                    return
                await asyncio.sleep(0.1)
        await readable()
        assert await source.read(REF) == "pw-1"
    finally:
        await client.close()


async def test_on_the_kubernetes_datastore_the_api_is_the_source(secrets_namespace, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("NAMESPACE", NAMESPACE)
    store = KubeDatastore(secrets_namespace.admin)
    try:
        chosen = choose(None, store)
        assert isinstance(chosen, SecretsFromAPI) and chosen.namespace == NAMESPACE
        assert type(choose(tmp_path, store)).__name__ == "SecretFiles"  # --secrets-dir wins
        assert type(choose(None, MemoryDatastore())).__name__ == "NoSecrets"
    finally:
        await store.client.close()


async def test_a_rotated_secret_reaches_exabgps_configuration(secrets_namespace, tmp_path,
                                                              monkeypatch):
    """The agent with the API as its source: no password until the Secret exists, then each
    rotation, at the secret check."""
    monkeypatch.setattr(agent_module, "SECRET_CHECK_SECONDS", 0.1)
    store = MemoryDatastore()
    await store.create(resource("Node", "a", {"bgp": {"ipv4Address": "10.0.0.1/24"}}))
    await store.create(resource("BGPPeer", "tor", {
        "peerIP": "10.0.0.9", "asNumber": 64600,
        "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}}}))
    cache = Cache(store, node="a")
    source, client = await source_for(secrets_namespace.admin)
    agent = BGPAgent(cache, "a", tmp_path / "bgp", secrets=source)
    exabgp = RecordedSpeaker(agent.speaker)
    following = asyncio.ensure_future(cache.run())
    await cache.wait_synced()
    loops = [asyncio.ensure_future(loop) for loop in (agent._configuring(), agent._housekeeping())]
    agent._configure_due.set()

    async def configured_with(lines: list[str]) -> None:
        for _ in range(100):
            if exabgp.configs and exabgp.md5_lines() == lines:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"ExaBGP's md5 lines stayed {exabgp.md5_lines()}, not {lines}")

    try:
        await configured_with([])
        put_secret(secrets_namespace, {"tor": "first-pw"})
        await configured_with(['md5-password "first-pw";'])
        put_secret(secrets_namespace, {"tor": "second-pw"})
        await configured_with(['md5-password "second-pw";'])
        count = len(exabgp.configs)
        await asyncio.sleep(0.4)
        assert len(exabgp.configs) == count  # nothing changed: nothing configured again
    finally:
        for task in (*loops, following):
            task.cancel()
        await asyncio.gather(*loops, following, return_exceptions=True)
        await client.close()
