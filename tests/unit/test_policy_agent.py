"""The node's policy side against a real view (Cache over the memory datastore) and a table that
records what it is asked to write: an endpoint the CNI side announces before storing it gets its
chains at once, one given up is forgotten, and a stored one follows the datastore afterwards."""

from __future__ import annotations

import asyncio

import pytest

from percale.api import ObjectMeta, Profile, WorkloadEndpoint, WorkloadEndpointSpec, parse
from percale.datastore import Key, KVPair, MemoryDatastore
from percale.datastore.cache import Cache
from percale.node.policy_agent import NOT_STORED, POLICY_KINDS, PolicyAgent, policy_endpoint
from percale.policy.compile import render

pytestmark = pytest.mark.unit


class RecordingTable:
    """PolicyTable's interface, writing nothing: the rulesets it was given, in order."""

    def __init__(self) -> None:
        self.applied = None
        self.history = []

    def apply(self, ruleset) -> bool:
        self.applied = ruleset
        self.history.append(ruleset)
        return True

    def drifted(self) -> bool:
        return False


def endpoint(pod: str, interface: str, labels: dict[str, str] | None = None) -> WorkloadEndpoint:
    return WorkloadEndpoint(
        metadata=ObjectMeta(name=f"node1-k8s-{pod}-eth0", namespace="shop", labels=labels or {}),
        spec=WorkloadEndpointSpec.model_validate({
            "orchestrator": "k8s", "node": "node1", "containerID": "c1", "pod": pod,
            "endpoint": "eth0", "ipNetworks": ["10.0.0.1/32"], "profiles": ["kns.shop"],
            "interfaceName": interface, "mac": "02:00:00:00:00:01"}))


@pytest.fixture
async def world():
    memory = MemoryDatastore()
    cache = Cache(memory, POLICY_KINDS, node="node1")
    table = RecordingTable()
    agent = PolicyAgent(cache, "node1", table=table)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(agent.run())]
    await cache.wait_synced()
    yield memory, cache, agent, table
    for task in tasks:
        task.cancel()


async def announced(agent: PolicyAgent, value: WorkloadEndpoint, table: RecordingTable) -> int:
    """`value` announced as the CNI side does before storing it, and programmed: how many
    rulesets the table had been given by then."""
    agent.endpoint_written(KVPair(Key.of(value), value, NOT_STORED))
    assert await agent.wait_programmed(value.spec.interface_name, timeout=2)
    return len(table.history)


async def in_view(cache: Cache, key: Key) -> None:
    for _ in range(200):
        if cache.get(key) is not None:
            return
        await asyncio.sleep(0.005)


async def test_an_announced_endpoint_is_programmed_before_it_is_stored(world):
    memory, cache, agent, table = world
    announced = endpoint("web", "pcl000000000001")
    agent.endpoint_written(KVPair(Key.of(announced), announced, NOT_STORED))
    assert await agent.wait_programmed("pcl000000000001", timeout=2)
    assert "pcl000000000001" in table.applied.from_endpoint
    assert (await memory.list("WorkloadEndpoint")).items == []


async def test_an_announced_endpoint_given_up_is_forgotten(world):
    memory, cache, agent, table = world
    announced = endpoint("web", "pcl000000000002")
    agent.endpoint_written(KVPair(Key.of(announced), announced, NOT_STORED))
    assert await agent.wait_programmed("pcl000000000002", timeout=2)
    agent.endpoint_dropped(Key.of(announced))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if "pcl000000000002" not in table.applied.from_endpoint:
            break
    assert "pcl000000000002" not in table.applied.from_endpoint


async def test_a_stored_endpoint_follows_the_datastore_once_written(world):
    """The CNI side hands over what it wrote; when the watch has been faster, a later change by
    someone else (a relabel) must still win over the pair the CNI side holds."""
    memory, cache, agent, table = world
    written = await memory.create(endpoint("web", "pcl000000000003", {"app": "web"}))
    for _ in range(200):
        if cache.get(written.key) is not None:
            break
        await asyncio.sleep(0.005)
    agent.endpoint_written(written)  # the watch already brought it
    relabelled = await memory.update(endpoint("web", "pcl000000000003", {"app": "db"}),
                                     revision=written.revision)
    for _ in range(200):
        await asyncio.sleep(0.005)
        current = cache.get(written.key)
        if current is not None and current.revision == relabelled.revision:
            break
    await asyncio.sleep(0.05)
    assert agent._written == {}
    assert agent.desired() is not None
    labels = [e for e in agent._converted.values() if e[2].interface == "pcl000000000003"][0][2].labels
    assert labels == {"app": "db"}


