"""Which asyncio Kubernetes client for the Kubernetes datastore: `kubernetes.aio` (the official
client, the one the people we build for named) against `kubernetes_asyncio`, on the backend's hot
paths, in one run against one real kube-apiserver (tests/helpers/kube_apiserver.py):

  get     GET of one IPAMBlock (a full /26 block, ~14 kB)
  update  PUT of that block with its resourceVersion (the IPAM compare-and-swap)
  watch   events of IPAMBlock changes received by a watch, decoded to dicts

Each library is called two ways: through its generated CustomObjectsApi method (what a user of
the library writes), and, for kubernetes.aio, through the request path percale's backend uses
(datastore/kube_client.py: the client's own param_serialize/call_api, one json.loads). Client
CPU per operation is the figure that matters on a node; wall time includes the apiserver's.

    .venv/bin/python bench/kube_client.py [--rounds N]

kubernetes_asyncio is not a percale dependency: the script installs it (without its
dependencies, which kubernetes already brought, but six) into ~/.cache/percale/bench-site the first time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import run_script  # noqa: E402
from percale.api.ipam import AllocationAttribute, IPAMBlock  # noqa: E402
from percale.datastore.kube_client import KubeClient, configuration  # noqa: E402
from percale.datastore.kubernetes import to_object  # noqa: E402

SITE = Path.home() / ".cache" / "percale" / "bench-site"
GROUP, VERSION, PLURAL = "percale.io", "v1", "ipamblocks"


def ensure_kubernetes_asyncio() -> None:
    if not (SITE / "six.py").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                        str(SITE), "kubernetes_asyncio", "six"], check=True)
    sys.path.append(str(SITE))


def full_block() -> dict:
    block = IPAMBlock.empty("10.64.0.0/26", affinity="host:node-1")
    for i in range(64):
        block.spec.allocations[i] = i
        block.spec.attributes.append(AllocationAttribute(
            handle_id=f"k8s-pod-network.{i:064x}",
            secondary={"namespace": "default", "pod": f"pod-{i}", "node": "node-1"}))
        block.spec.sequence_number_for_allocation[str(i)] = 1
    block.spec.unallocated = []
    return to_object(block)


def library(name: str):
    """kubernetes.aio or kubernetes_asyncio, with its client, config and watch modules loaded."""
    import importlib

    for part in ("client", "config", "watch"):
        importlib.import_module(f"{name}.{part}")
    return importlib.import_module(name)


class Timer:
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def measure(self):
        timer = self

        class _Span:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                timer.wall.append(time.perf_counter() - self.w)
                timer.cpu.append(time.process_time() - self.c)

        return _Span()

    def row(self, name: str) -> str:
        return (f"  {name:44} wall p50 {statistics.median(self.wall) * 1000:6.2f} ms   "
                f"client CPU {statistics.fmean(self.cpu) * 1000:6.3f} ms/op")


async def generated(lib, kubeconfig: str, rounds: int, name: str) -> list[str]:
    """Through the library's CustomObjectsApi."""
    config = lib.client.Configuration()
    await lib.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
    api_client = lib.client.ApiClient(config)
    api = lib.client.CustomObjectsApi(api_client)
    rows = []
    try:
        obj = await api.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        gets, updates = Timer(), Timer()
        for _ in range(rounds):
            with gets.measure():
                obj = await api.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        for _ in range(rounds):
            obj["spec"]["sequenceNumber"] += 1
            with updates.measure():
                obj = await api.replace_cluster_custom_object(GROUP, VERSION, PLURAL, name, obj)
        rows += [gets.row("get, generated API"), updates.row("update, generated API")]
    finally:
        await api_client.close()
    return rows


async def percale_path(kubeconfig: str, rounds: int, name: str) -> list[str]:
    """kubernetes.aio through datastore/kube_client.py, as the backend calls it."""
    client = KubeClient(await configuration(kubeconfig))
    path = f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}"
    try:
        obj = await client.request("GET", path)
        gets, updates = Timer(), Timer()
        for _ in range(rounds):
            with gets.measure():
                obj = await client.request("GET", path)
        for _ in range(rounds):
            obj["spec"]["sequenceNumber"] += 1
            with updates.measure():
                obj = await client.request("PUT", path, body=obj)
        return [gets.row("get, percale's request path"), updates.row("update, percale's request path")]
    finally:
        await client.close()


