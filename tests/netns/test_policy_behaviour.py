"""Policy as a user lives with it, on two real percale nodes: the seed's Kubernetes policy applied
verbatim with percalectl; connections that survive an unrelated change; a new deny in force
within the second; bad policies refused with the field named and nothing in the kernel changed;
an agent restarted without a moment of wrong traffic."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from percale.api import Profile
from tests.helpers.cni_node import VENV_BIN, meshed_pair, netconf
from tests.helpers.policy_matrix import (
    EXTERNAL_ADDRESS,
    Party,
    add_external_host,
    empty_etcd,
    reaches,
    serve,
    socket_in,
)
from tests.helpers.store import store_env, with_store

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "policy" / "allow-frontend-to-backend.yaml"
# (namespace, pod, app label, node index, ports it serves)
PODS = [("production", "frontend", "frontend", 0, (80,)),
        ("production", "backend", "backend", 1, (8080, 80)),
        ("production", "database", "database", 0, (5432, 5433)),
        ("staging", "other", "other", 1, (8080,))]


class World:
    def __init__(self, endpoint: str, nodes, parties: dict[str, Party]):
        self.endpoint, self.nodes, self.parties = endpoint, nodes, parties

    def percalectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "percalectl"), *args], input=input, text=True,
                              capture_output=True, env={**os.environ, **store_env(self.endpoint)},
                              timeout=60)

    def reaches(self, source: str, destination: str, protocol: str, port: int) -> bool:
        return reaches(self.parties[source], self.parties[destination], protocol, port)

    def tables(self) -> list[str]:
        """Each node's policy table, counters left out."""
        return [re.sub(r"counter packets \d+ bytes \d+", "counter",
                       node.exec("nft", "list", "table", "inet", "percale").stdout) for node in self.nodes]

    def settled(self, check, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


RECONCILE_SECONDS = "1"  # the agents compare their table with the kernel's every second here


@pytest.fixture(scope="module")
def world(etcd_server):
    empty_etcd(etcd_server)
    # The agents inherit it, also when a test starts one again.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERCALE_POLICY_RECONCILE_SECONDS", RECONCILE_SECONDS)
        yield from _world(etcd_server)


def _world(etcd_server):
    a, b = meshed_pair(etcd_server.endpoint, etcd_server.unix_endpoint)
    servers = []
    try:
        async def profiles(store):
            for namespace in ("production", "staging"):
                await store.create(Profile.model_validate({"metadata": {"name": f"kns.{namespace}"}}))
        with_store(etcd_server.endpoint, profiles)
        parties = {}
        for namespace, pod, app, index, ports in PODS:
            node = (a, b)[index]
            netns = node.new_pod_netns()
            conf = netconf(node, args={"cni": {"labels": [{"key": "app", "value": app}]}})
            added = node.plugin("percale", "ADD", conf, container_id=f"c-{netns}", netns=netns,
                                args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}")
            assert added.code == 0, added.out
            parties[pod] = Party(pod, netns, added.json["ips"][0]["address"].split("/")[0])
            servers.append(serve(netns, ports))
        external = add_external_host(a, b)
        parties["dns"] = Party("dns", external, EXTERNAL_ADDRESS)
        servers.append(serve(external, (53, 80)))
        world = World(etcd_server.endpoint, (a, b), parties)
        assert world.settled(lambda: world.reaches("frontend", "backend", "TCP", 8080), 30)
        yield world
    finally:
        for server in servers:
            server.kill()
            server.wait()
        a.stop()
        b.stop()


def test_the_seed_policy_applied_verbatim(world):
    applied = world.percalectl("apply", "-f", str(SEED))
    assert applied.returncode == 0, applied.stderr
    listed = world.percalectl("get", "networkpolicies", "-A", "-o", "wide")
    assert "knp.default.allow-frontend-to-backend" in listed.stdout and "kubernetes" in listed.stdout
    assert world.settled(lambda: not world.reaches("other", "backend", "TCP", 8080))
    expectations = [
        ("frontend", "backend", "TCP", 8080, True),   # the frontend, on the port
        ("other", "backend", "TCP", 8080, False),     # another namespace's pod
        ("frontend", "backend", "TCP", 80, False),    # another port
        ("backend", "database", "TCP", 5432, True),
        ("backend", "database", "TCP", 5433, False),
        ("backend", "dns", "UDP", 53, True),          # DNS anywhere
        ("backend", "dns", "TCP", 80, False),         # anything else: no
        ("backend", "frontend", "TCP", 80, False),
        ("database", "frontend", "TCP", 80, True),    # pods the policy does not select: open
    ]
    found = [(s, d, p, port, world.reaches(s, d, p, port)) for s, d, p, port, _ in expectations]
    assert found == expectations
    removed = world.percalectl("delete", "-f", str(SEED))
    assert removed.returncode == 0, removed.stderr
    assert world.settled(lambda: world.reaches("other", "backend", "TCP", 8080))


def _connect(world: World, source: str, destination: str, port: int) -> socket.socket:
    sock = socket_in(world.parties[source].netns, socket.SOCK_STREAM)
    sock.setblocking(True)
    sock.settimeout(2)
    sock.connect((world.parties[destination].address, port))
    return sock


def _echoes(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"still there?")
        return sock.recv(64) == b"still there?"
    except OSError:
        return False


def test_connections_survive_an_unrelated_update_and_a_new_deny_holds_within_a_second(world):
    open_connection = _connect(world, "frontend", "backend", 8080)
    try:
        unrelated = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "unrelated", "namespace": "staging"},
                     "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
        assert world.percalectl("apply", "-f", "-", input=yaml.safe_dump(unrelated)).returncode == 0
        assert world.settled(lambda: not world.reaches("other", "backend", "TCP", 8080))
        assert _echoes(open_connection)
        deny = {"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "no-frontend", "namespace": "production"},
                "spec": {"order": 1, "selector": "app == 'backend'",
                         "ingress": [{"action": "Deny", "source": {"selector": "app == 'frontend'"}},
                                     {"action": "Allow"}]}}
        applied_at = time.monotonic()
        assert world.percalectl("apply", "-f", "-", input=yaml.safe_dump(deny)).returncode == 0
        assert world.settled(lambda: not world.reaches("frontend", "backend", "TCP", 8080, ), 5)
        took = time.monotonic() - applied_at
        # percalectl's own start is in `took`: still under a second, no old rule left behind.
        assert took < 1.5, took
        assert _echoes(open_connection)  # established before the deny: conntrack keeps it
    finally:
        open_connection.close()
        world.percalectl("delete", "networkpolicy", "knp.default.unrelated", "-n", "staging")
        world.percalectl("delete", "networkpolicy", "no-frontend", "-n", "production")
    assert world.settled(lambda: world.reaches("frontend", "backend", "TCP", 8080))


