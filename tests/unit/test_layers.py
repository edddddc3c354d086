"""The architecture, enforced: the import contracts of docs/architecture.md, read from the source
with `ast` (every import statement, those inside functions too), so a crossed layer fails here.

    * each package imports only the percale packages below it (LAYERS);
    * pure modules import no I/O library, directly or through the percale modules they import;
    * percale-node's process never imports pyroute2 (~20 MB, and seconds of GIL on a large
      route table: the kernel is spoken to through dataplane/netlink.py);
    * the CNI shim imports the standard library only (it runs as `python3 -IS`).

The same checks run on a small made-up graph first, so a checker that finds nothing is noticed.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# Every top-level code folder is the package percale.<folder> (pyproject.toml); the shim is the
# one exception, named for the folder it lives in.
PACKAGES = {
    "api": "percale.api", "ipc": "percale.ipc", "datastore": "percale.datastore",
    "ipam": "percale.ipam", "bgpd": "percale.bgpd", "dataplane": "percale.dataplane",
    "vxlan": "percale.vxlan", "node": "percale.node", "controllers": "percale.controllers",
    "lab": "percale.lab",
    "installation": "percale.installation",
    "policy": "percale.policy",
    "ctl": "percale.ctl", "cni-plugin/percale_cni": "percale_cni",
}

# Which percale packages each may import (besides itself): docs/architecture.md's table.
LAYERS: dict[str, set[str]] = {
    # The shim itself imports the standard library alone (below); its build step uses ipc's.
    "percale_cni": {"percale.ipc"},
    "percale.api": set(),
    "percale.ipc": set(),
    # The Kubernetes backend serves Kubernetes NetworkPolicies converted (percale.policy.convert).
    "percale.datastore": {"percale.api", "percale.policy"},
    "percale.ipam": {"percale.api", "percale.datastore"},
    "percale.bgpd": {"percale.api", "percale.datastore", "percale.ipc"},
    "percale.dataplane": set(),
    "percale.vxlan": {"percale.api", "percale.datastore", "percale.ipam", "percale.dataplane"},
    "percale.node": {"percale.api", "percale.datastore", "percale.ipam", "percale.bgpd",
                     "percale.dataplane", "percale.vxlan", "percale.ipc", "percale.policy"},
    "percale.controllers": {"percale.api", "percale.datastore", "percale.ipam"},
    "percale.lab": set(),
    "percale.installation": {"percale.api", "percale.datastore"},
    "percale.policy": {"percale.api"},
    "percale.ctl": {"percale.api", "percale.datastore", "percale.ipam", "percale.bgpd",
                    "percale.lab", "percale.installation", "percale.policy", "percale_cni"},
}

# Decisions, not I/O: pure functions and classes of values in, values out.
PURE = [
    "percale.api.*",
    "percale.ipam.blocks", "percale.ipam.pools", "percale.ipam.usage", "percale.ipam.errors",
    "percale.ipam.reservations",
    "percale.bgpd.peering", "percale.bgpd.peer_routes", "percale.bgpd.log_level", "percale.bgpd.pass_on", "percale.bgpd.communities", "percale.bgpd.filters", "percale.bgpd.rib", "percale.bgpd.prefixes", "percale.bgpd.announcements",
    "percale.bgpd.exabgp_config", "percale.bgpd.exabgp_json", "percale.bgpd.peers",
    "percale.bgpd.status", "percale.vxlan.plan", "percale.dataplane.route_owners",
    "percale.node.cni_types",
    "percale.installation.model", "percale.installation.render", "percale.installation.status",
    "percale.policy.convert", "percale.policy.reference", "percale.policy.compile",
]
# What a pure module may not reach: sockets, processes, the kernel, the datastore's clients,
# the event loop, and percale's own I/O modules.
IO = {"socket", "ssl", "subprocess", "multiprocessing", "ctypes", "fcntl", "select", "selectors",
      "asyncio", "threading", "http", "urllib", "grpc", "aetcd", "pyroute2", "prometheus_client",
      "percale.ipc", "percale.dataplane", "percale.datastore.etcd", "percale.datastore.etcd_client",
      "percale.datastore.cache", "percale.bgpd.speaker", "percale.bgpd.bridge"}


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT)
    for folder, package in PACKAGES.items():
        if relative.is_relative_to(folder):
            rest = relative.relative_to(folder).with_suffix("").parts
            rest = rest[:-1] if rest[-1] == "__init__" else rest
            return ".".join((package, *rest))
    raise ValueError(path)


def imports_of(path: Path, name: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = name.split(".")[: -node.level] if not path.name == "__init__.py" else name.split(".")
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {i for i in found if i and i != "__future__"}


def source_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = module_name(path)
            graph[name] = imports_of(path, name)
    return graph


def package_of(module: str) -> str | None:
    return next((p for p in sorted(LAYERS, key=len, reverse=True)
                 if module == p or module.startswith(p + ".")), None)


def layer_violations(graph: Mapping[str, set[str]], layers: Mapping[str, set[str]]) -> list[str]:
    problems = []
    for module, imported in sorted(graph.items()):
        home = package_of(module)
        for target in sorted(imported):
            there = package_of(target)
            if there is None and (target == "percale" or target.startswith("percale.")):
                problems.append(f"{module} imports {target}, which is no percale package")
            elif there is not None and there != home and there not in layers[home]:
                problems.append(f"{module} imports {target}: {home} may not import {there}")
    return problems


def closure(graph: Mapping[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through percale modules (externals included)."""
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def reaches(imported: Iterable[str], forbidden: Iterable[str]) -> set[str]:
    return {i for i in imported for f in forbidden if i == f or i.startswith(f + ".")}