async def watch_events(kubeconfig: str, events: int, name: str, how: str) -> str:
    """Receive `events` MODIFIED events of the block while another client updates it."""
    writer = KubeClient(await configuration(kubeconfig))
    path = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    received = 0
    cpu_in_watch = 0.0
    start_rv = (await writer.request("GET", path, query={"limit": 1}))["metadata"]["resourceVersion"]

    async def write() -> None:
        obj = await writer.request("GET", f"{path}/{name}")
        for _ in range(events):
            obj["spec"]["sequenceNumber"] += 1
            obj = await writer.request("PUT", f"{path}/{name}", body=obj)

    async def read_with_library(lib) -> None:
        nonlocal received, cpu_in_watch
        config = lib.client.Configuration()
        await lib.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
        api_client = lib.client.ApiClient(config)
        api = lib.client.CustomObjectsApi(api_client)
        watch = lib.watch.Watch()
        try:
            t = time.process_time()
            async for _event in watch.stream(api.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                             resource_version=start_rv, allow_watch_bookmarks=True,
                                             timeout_seconds=60):
                received += 1
                if received == events:
                    break
            cpu_in_watch = time.process_time() - t
        finally:
            watch.stop()
            await api_client.close()

    async def read_with_percale() -> None:
        nonlocal received, cpu_in_watch
        client = KubeClient(await configuration(kubeconfig))
        try:
            t = time.process_time()
            query = {"watch": "true", "resourceVersion": start_rv, "allowWatchBookmarks": "true"}
            async for _event in client.stream(path, query):
                received += 1
                if received == events:
                    break
            cpu_in_watch = time.process_time() - t
        finally:
            await client.close()

    if how == "percale":
        reader = read_with_percale()
    else:
        reader = read_with_library(library(how))
    began = time.perf_counter()
    writing = asyncio.create_task(write())
    await asyncio.wait_for(reader, 120)
    await writing
    wall = time.perf_counter() - began
    await writer.close()
    # The writer's CPU is in this process too; the reader's own share is measured inside it.
    return (f"  watch, {how:33} {events} events in {wall:.2f} s   "
            f"whole process CPU {cpu_in_watch / events * 1000:6.3f} ms/event (writer included)")


async def main(kubeconfig: str, rounds: int) -> None:
    import kubernetes

    aio, kubernetes_asyncio = library("kubernetes.aio"), library("kubernetes_asyncio")

    setup = KubeClient(await configuration(kubeconfig))
    block = full_block()
    await setup.request("POST", f"/apis/{GROUP}/{VERSION}/{PLURAL}", body=block)
    await setup.close()
    name = block["metadata"]["name"]
    print(f"kubernetes {kubernetes.__version__} (kubernetes.aio), kubernetes_asyncio "
          f"{kubernetes_asyncio.__version__}; one full /26 IPAMBlock ({len(json.dumps(block))} bytes), "
          f"{rounds} rounds each, {os.cpu_count()} CPUs")
    print("kubernetes.aio")
    for row in await generated(aio, kubeconfig, rounds, name):
        print(row)
    for row in await percale_path(kubeconfig, rounds, name):
        print(row)
    print("kubernetes_asyncio")
    for row in await generated(kubernetes_asyncio, kubeconfig, rounds, name):
        print(row)
    print("watch (a writer in the same process updates the block; both share the CPU figure)")
    for how in ("kubernetes.aio", "kubernetes_asyncio", "percale"):
        print(await watch_events(kubeconfig, rounds, name, how))


def run(args: argparse.Namespace) -> None:
    from tests.helpers.kube_apiserver import KubeControlPlane

    ensure_kubernetes_asyncio()
    plane = KubeControlPlane().start()
    try:
        asyncio.run(main(plane.admin, args.rounds))
    finally:
        plane.stop()


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    return run_script("bench/kube_client.py", lambda: run(args), needs_root=False,
                      cleaned="apiserver and etcd stopped")


if __name__ == "__main__":
    sys.exit(cli())
