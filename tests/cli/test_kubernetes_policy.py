"""Policy on the Kubernetes datastore, against a real kube-apiserver: Kubernetes NetworkPolicies
are read where kubectl writes them (networking.k8s.io) and served converted beside percale's own;
Namespaces are the profiles, their labels what namespaceSelectors match; both are followed by
the watch the agent's view uses; and percale refuses to write what kubectl owns."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from percale.datastore import DatastoreError, Key
from tests.cli.conftest import CLI
from tests.helpers.store import open_store

SEED = Path(__file__).resolve().parents[2] / "examples" / "policy" / "allow-frontend-to-backend.yaml"


@pytest.fixture
def namespace(kube):
    name = f"pol-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    kube.kubectl("label", "namespace", name, "team=blue")
    yield name
    kube.kubectl("delete", "networkpolicies", "--all", "-n", name, "--wait=false")


def seed_in(namespace: str) -> str:
    return SEED.read_text().replace("namespace: production", f"namespace: {namespace}")


def test_kubernetes_policies_and_namespaces_are_read_converted(kube, namespace):
    kube.kubectl("apply", "-f", "-", input=seed_in(namespace))
    own = {"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "own", "namespace": namespace},
           "spec": {"order": 5, "selector": "all()", "ingress": [{"action": "Deny"}]}}
    kube.kubectl("apply", "-f", "-", input=json.dumps(own))

    async def read():
        store = open_store(kube.admin)
        try:
            policies = (await store.list("NetworkPolicy", namespace)).items
            profile = await store.get(Key("Profile", f"kns.{namespace}"))
            converted = await store.get(Key("NetworkPolicy", "knp.default.allow-frontend-to-backend", namespace))
            return policies, profile, converted
        finally:
            await store.close()

    policies, profile, converted = asyncio.run(read())
    assert [kv.key.name for kv in policies] == ["knp.default.allow-frontend-to-backend", "own"]
    assert converted.value.spec.order == 1000 and converted.value.spec.types == ["Ingress", "Egress"]
    assert converted.value.spec.ingress[0].destination.ports == [8080]
    assert profile.value.spec.labels_to_apply == {"kubernetes.io/metadata.name": namespace, "team": "blue"}

    cli = CLI(kube.admin)
    listed = cli("get", "networkpolicies", "-n", namespace, "-o", "wide")
    assert listed.code == 0, listed.err
    rows = [line.split() for line in listed.out.splitlines()[1:] if line]
    assert [(r[1], r[-1]) for r in rows] == [("knp.default.allow-frontend-to-backend", "kubernetes"),
                                             ("own", "percale")]


def test_the_watch_follows_kubernetes_policies_and_namespace_labels(kube, namespace):
    async def watch():
        store = open_store(kube.admin)
        try:
            start = (await store.list("NetworkPolicy")).revision
            profiles = (await store.list("Profile")).revision
            policy_events = store.watch("NetworkPolicy", revision=start)
            profile_events = store.watch("Profile", revision=profiles)
            await asyncio.to_thread(kube.kubectl, "apply", "-f", "-", input=seed_in(namespace))
            own = {"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "own", "namespace": namespace}, "spec": {}}
            await asyncio.to_thread(kube.kubectl, "apply", "-f", "-", input=json.dumps(own))
            seen = set()
            while len(seen) < 2:
                event = await asyncio.wait_for(policy_events.__anext__(), 30)
                seen.add((event.type, event.key.name))
            await asyncio.to_thread(kube.kubectl, "label", "namespace", namespace, "team=red", "--overwrite")
            while True:
                event = await asyncio.wait_for(profile_events.__anext__(), 30)
                if event.key.name == f"kns.{namespace}" and event.value.spec.labels_to_apply.get("team") == "red":
                    break
            await policy_events.aclose()
            await profile_events.aclose()
            return seen
        finally:
            await store.close()

    assert asyncio.run(watch()) == {("ADDED", "knp.default.allow-frontend-to-backend"), ("ADDED", "own")}


def test_percale_does_not_write_what_kubectl_owns(kube, namespace):
    kube.kubectl("apply", "-f", "-", input=seed_in(namespace))
    cli = CLI(kube.admin)
    refused = cli("delete", "networkpolicy", "knp.default.allow-frontend-to-backend", "-n", namespace)
    assert refused.code != 0 and "kubectl" in refused.err, refused.err

    async def write_profile():
        store = open_store(kube.admin)
        try:
            current = await store.get(Key("Profile", f"kns.{namespace}"))
            with pytest.raises(DatastoreError, match="Namespace"):
                await store.update(current.value, revision=current.revision)
        finally:
            await store.close()
    asyncio.run(write_profile())
    assert kube.kubectl("get", "networkpolicy", "allow-frontend-to-backend", "-n", namespace).returncode == 0