def pure_violations(graph: Mapping[str, set[str]], pure: list[str], io: set[str]) -> list[str]:
    chosen = [m for m in graph if any(m == p or (p.endswith(".*") and m.startswith(p[:-1])) for p in pure)]
    return [f"{m} (pure) reaches {sorted(bad)}" for m in sorted(chosen)
            if (bad := reaches(closure(graph, m), io))]


# -- the checker can fail --------------------------------------------------------------------------


def test_the_checks_find_a_crossed_layer_and_an_impure_pure_module():
    made_up = {
        "percale.api.meta": {"pydantic"},
        "percale.ipam.blocks": {"percale.api.meta", "percale.ipam.helper"},
        "percale.ipam.helper": {"socket"},
        "percale.datastore.etcd": {"percale.node.main"},
        "percale.node.main": {"percale.dataplane.pod_network"},
        "percale.dataplane.pod_network": {"pyroute2"},
    }
    assert layer_violations(made_up, LAYERS) == [
        "percale.datastore.etcd imports percale.node.main: percale.datastore may not import percale.node"]
    assert pure_violations(made_up, ["percale.ipam.blocks"], IO) == [
        "percale.ipam.blocks (pure) reaches ['socket']"]
    assert reaches(closure(made_up, "percale.node.main"), ["pyroute2"]) == {"pyroute2"}


# -- the contracts -------------------------------------------------------------------------------


def test_every_package_imports_only_the_layers_below_it():
    graph = source_graph()
    assert {package_of(m) for m in graph} == set(LAYERS), "a package with no row in LAYERS"
    assert layer_violations(graph, LAYERS) == []


def test_pure_modules_reach_no_io_library():
    graph = source_graph()
    for pattern in PURE:  # every name in the list is a module that exists
        assert any(m == pattern or m.startswith(pattern.rstrip("*")) for m in graph), pattern
    assert pure_violations(graph, PURE, IO) == []


def test_the_agent_process_never_imports_pyroute2():
    graph = source_graph()
    assert reaches(closure(graph, "percale.node.main"), ["pyroute2"]) == set()


def test_the_cni_shim_imports_the_standard_library_only():
    graph = source_graph()
    external = {i.split(".")[0] for i in graph["percale_cni.shim"]}
    assert external <= set(sys.stdlib_module_names), external - set(sys.stdlib_module_names)
