"""The agent's view (datastore/cache.py) on the Kubernetes datastore when its watch falls out of
the apiserver's history: the connection is cut, the cluster changes, the apiserver restarts (its
watch cache begins again at the newest revision), and the resumed watch is answered 410. The view
lists again and reports exactly the changes it missed -- none lost, none twice -- then follows
the watch as before. And when a kind's CRD is missing (a node upgraded before the cluster's CRDs),
or removed while the view follows it."""

from __future__ import annotations

import asyncio

import pytest

from percale.api import parse
from percale.datastore import Key
from percale.datastore.cache import Cache, CachedDatastore, Change
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