@pytest.mark.parametrize("document,field", [
    ({"apiVersion": "percale.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "bad"},
      "spec": {"selector": "app == 'x' &&"}}, "spec.selector"),
    ({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "bad"},
      "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "a-name-over-fifteen"}]}]}}, "port"),
    ({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "bad"},
      "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                                     "except": ["10.1.0.0/24"]}}]}]}},
     "except[0]"),
    ({"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "bad"},
      "spec": {"ingress": [{"action": "Reject"}]}}, "spec.ingress.0.action"),
])
def test_a_bad_policy_is_refused_and_the_kernel_keeps_its_rules(world, document, field):
    before = world.tables()
    refused = world.percalectl("apply", "-f", "-", input=yaml.safe_dump(document))
    assert refused.returncode != 0
    assert field in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    time.sleep(0.3)
    assert world.tables() == before


def test_the_agent_restarted_keeps_and_adopts_the_rules_without_a_gap(world):
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "backend-only-from-frontend", "namespace": "production"},
            "spec": {"podSelector": {"matchLabels": {"app": "backend"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}]}]}}
    assert world.percalectl("apply", "-f", "-", input=yaml.safe_dump(deny)).returncode == 0
    assert world.settled(lambda: not world.reaches("database", "backend", "TCP", 8080))
    wrong: list[str] = []
    watching = threading.Event()

    def watch():
        while not watching.is_set():
            if not world.reaches("frontend", "backend", "TCP", 8080):
                wrong.append("frontend lost the backend")
            if world.reaches("database", "backend", "TCP", 8080):
                wrong.append("the database reached the backend")
    watcher = threading.Thread(target=watch)
    watcher.start()
    node = world.nodes[1]  # the backend's
    try:
        node.stop_agent()
        time.sleep(1.0)  # down: the kernel keeps the table
        assert "backend" in " ".join(world.tables())
        node.start_agent()
        time.sleep(2.0)  # up again: it writes its table whole, in one transaction
    finally:
        watching.set()
        watcher.join()
        world.percalectl("delete", "networkpolicy", "knp.default.backend-only-from-frontend", "-n", "production")
    assert wrong == []