async def test_an_add_compiles_the_ruleset_once_not_again_for_its_own_write(world):
    """The CNI side's endpoint is compiled when announced; its stored revision and the watch
    bringing that revision back change nothing the table holds, so neither compiles again."""
    memory, cache, agent, table = world
    compiled = await announced(agent, value := endpoint("web", "pcl000000000004"), table)
    written = await memory.create(value)
    agent.endpoint_written(written)
    await in_view(cache, written.key)
    await asyncio.sleep(0.05)
    assert len(table.history) == compiled
    assert agent._written == {}


async def test_the_watch_bringing_the_write_before_its_answer_compiles_nothing(world):
    """On a busy node the watch often delivers the endpoint before the CNI side has the
    create's answer: while the endpoint is announced, that change waits for the answer, which
    shows it was the write itself. Compiling again for it cost every ADD a second compilation."""
    memory, cache, agent, table = world
    compiled = await announced(agent, value := endpoint("web", "pcl000000000005"), table)
    written = await memory.create(value)
    await in_view(cache, written.key)
    await asyncio.sleep(0.05)  # the watch was faster: nothing compiled meanwhile
    assert len(table.history) == compiled
    agent.endpoint_written(written)
    await asyncio.sleep(0.05)
    assert len(table.history) == compiled and agent._written == {}


async def test_a_change_by_someone_else_while_announced_is_compiled_on_the_answer(world):
    """Someone else writes the key after the CNI side's write and before its answer: the view
    then holds another revision, so the answer compiles what the view holds."""
    memory, cache, agent, table = world
    value = endpoint("web", "pcl000000000006", {"app": "web"})
    agent.endpoint_written(KVPair(Key.of(value), value, NOT_STORED))
    assert await agent.wait_programmed("pcl000000000006", timeout=2)
    written = await memory.create(value)
    relabelled = await memory.update(endpoint("web", "pcl000000000006", {"app": "db"}),
                                     revision=written.revision)
    for _ in range(200):
        current = cache.get(written.key)
        if current is not None and current.revision == relabelled.revision:
            break
        await asyncio.sleep(0.005)
    compiled = len(table.history)
    agent.endpoint_written(written)
    for _ in range(200):
        if len(table.history) > compiled:
            break
        await asyncio.sleep(0.005)
    assert len(table.history) > compiled


@pytest.mark.parametrize("dropped_between", [False, True])
async def test_an_endpoint_announced_again_is_programmed_with_its_new_values(world, dropped_between):
    """A retried ADD announces its endpoint again under the same key and the same (non-)
    revision, with other values (here its interface): those are what gets programmed, whether
    or not the failed attempt's endpoint was given up in between."""
    memory, cache, agent, table = world
    first = endpoint("web", "pcl000000000007")
    agent.endpoint_written(KVPair(Key.of(first), first, NOT_STORED))
    assert await agent.wait_programmed("pcl000000000007", timeout=2)
    again = endpoint("web", "pcl000000000008")
    if dropped_between:
        agent.endpoint_dropped(Key.of(first))
    agent.endpoint_written(KVPair(Key.of(again), again, NOT_STORED))
    assert await agent.wait_programmed("pcl000000000008", timeout=2)
    assert "pcl000000000008" in table.applied.from_endpoint
    assert "pcl000000000007" not in table.applied.from_endpoint


async def test_a_written_endpoint_the_view_skips_past_gives_way_to_the_view():
    """The view may never show the revision the CNI side wrote (it listed again after
    compaction and jumped to a later one: a relabel). Once the trust in its own write runs out,
    the agent follows the view."""
    memory = MemoryDatastore()
    cache = Cache(memory, POLICY_KINDS, node="node1")
    table = RecordingTable()
    agent = PolicyAgent(cache, "node1", table=table, trust_written_seconds=0.3)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(agent.run())]
    try:
        await cache.wait_synced()
        stored = await memory.create(endpoint("web", "pcl000000000009", {"app": "web"}))
        # What the CNI side hands over: a revision this view is never told of.
        agent.endpoint_written(KVPair(stored.key, stored.value, "a revision the watch skipped"))
        relabelled = await memory.update(endpoint("web", "pcl000000000009", {"app": "db"}),
                                         revision=stored.revision)
        labels = None
        for _ in range(200):
            await asyncio.sleep(0.01)
            current = cache.get(stored.key)
            entry = agent._converted.get(stored.key)
            labels = entry[2].labels if entry else None
            if current is not None and current.revision == relabelled.revision and labels == {"app": "db"}:
                break
        assert labels == {"app": "db"} and agent._written == {}
    finally:
        for task in tasks:
            task.cancel()


