"""The agent's view (datastore/cache.py) on the Kubernetes datastore when its watch falls out of
the apiserver's history: the connection is cut, the cluster changes, the apiserver restarts (its
watch cache begins again at the newest revision), and the resumed watch is answered 410. The view
lists again and reports exactly the changes it missed -- none lost, none twice -- then follows
the watch as before. And when a kind's CRD is missing (a node upgraded before the cluster's CRDs),
or removed while the view follows it."""

from __future__ import annotations

import asyncio
import json

import pytest

from percale.api import parse
from percale.datastore import Key
from percale.datastore.cache import Cache, CachedDatastore, Change
from percale.datastore.errors import DatastoreUnavailable
from percale.datastore.kubernetes import KubeDatastore
from tests.helpers.etcd_server import free_port
from tests.helpers.kube_apiserver import CRDS
from tests.helpers.netns_relay import pipe

pytestmark = pytest.mark.contract


def pool(name: str, cidr: str, nat: bool = False):
    return parse({"apiVersion": "percale.io/v1", "kind": "IPPool", "metadata": {"name": name},
                  "spec": {"cidr": cidr, "natOutgoing": nat}})


class Cable:
    """A TCP relay to the apiserver that can be cut: open connections are dropped and new ones
    closed at once until it is joined again."""

    def __init__(self, target_port: int):
        self.target_port, self.port, self.cut = target_port, free_port(), False
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader, writer) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def snip(self) -> None:
        self.cut = True
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.snip()
        self.server.close()


async def settle(cache: Cache, store: KubeDatastore, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        want = {kv.key: kv.revision for kv in (await store.list("IPPool")).items}
        if {k: kv.revision for k, kv in cache.items("IPPool").items()} == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the view did not catch up")


async def test_a_watch_answered_410_lists_again_and_misses_nothing(kube):
    admin = KubeDatastore(kube.admin)
    cable = Cable(kube.port)
    await cable.start()
    through_cable = KubeDatastore(kube.kubeconfig("admin", groups=("system:masters",),
                                                  server=f"https://127.0.0.1:{cable.port}"))
    cache = Cache(through_cable, ["IPPool"], retry_delay=0.1, max_retry_delay=0.5)
    task = asyncio.create_task(cache.run())
    try:
        for name, cidr in (("a", "10.1.0.0/16"), ("b", "10.2.0.0/16")):
            await admin.create(pool(name, cidr))
        await cache.wait_synced()
        await settle(cache, admin)
        seen: list[Change] = []
        cache.subscribe(seen.append)
        lists = cache.lists

        cable.snip()
        await admin.delete(Key("IPPool", "a"))
        b = await admin.get(Key("IPPool", "b"))
        await admin.update(pool("b", "10.2.0.0/16", nat=True), revision=b.revision)
        await admin.create(pool("c", "10.3.0.0/16"))
        await asyncio.to_thread(kube.restart)
        cable.cut = False

        await settle(cache, admin)
        assert cache.lists == lists + 1, "the view did not list again after the 410"
        assert sorted((c.key.name, c.old is not None, c.new is not None) for c in seen) == [
            ("a", True, False), ("b", True, True), ("c", False, True)]
        assert cache.get_value("IPPool", "b").spec.nat_outgoing is True

        # And it follows the new watch.
        await admin.create(pool("d", "10.4.0.0/16"))
        await settle(cache, admin)
        assert [c.key.name for c in seen[3:]] == ["d"]
    finally:
        task.cancel()
        await cable.close()
        await through_cable.close()
        await admin.close()


async def until(check, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.1)


async def test_a_kind_whose_crd_is_missing_is_followed_as_empty_until_it_is_installed(kube):
    """A node newer than the cluster's CRDs (BGPFilter's missing) used to wait for that kind for
    ever, and its agent never started. Now, as Calico's watcher cache does, the view is in sync
    with the kind empty, looks for it again every `not_installed_seconds`, and follows it once
    installed; a CRD removed under it empties the kind again (its objects told as deleted)."""
    crd = str(CRDS / "percale.io_bgpfilters.yaml")
    bgp_filter = parse({"apiVersion": "percale.io/v1", "kind": "BGPFilter", "metadata": {"name": "f"},
                        "spec": {"exportV4": [{"action": "Reject", "matchOperator": "In",
                                               "cidr": "10.0.0.0/8"}]}})
    admin = KubeDatastore(kube.admin)
    await asyncio.to_thread(kube.kubectl, "delete", "-f", crd)
    cache = Cache(admin, ["IPPool", "BGPFilter"], not_installed_seconds=0.5)
    seen: list[Change] = []
    cache.subscribe(seen.append)
    task = asyncio.create_task(cache.run())
    try:
        await admin.create(pool("a", "10.1.0.0/16"))
        await asyncio.wait_for(cache.wait_synced(), 20)
        assert cache.not_installed == {"BGPFilter"} and not cache.items("BGPFilter")
        await settle(cache, admin)

        await asyncio.to_thread(kube.kubectl, "apply", "-f", crd)
        await asyncio.to_thread(kube.kubectl, "wait", "--for", "condition=Established",
                                "crd/bgpfilters.percale.io")
        await asyncio.to_thread(kube._wait_discoverable, 30)
        await admin.create(bgp_filter)
        await until(lambda: Key("BGPFilter", "f") in cache.items("BGPFilter"))
        assert not cache.not_installed
        view = CachedDatastore(admin, cache)  # as the agent reads: a list kept per revision
        assert [kv.key.name for kv in (await view.list("BGPFilter")).items] == ["f"]
        assert [c.key for c in seen if c.key.kind == "BGPFilter"] == [Key("BGPFilter", "f")]

        # Removed while followed: the filter goes with it, and the kind is looked for again.
        await asyncio.to_thread(kube.kubectl, "delete", "-f", crd)
        await until(lambda: cache.not_installed == {"BGPFilter"})
        assert not cache.items("BGPFilter")
        assert seen[-1].key == Key("BGPFilter", "f") and seen[-1].new is None
        assert (await view.list("BGPFilter")).items == []
        await admin.create(pool("b", "10.2.0.0/16"))
        await settle(cache, admin)  # the other kinds are followed all along
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await admin.close()
        await asyncio.to_thread(kube.kubectl, "apply", "-f", crd)
        await asyncio.to_thread(kube._wait_discoverable, 60)


# -- NetworkPolicy: percale's and Kubernetes' own, read as one kind from two collections ------

def own_policy(name: str, namespace: str):
    return parse({"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": name, "namespace": namespace},
                  "spec": {"selector": "all()", "ingress": [{"action": "Allow"}]}})