def test_policy_show_lists_what_applies_in_order_and_metrics_count_rules(world):
    assert world.percalectl("apply", "-f", str(SEED)).returncode == 0
    extra = {"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "first"},
             "spec": {"order": 10, "selector": "app == 'backend'",
                      "ingress": [{"action": "Log"}, {"action": "Pass", "protocol": "UDP"}]}}
    assert world.percalectl("apply", "-f", "-", input=yaml.safe_dump(extra)).returncode == 0
    try:
        shown = world.percalectl("policy", "show", "backend", "-n", "production")
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert "labels: app=backend" in text
        ingress = text.split("Ingress:")[1].split("Egress:")[0]
        # Order 10 before the Kubernetes policy's 1000, each with its rules.
        assert ingress.index("GlobalNetworkPolicy first (order 10)") < ingress.index(
            "NetworkPolicy production/knp.default.allow-frontend-to-backend (order 1000)")
        assert 'rule 0: Allow TCP from selector app == "frontend" to ports 8080' in ingress
        assert "then: drop" in ingress
        egress = text.split("Egress:")[1]
        assert "rule 1: Allow UDP to ports 53" in egress
        other = world.percalectl("policy", "show", "other", "-n", "staging").stdout
        assert "no policy selects it: profile kns.staging: Allow (any peer)" in other
        assert world.percalectl("policy", "show", "nobody").returncode != 0

        assert world.settled(lambda: not world.reaches("other", "backend", "TCP", 8080))
        for _ in range(3):
            world.reaches("frontend", "backend", "TCP", 8080)
        metrics = world.nodes[1].exec("curl", "-s", "http://127.0.0.1:9099/metrics").stdout
        allowed = [line for line in metrics.splitlines() if line.startswith("percale_policy_packets_total{")
                   and "knp.default.allow-frontend-to-backend" in line and 'rule="ingress 0"' in line]
        assert allowed and float(allowed[0].split()[-1]) >= 3, metrics
        assert "percale_policy_endpoints 2.0" in metrics  # backend and other on this node
    finally:
        world.percalectl("delete", "-f", str(SEED))
        world.percalectl("delete", "globalnetworkpolicy", "first")


def test_a_table_changed_by_hand_is_put_back(world):
    deny = {"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "no-other", "namespace": "production"},
            "spec": {"selector": "app == 'backend'",
                     "ingress": [{"action": "Deny", "source": {"namespaceSelector": "all()", "selector": "app == 'other'"}},
                                 {"action": "Allow"}]}}
    assert world.percalectl("apply", "-f", "-", input=yaml.safe_dump(deny)).returncode == 0
    try:
        assert world.settled(lambda: not world.reaches("other", "backend", "TCP", 8080))
        node = world.nodes[1]
        interface = next(line.split('"')[1] for line in node.exec(
            "nft", "list", "map", "inet", "percale", "to-endpoint").stdout.splitlines()
            if "goto tw-" in line and '"' in line and _serves(world, node, line.split('"')[1], "backend"))
        # Someone empties the backend's ingress chain: its policy no longer holds...
        node.exec("nft", "flush", "chain", "inet", "percale", f"tw-{interface}")
        assert world.reaches("other", "backend", "TCP", 8080)
        # ... until the agent's next comparison writes the table whole again.
        assert world.settled(lambda: not world.reaches("other", "backend", "TCP", 8080), 5)
        assert world.reaches("frontend", "backend", "TCP", 8080)
    finally:
        world.percalectl("delete", "networkpolicy", "no-other", "-n", "production")


def _serves(world: World, node, interface: str, pod: str) -> bool:
    """Whether `interface` on `node` is the host end of `pod`'s veth (its /32 route)."""
    routes = node.exec("ip", "-4", "route", "show", "dev", interface).stdout
    return world.parties[pod].address in routes


def test_a_policy_with_a_long_name_is_in_force_and_counted_under_its_name(world):
    """nft refuses a comment over 128 characters, and with it the whole transaction: one policy
    with a long (valid) name stopped every policy change on the node. Its rules now carry the
    name cut with a digest, it is in force, and the metrics give the whole name."""
    name = ".".join(["deny-other-to-backend", "a" * 63, "b" * 63, "c" * 40])
    deny = {"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
            "spec": {"order": 1, "selector": "app == 'backend'",
                     "ingress": [{"action": "Deny", "source": {"selector": "app == 'other'"}},
                                 {"action": "Allow"}]}}
    applied = world.percalectl("apply", "-f", "-", input=yaml.safe_dump(deny))
    assert applied.returncode == 0, applied.stderr
    try:
        assert world.settled(lambda: not world.reaches("other", "backend", "TCP", 8080)), world.tables()
        assert world.reaches("frontend", "backend", "TCP", 8080)
        metrics = world.nodes[1].exec("curl", "-s", "http://127.0.0.1:9099/metrics").stdout
        denied = [line for line in metrics.splitlines()
                  if line.startswith("percale_policy_packets_total{") and f"GlobalNetworkPolicy/{name}\"" in line
                  and 'rule="ingress 0"' in line]
        assert denied and float(denied[0].split()[-1]) >= 1, metrics
    finally:
        world.percalectl("delete", "globalnetworkpolicy", name)
    assert world.settled(lambda: world.reaches("other", "backend", "TCP", 8080))