async def test_a_confirmed_write_costs_no_compilation_when_its_trust_runs_out():
    memory = MemoryDatastore()
    cache = Cache(memory, POLICY_KINDS, node="node1")
    table = RecordingTable()
    agent = PolicyAgent(cache, "node1", table=table, trust_written_seconds=0.2)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(agent.run())]
    try:
        await cache.wait_synced()
        value = endpoint("web", "pcl000000000010")
        agent.endpoint_written(KVPair(Key.of(value), value, NOT_STORED))
        assert await agent.wait_programmed("pcl000000000010", timeout=2)
        agent.endpoint_written(await memory.create(value))
        for _ in range(200):
            if agent._written == {}:
                break
            await asyncio.sleep(0.005)
        compiled = len(table.history)
        await asyncio.sleep(0.4)  # past the trust
        assert agent._written == {} and len(table.history) == compiled
    finally:
        for task in tasks:
            task.cancel()


async def test_compiling_what_changed_gives_what_compiling_everything_gives(world):
    """The agent converts only the endpoints the watch or the CNI side changed since its last
    compilation; after creates, relabels, deletes and a namespace's labels changing, its ruleset
    is the one an agent converting every endpoint afresh compiles."""
    memory, cache, agent, table = world
    # Labels and namespace labels decide which endpoints it selects, so a stale conversion
    # shows in the ruleset.
    for name, spec in (("front-web", {"selector": "app == 'web'", "namespaceSelector": "tier == 'front'"}),
                       ("db", {"selector": "app == 'db'"})):
        await memory.create(parse({
            "apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
            "spec": {**spec, "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}}))
    stored = {}

    def held(key, kv) -> bool:
        now = cache.get(key)
        return now is None if kv is None else now is not None and now.revision == kv.revision

    async def settled():
        for _ in range(200):
            await asyncio.sleep(0.005)
            if all(held(key, kv) for key, kv in stored.items()):
                break
        assert all(held(key, kv) for key, kv in stored.items())
        fresh = PolicyAgent(cache, "node1", table=RecordingTable())
        assert render(agent.desired()) == render(fresh.desired())

    for i in range(6):
        kv = await memory.create(endpoint(f"pod{i}", f"pcl00000000010{i}", {"app": "web"}))
        stored[kv.key] = kv
        await settled()
    for i in (1, 3):
        key = next(k for k in stored if f"pod{i}" in k.name)
        stored[key] = await memory.update(endpoint(f"pod{i}", f"pcl00000000010{i}", {"app": "db"}),
                                          revision=stored[key].revision)
        await settled()
    key = next(k for k in stored if "pod2" in k.name)
    await memory.delete(key, revision=stored[key].revision)
    stored[key] = None
    await settled()
    await memory.create(Profile(metadata={"name": "kns.shop"},
                                spec={"labelsToApply": {"tier": "front"}}))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if cache.get(Key("Profile", "kns.shop")) is not None:
            break
    await settled()
    assert len(agent._converted) == 5 and all(e.namespace_labels.get("tier") == "front" for _, _, e in agent._converted.values())


async def test_an_announced_endpoint_once_stored_keeps_the_chains_built_for_it(world):
    """Stored, the endpoint is the one announced at another revision: the next compilation
    (for another pod) carries its chains over instead of building them a second time."""
    memory, cache, agent, table = world
    value = endpoint("web", "pcl000000000011")
    agent.endpoint_written(KVPair(Key.of(value), value, NOT_STORED))
    assert await agent.wait_programmed("pcl000000000011", timeout=2)
    built = table.applied.chains["fw-pcl000000000011"]
    agent.endpoint_written(await memory.create(value))
    other = endpoint("db", "pcl000000000012")
    agent.endpoint_written(KVPair(Key.of(other), other, NOT_STORED))
    assert await agent.wait_programmed("pcl000000000012", timeout=2)
    assert table.applied.chains["fw-pcl000000000011"] is built


def workload(namespace: str, pod: str, address: str, interface: str,
             labels: dict[str, str] | None = None,
             service_account: str | None = None) -> WorkloadEndpoint:
    return WorkloadEndpoint(
        metadata=ObjectMeta(name=f"node1-k8s-{pod}-eth0", namespace=namespace,
                            labels=labels or {}),
        spec=WorkloadEndpointSpec.model_validate({
            "orchestrator": "k8s", "node": "node1", "containerID": "c1", "pod": pod,
            "endpoint": "eth0", "ipNetworks": [f"{address}/32"], "profiles": [f"kns.{namespace}"],
            "interfaceName": interface, "serviceAccountName": service_account}))


def members_of_rule(ruleset, policy: str, direction: str, index: int) -> set[str]:
    """The IPv4 addresses in the selector set that rule `index` of `policy` matches its peer
    with (the rule's IPv4 nft rule)."""
    from percale.policy.compile import policy_chain

    rule = next(r for r in ruleset.chains[policy_chain(direction, policy)]
                if f" {direction.lower()} {index} " in r and "@s4-" in r)
    name = "s4-" + rule.split("@s4-", 1)[1].split()[0]
    return set(ruleset.sets[name].elements)


async def stored_and_seen(memory, cache, *resources) -> None:
    for resource in resources:
        await in_view(cache, (await memory.create(resource)).key)


def test_calicos_endpoint_labels_come_after_the_pods_own():
    """A workload endpoint's labels as Calico writes them (dataplane.md §A2): the pod's, then
    projectcalico.org/namespace, /orchestrator and /serviceaccount (when known). A pod labelling
    itself with them changes nothing; without a known service account, its claim to one goes."""
    claims = {"app": "web", "projectcalico.org/namespace": "prod",
              "projectcalico.org/orchestrator": "none",
              "projectcalico.org/serviceaccount": "admin"}
    unknown = policy_endpoint(workload("shop", "web", "10.0.0.1", "pcl000000000021", claims),
                              "node1", {})
    assert unknown.selector_labels == {"app": "web", "projectcalico.org/namespace": "shop",
                                       "projectcalico.org/orchestrator": "k8s"}
    known = policy_endpoint(
        workload("shop", "web", "10.0.0.1", "pcl000000000021", claims, "web-sa"), "node1", {})
    assert known.selector_labels["projectcalico.org/serviceaccount"] == "web-sa"
    assert known.labels == claims  # the pod's own, as shown to users
    # A label value holds 63 characters: Calico leaves a longer service account's name out.
    long_name = policy_endpoint(
        workload("shop", "web", "10.0.0.1", "pcl000000000021", claims, "s" * 63), "node1", {})
    assert "projectcalico.org/serviceaccount" not in long_name.selector_labels


async def test_calico_style_selectors_select_endpoints(world):
    """A GlobalNetworkPolicy written the usual Calico way: selected by namespace label, denying
    by orchestrator and service account label. It selected nothing, so its Deny denied nothing."""
    memory, cache, agent, table = world
    deny = parse({
        "apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "d"},
        "spec": {"selector": "projectcalico.org/namespace == 'prod'", "ingress": [
            {"action": "Deny", "source": {
                "selector": "projectcalico.org/orchestrator == 'k8s' && app == 'evil'"}},
            {"action": "Deny", "source": {
                "selector": "projectcalico.org/serviceaccount == 'scanner'"}}]}})
    await stored_and_seen(
        memory, cache, deny,
        workload("prod", "db", "10.0.0.1", "pcl000000000022", {"app": "db"}),
        workload("untrusted", "evil", "10.0.9.9", "pcl000000000023", {"app": "evil"}),
        workload("untrusted", "scan", "10.0.9.10", "pcl000000000024", {}, "scanner"),
        # Claims the service account by label: not the one it runs as.
        workload("untrusted", "liar", "10.0.9.11", "pcl000000000025",
                 {"projectcalico.org/serviceaccount": "scanner"}))
    ruleset = agent.desired()
    assert any("jump pi-" in rule for rule in ruleset.chains["tw-pcl000000000022"])
    assert not any("jump pi-" in rule for rule in ruleset.chains["tw-pcl000000000023"])
    key = "GlobalNetworkPolicy/d"
    assert members_of_rule(ruleset, key, "Ingress", 0) == {"10.0.9.9"}
    assert members_of_rule(ruleset, key, "Ingress", 1) == {"10.0.9.10"}


async def test_a_namespace_selector_sees_calicos_namespace_name_label(world):
    """A namespace's labels, as namespaceSelectors see them, carry projectcalico.org/name (in
    Calico, its profile applies pcns.projectcalico.org/name), after its own labels: a namespace
    labelled with another's name is not that namespace. Needs api.policy.namespace_labels to add
    the label."""
    memory, cache, agent, table = world
    by_name = parse({
        "apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "n"},
        "spec": {"selector": "all()", "ingress": [
            {"action": "Deny",
             "source": {"namespaceSelector": "projectcalico.org/name == 'untrusted'"}},
            {"action": "Allow",
             "source": {"namespaceSelector": "projectcalico.org/name == 'prod'"}}]}})
    await stored_and_seen(
        memory, cache, by_name,
        Profile(metadata={"name": "kns.untrusted"},
                spec={"labelsToApply": {"projectcalico.org/name": "prod"}}),
        workload("prod", "db", "10.0.0.1", "pcl000000000026", {"app": "db"}),
        workload("untrusted", "evil", "10.0.9.9", "pcl000000000027", {"app": "evil"}))
    ruleset = agent.desired()
    key = "GlobalNetworkPolicy/n"
    assert members_of_rule(ruleset, key, "Ingress", 0) == {"10.0.9.9"}
    assert members_of_rule(ruleset, key, "Ingress", 1) == {"10.0.0.1"}