def kubernetes_policy(name: str, namespace: str) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})


async def names_seen(events, want: set[str], timeout: float = 10) -> set[str]:
    """The names of the events until every name in `want` came, or `timeout` passed."""
    seen: set[str] = set()

    async def collect() -> None:
        async for event in events:
            seen.add(event.key.name)
            if want <= seen:
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        await events.aclose()
    return seen


async def test_a_policy_written_while_the_two_halves_are_listed_is_not_missed(kube):
    """Listing NetworkPolicies reads percale's, then Kubernetes'. A policy of percale's written
    between the two reads is in neither, and the list's revision used to be the later read's:
    a view watching from there never heard of that policy."""
    namespace = "np-list-race"
    kube.kubectl("create", "namespace", namespace, check=False)
    store, writer = KubeDatastore(kube.admin), KubeDatastore(kube.admin)
    real = store.client.request
    own_half = f"/percale.io/v1/namespaces/{namespace}/networkpolicies"
    written = []

    async def request(method: str, path: str, **kwargs):
        answer = await real(method, path, **kwargs)
        if method == "GET" and path.endswith(own_half) and not written:
            written.append(await writer.create(own_policy("written-between", namespace)))
        return answer

    store.client.request = request
    try:
        listed = await store.list("NetworkPolicy", namespace)
        assert written, "nothing was written between the two reads; the test proves nothing"
        assert [kv.key.name for kv in listed.items] == []
        seen = await names_seen(store.watch("NetworkPolicy", revision=listed.revision,
                                            namespace=namespace), {"written-between"})
        assert seen == {"written-between"}
        # Another store (another process) knows only the revision: it too hears of it.
        seen = await names_seen(writer.watch("NetworkPolicy", revision=listed.revision,
                                             namespace=namespace), {"written-between"})
        assert seen == {"written-between"}
    finally:
        await store.close()
        await writer.close()


async def test_a_policy_in_flight_on_the_other_connection_when_the_watch_breaks_is_not_lost(kube):
    """The two halves of the NetworkPolicy watch come on two connections. Kubernetes' policy is
    written first, percale's next; percale's arrives first (the other connection is slower),
    then its connection breaks. Resumed from the revision of the last event, as the contract
    says, the watch used to start both halves after it, and Kubernetes' policy, still in flight,
    was never told."""
    namespace = "np-watch-race"
    kube.kubectl("create", "namespace", namespace, check=False)
    store, writer = KubeDatastore(kube.admin), KubeDatastore(kube.admin)
    real_stream = store.client.stream
    state = {"break": False}

    async def stream(path: str, query: dict):
        async for doc in real_stream(path, query):
            if doc.get("type") != "BOOKMARK":
                if "networking.k8s.io" in path:
                    await asyncio.sleep(1.0)  # this connection is a little slower
                elif state["break"]:
                    state["break"] = False
                    yield doc
                    await asyncio.sleep(0.1)
                    raise DatastoreUnavailable("the connection broke (forced)")
            yield doc

    store.client.stream = stream
    seen: list[str] = []

    async def follow(revision: str) -> None:
        while True:
            try:
                async for event in store.watch("NetworkPolicy", revision=revision,
                                               namespace=namespace):
                    seen.append(event.key.name)
                    revision = event.revision
            except DatastoreUnavailable:
                continue  # resume from the last event's revision, as the view does

    start = (await store.list("NetworkPolicy", namespace)).revision
    following = asyncio.create_task(follow(start))
    try:
        await asyncio.sleep(0.5)
        state["break"] = True
        await asyncio.to_thread(kube.kubectl, "create", "-f", "-",
                                input=kubernetes_policy("kube-one", namespace))
        await writer.create(own_policy("own-one", namespace))
        await until(lambda: len(seen) >= 2, timeout=10)
        await asyncio.sleep(1.5)  # anything told twice comes by now
        assert sorted(seen) == ["knp.default.kube-one", "own-one"]
        assert not state["break"], "the connection never broke; the test proves nothing"
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        kube.kubectl("delete", "networkpolicies.networking.k8s.io", "--all", "-n", namespace,
                     "--wait=false")
        await store.close()
        await writer.close()
