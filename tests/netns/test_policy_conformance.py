"""Network policy conformance on two real percale nodes (meshed over BGP, real etcd, real nft):
pods x/a .. z/c and one host outside the pools, every ordered pair probed on TCP and UDP 80 and
81 after each case's policies are stored; the expected matrix comes from the reference evaluator
(percale/policy/reference.py), which knows nothing of the compiler. Cases in the style of the
upstream e2e suite and Cyclonus, plus Calico's Deny, Pass and order."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from percale.api import Profile, WorkloadEndpoint, parse
from percale.api.k8s_policy import parse_kubernetes_policy
from percale.datastore import Key
from percale.policy.convert import convert
from percale.policy.reference import Endpoint, Flow, NamedPort, World
from tests.helpers.cni_node import meshed_pair, netconf
from tests.helpers.policy_matrix import (
    EXTERNAL_ADDRESS,
    NAMED_PORTS,
    PORTS,
    PROTOCOLS,
    Party,
    add_external_host,
    differences,
    empty_etcd,
    probe_all,
    serve,
)
from tests.helpers.store import with_store

pytestmark = pytest.mark.netns

NAMESPACES, PODS = "xyz", "abc"
EXTERNAL = "external"
SETTLE = 5.0  # seconds a case may take to be in force everywhere before it counts as failed


def ns_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace, "ns": namespace}


@dataclass
class Conformance:
    endpoint: str
    parties: list[Party]
    pods: dict[str, Endpoint]  # x/a -> the reference's view of it
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def reference_party(self, name: str):
        if name == EXTERNAL:
            return EXTERNAL_ADDRESS
        pod = self.pods[name]
        return Endpoint(pod.name, pod.namespace, pod.address, self.labels[name],
                        self.namespace_labels[pod.namespace], pod.ports)

    def expected(self, world: World) -> dict:
        return {(a.name, b.name, proto, port): world.allowed(Flow(
                    self.reference_party(a.name), self.reference_party(b.name), proto, port))
                for a in self.parties for b in self.parties if a is not b
                for proto in PROTOCOLS for port in PORTS}

    def store_policies(self, kubernetes: list, percale: list) -> None:
        wanted = [convert(p) for p in kubernetes] + list(percale)

        async def write(store):
            for kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
                for kv in (await store.list(kind)).items:
                    if not any(Key.of(w) == kv.key for w in wanted):
                        await store.delete(kv.key, revision=kv.revision)
            for policy in wanted:
                current = await store.get(Key.of(policy)) if await _exists(store, policy) else None
                if current is None:
                    await store.create(policy)
                else:
                    await store.update(policy, revision=current.revision)
        with_store(self.endpoint, write)

    def relabel_pod(self, name: str, labels: dict[str, str]) -> None:
        self.labels[name] = labels
        namespace = name.split("/")[0]

        async def write(store):
            for kv in (await store.list("WorkloadEndpoint")).items:
                endpoint: WorkloadEndpoint = kv.value
                if endpoint.metadata.namespace == namespace and endpoint.spec.pod == name.split("/")[1]:
                    meta = endpoint.metadata.model_copy(update={"labels": labels})
                    await store.update(endpoint.model_copy(update={"metadata": meta}), revision=kv.revision)
        with_store(self.endpoint, write)

    def relabel_namespace(self, namespace: str, labels: dict[str, str]) -> None:
        self.namespace_labels[namespace] = {"kubernetes.io/metadata.name": namespace, **labels}

        async def write(store):
            kv = await store.get(Key("Profile", f"kns.{namespace}"))
            spec = kv.value.spec.model_copy(update={"labels_to_apply": labels})
            await store.update(kv.value.model_copy(update={"spec": spec}), revision=kv.revision)
        with_store(self.endpoint, write)

    def check(self, world: World) -> list[str]:
        """Probe until the matrix is the expected one, or SETTLE seconds: the differences."""
        expected = self.expected(world)
        deadline = time.monotonic() + SETTLE
        while True:
            found = differences(probe_all(self.parties, timeout=0.5), expected)
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


async def _exists(store, resource) -> bool:
    from percale.datastore import NotFound
    try:
        await store.get(Key.of(resource))
        return True
    except NotFound:
        return False


@pytest.fixture(scope="module")
def conformance(etcd_server):
    empty_etcd(etcd_server)
    a, b = meshed_pair(etcd_server.endpoint, etcd_server.unix_endpoint)
    servers = []
    try:
        async def profiles(store):
            for namespace in NAMESPACES:
                await store.create(Profile.model_validate({
                    "metadata": {"name": f"kns.{namespace}"},
                    "spec": {"labelsToApply": {"ns": namespace}}}))
        with_store(etcd_server.endpoint, profiles)
        parties, pods, labels = [], {}, {}
        for i, (namespace, pod) in enumerate((n, p) for n in NAMESPACES for p in PODS):
            node = (a, b)[i % 2]
            netns = node.new_pod_netns()
            conf = netconf(node, args={
                "cni": {"labels": [{"key": "pod", "value": pod}]},
                "percale": {"namedPorts": [{"name": n, "protocol": p, "port": port}
                                           for n, p, port in NAMED_PORTS]}})
            added = node.plugin("percale", "ADD", conf, container_id=f"c-{netns}", netns=netns,
                                args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}")
            assert added.code == 0, added.out
            address = added.json["ips"][0]["address"].split("/")[0]
            name = f"{namespace}/{pod}"
            parties.append(Party(name, netns, address))
            pods[name] = Endpoint(pod, namespace, address,
                                  ports=tuple(NamedPort(*p) for p in NAMED_PORTS))
            labels[name] = {"pod": pod}
        external = add_external_host(a, b)
        parties.append(Party(EXTERNAL, external, EXTERNAL_ADDRESS))
        servers = [serve(p.netns) for p in parties]
        world = Conformance(etcd_server.endpoint, parties, pods, labels,
                            {n: ns_labels(n) for n in NAMESPACES})
        # Every pod reaches every pod before any policy: routes learned, chains in.
        assert world.check(World()) == []
        yield world
    finally:
        for server in servers:
            server.kill()
            server.wait()
        a.stop()
        b.stop()


def k8s(namespace: str = "x", name: str = "p", **spec):
    return parse_kubernetes_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                    "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def own(spec: dict, name: str = "own", namespace: str | None = "x"):
    kind = "NetworkPolicy" if namespace else "GlobalNetworkPolicy"
    return parse({"apiVersion": "percale.io/v1", "kind": kind,
                  "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
                  "spec": spec})


POD = lambda p: {"matchLabels": {"pod": p}}  # noqa: E731
NS = lambda n: {"matchLabels": {"ns": n}}  # noqa: E731

# (id, Kubernetes policies, percale policies)
CASES = [
    ("deny-all-ingress", [k8s(podSelector={})], []),
    ("deny-all-egress", [k8s(podSelector={}, policyTypes=["Egress"])], []),
    ("deny-all-both", [k8s(podSelector={}, policyTypes=["Ingress", "Egress"])], []),
    ("allow-all-ingress-wins-over-deny", [k8s(podSelector={}), k8s(name="q", podSelector={}, ingress=[{}])], []),
    ("one-target-under-deny-all", [k8s(podSelector={}),
                                   k8s(name="q", podSelector=POD("a"), ingress=[{}])], []),
    ("from-pod-in-own-namespace", [k8s(podSelector=POD("a"), ingress=[{"from": [{"podSelector": POD("b")}]}])], []),
    ("from-namespace", [k8s(podSelector=POD("a"), ingress=[{"from": [{"namespaceSelector": NS("y")}]}])], []),
    ("pod-and-namespace", [k8s(podSelector=POD("a"), ingress=[{"from": [
        {"namespaceSelector": NS("y"), "podSelector": POD("b")}]}])], []),
    ("pod-or-namespace", [k8s(podSelector=POD("a"), ingress=[{"from": [
        {"namespaceSelector": NS("y")}, {"podSelector": POD("b")}]}])], []),
    ("all-namespaces-not-outside", [k8s(podSelector=POD("a"), ingress=[{"from": [{"namespaceSelector": {}}]}])], []),
    ("match-expressions", [k8s(podSelector={"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                               ingress=[{"from": [{"namespaceSelector": {"matchExpressions": [
                                   {"key": "ns", "operator": "NotIn", "values": ["x"]}]},
                                   "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]}}]}])], []),
    ("port-81-only", [k8s(podSelector={}, ingress=[{"ports": [{"port": 81}]}])], []),
    ("stacked-80-then-81", [k8s(podSelector={}, ingress=[{"ports": [{"port": 80}]}]),
                            k8s(name="q", podSelector={}, ingress=[{"ports": [{"port": 81, "protocol": "UDP"}]}])], []),
    ("named-port-ingress", [k8s(podSelector=POD("a"), ingress=[{"ports": [{"port": "serve-81-tcp"}]}])], []),
    ("named-port-from-namespace", [k8s(podSelector={}, ingress=[{"from": [{"namespaceSelector": NS("z")}],
                                                                 "ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}])], []),
    ("named-port-egress", [k8s(podSelector=POD("a"), policyTypes=["Egress"],
                               egress=[{"ports": [{"port": "serve-80-tcp"}]}])], []),
    ("named-port-wrong-protocol", [k8s(podSelector={}, ingress=[{"ports": [{"port": "serve-80-udp", "protocol": "TCP"}]}])], []),
    ("end-port-range", [k8s(podSelector={}, ingress=[{"ports": [{"port": 79, "endPort": 80}]}])], []),
    ("protocol-only-udp", [k8s(podSelector={}, ingress=[{"ports": [{"protocol": "UDP"}]}])], []),
    ("egress-to-namespace-pod", [k8s(podSelector=POD("a"), policyTypes=["Egress"],
                                     egress=[{"to": [{"namespaceSelector": NS("y"), "podSelector": POD("a")}]}])], []),
    ("egress-rules-without-policy-types", [k8s(podSelector=POD("b"), egress=[{}])], []),
    ("client-egress-deny-beats-server-allow", [k8s(podSelector=POD("a"), policyTypes=["Egress"]),
                                               k8s("y", "q", podSelector={}, ingress=[{}])], []),
    ("ip-block-pod-address", None, []),  # built from the world's addresses (below)
    ("ip-block-except", None, []),
    ("ip-block-external", [k8s(podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}])], []),
    ("egress-dns-only", [k8s(podSelector={}, policyTypes=["Egress"],
                             egress=[{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}])], []),
    ("ingress-and-egress-independent", [k8s(podSelector=POD("c"), policyTypes=["Ingress", "Egress"],
                                            ingress=[{"from": [{"podSelector": POD("a")}]}],
                                            egress=[{"to": [{"namespaceSelector": NS("z")}]}])], []),
    ("calico-deny-before-allow", [], [
        own({"order": 10, "selector": "pod == 'a'", "ingress": [
            {"action": "Deny", "source": {"selector": "pod == 'b'", "namespaceSelector": "all()"}}]}, "deny"),
        own({"order": 20, "selector": "pod == 'a'", "ingress": [{"action": "Allow"}]}, "allow")]),
    ("calico-pass-to-profile", [], [
        own({"order": 5, "selector": "all()", "ingress": [
            {"action": "Pass", "protocol": "UDP"}]}, "pass"),
        own({"order": 20, "selector": "all()", "ingress": [
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": [81]}}]}, "allow")]),
    # A pass skips every later policy, a Deny among them too, and the profile decides.
    ("calico-pass-skips-a-later-deny", [], [
        own({"order": 5, "selector": "pod == 'a'", "ingress": [
            {"action": "Pass", "protocol": "UDP"}]}, "pass"),
        own({"order": 20, "selector": "pod == 'a'", "ingress": [
            {"action": "Deny", "protocol": "UDP"}, {"action": "Allow", "protocol": "TCP"}]}, "deny")]),
    ("calico-global-deny-with-k8s-allow", [k8s(podSelector={}, ingress=[{}])], [
        own({"order": 1, "selector": "pod == 'c'", "namespaceSelector": "ns == 'z'", "ingress": [
            {"action": "Deny", "protocol": "TCP", "source": {"nets": ["0.0.0.0/0"]},
             "destination": {"ports": [80]}}]}, "g", namespace=None)]),
    ("calico-not-ports-and-log", [], [
        own({"selector": "all()", "egress": [
            {"action": "Log"},
            {"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [81]}},
            {"action": "Allow", "protocol": "UDP", "destination": {"notSelector": "pod == 'c'"}}]}, "eg")]),
    # A notSelector alone keeps to the policy's namespace, as Calico scopes any selector there:
    # y/*, z/* and the outside host stay out (it let them all in).
    ("calico-not-selector-alone-stays-in-namespace", [], [
        own({"selector": "pod == 'a'", "ingress": [
            {"action": "Allow", "source": {"notSelector": "pod == 'b'"}}]}, "not-b")]),
    # Calico's own endpoint labels, as policies written for Calico use them: they matched
    # nothing, so this Deny denied nothing.
    ("calico-builtin-endpoint-labels", [], [
        own({"order": 1, "selector": "projectcalico.org/namespace == 'x' && pod == 'a'",
             "ingress": [{"action": "Deny", "source": {
                 "selector": "projectcalico.org/orchestrator == 'k8s' && "
                             "projectcalico.org/namespace == 'y'"}},
                         {"action": "Pass"}]}, "g", namespace=None)]),
]


def _ip_block_cases(world: Conformance) -> dict[str, list]:
    y_b = next(p.address for p in world.parties if p.name == "y/b")
    x_b = next(p.address for p in world.parties if p.name == "x/b")
    return {
        "ip-block-pod-address": [k8s(podSelector=POD("a"), policyTypes=["Egress"],
                                     egress=[{"to": [{"ipBlock": {"cidr": f"{y_b}/32"}}]}])],
        "ip-block-except": [k8s(podSelector=POD("a"), ingress=[{"from": [
            {"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"{x_b}/32"]}}]}])],
    }


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conformance(conformance, case):
    name, kubernetes, percale = case
    if kubernetes is None:
        kubernetes = _ip_block_cases(conformance)[name]
    conformance.store_policies(kubernetes, percale)
    world = World(kubernetes, percale)
    assert conformance.check(world) == []


def test_a_pod_relabelled_into_and_out_of_isolation(conformance):
    policy = k8s(podSelector={"matchLabels": {"isolated": "yes"}})
    conformance.store_policies([policy], [])
    conformance.relabel_pod("y/b", {"pod": "b", "isolated": "yes"})
    try:
        assert conformance.check(World([policy])) == []
    finally:
        conformance.relabel_pod("y/b", {"pod": "b"})
    assert conformance.check(World([policy])) == []


def test_a_namespace_relabelled(conformance):
    policy = k8s(podSelector={}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}])
    conformance.store_policies([policy], [])
    conformance.relabel_namespace("z", {"ns": "z", "team": "blue"})
    try:
        assert conformance.check(World([policy])) == []
    finally:
        conformance.relabel_namespace("z", {"ns": "z"})
    assert conformance.check(World([policy])) == []


def test_policy_deleted_restores_traffic(conformance):
    conformance.store_policies([k8s(podSelector={}, policyTypes=["Ingress", "Egress"])], [])
    conformance.store_policies([], [])
    assert conformance.check(World()) == []
