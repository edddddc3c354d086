"""manifests/ is what the code generates (installation/manifests.py), and render() is what the
golden files under tests/unit/golden/ say, for the Installations users write most."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from percale.ctl import __version__, crd_schema
from percale.installation import manifests, model, render

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"


def test_manifests_folder_matches_the_code():
    for name, text in manifests.rendered(crd_schema.rendered(), __version__).items():
        assert (ROOT / "manifests" / name).read_text() == text, (
            f"manifests/{name} is out of date; run: percalectl manifests --output-dir manifests")


def test_operator_manifest_holds_every_crd_and_the_operator():
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "operator.yaml").read_text()) if d]
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert "installations.operator.percale.io" in crds and "ippools.percale.io" in crds
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {
        ("Namespace", "percale-operator"), ("ServiceAccount", "percale-operator"),
        ("ClusterRole", "percale-operator"), ("Deployment", "percale-operator")}


def _installation(path: Path) -> model.InstallationSpec:
    doc = yaml.safe_load(path.read_text())
    return model.with_defaults(model.Installation.model_validate(doc).spec)


CASES = {
    "seed": ROOT / "manifests" / "installation.yaml",
    "bgp-disabled": GOLDEN / "bgp-disabled.input.yaml",
    "dual-stack": GOLDEN / "dual-stack.input.yaml",
    "node-selector": GOLDEN / "node-selector.input.yaml",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_its_golden_file(case):
    spec = _installation(CASES[case])
    assert model.problems(spec) == []
    out = yaml.safe_dump_all([*render.render(spec, "0.1.0"), *render.pools(spec)], sort_keys=False)
    golden = GOLDEN / f"{case}.golden.yaml"
    if os.environ.get("PERCALE_UPDATE_GOLDEN"):
        golden.write_text(out)
    assert golden.read_text() == out, f"render changed; if on purpose: PERCALE_UPDATE_GOLDEN=1 pytest {__file__}"


def _env(spec) -> dict[str, str]:
    daemonset = render.node_daemonset(spec, "0.1.0")
    return {e["name"]: e.get("value") for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_what_each_case_turns_into():
    seed = _installation(CASES["seed"])
    assert _env(seed)["PERCALE_NETWORKING_BACKEND"] == "bgp"
    assert render.pools(seed)[0]["spec"]["vxlanMode"] == "CrossSubnet"
    off = _installation(CASES["bgp-disabled"])
    assert _env(off)["PERCALE_NETWORKING_BACKEND"] == "vxlan"
    assert {p["spec"]["vxlanMode"] for p in render.pools(off)} == {"Always"}
    dual = _installation(CASES["dual-stack"])
    assert _env(dual)["IP6"] == "autodetect" and _env(dual)["IP6_AUTODETECTION_METHOD"] == "first-found"
    assert [p["spec"]["natOutgoing"] for p in render.pools(dual)] == [True, False]
    selected = _installation(CASES["node-selector"])
    assert render.pools(selected)[0]["spec"]["nodeSelector"] == "zone == 'a'"


def test_defaults_follow_tigera_where_percale_can():
    spec = model.with_defaults(model.InstallationSpec())
    pool = spec.calico_network.ip_pools[0]
    assert (pool.name, pool.cidr, pool.block_size, pool.nat_outgoing) == (
        "default-ipv4-ippool", "192.168.0.0/16", 26, "Enabled")
    empty = model.with_defaults(model.InstallationSpec.model_validate({"calicoNetwork": {"ipPools": []}}))
    assert empty.calico_network.ip_pools == [] and render.pools(empty) == []


@pytest.mark.parametrize("pools, field, words", [
    ([{"cidr": "10.0.0.0/16"}, {"cidr": "10.0.128.0/17"}], "ipPools[1].cidr", "overlaps"),
    ([{"cidr": "10.0.0.0/16", "blockSize": 33}], "ipPools[0].blockSize", "outside 20-32"),
    ([{"cidr": "10.0.0.1/16"}], "ipPools[0].cidr", "host bits"),
    ([{"cidr": "10.0.0.0/16", "encapsulation": "IPIP"}], "ipPools[0].encapsulation", "not supported"),
])
def test_problems_name_the_field(pools, field, words):
    spec = model.with_defaults(model.InstallationSpec.model_validate({"calicoNetwork": {"ipPools": pools}}))
    found = model.problems(spec)
    assert any(p.field == f"spec.calicoNetwork.{field}" and words in p.reason for p in found), found


def test_a_pool_cidr_changed_after_install_is_refused():
    spec = model.with_defaults(model.InstallationSpec())
    found = model.problems(spec, {"default-ipv4-ippool": "10.9.0.0/16"})
    assert [p.field for p in found] == ["spec.calicoNetwork.ipPools[0].cidr"]


def test_controllers_serve_metrics_on_kube_controllers_port_of_the_pods_family():
    def listen(pools: list[dict]) -> str:
        spec = model.with_defaults(model.InstallationSpec.model_validate(
            {"calicoNetwork": {"ipPools": pools}}))
        pod = render.controllers_deployment(spec, "0.1.0")["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["ports"] == [{"name": "metrics", "containerPort": 9094, "protocol": "TCP"}]
        return {e["name"]: e.get("value") for e in container["env"]}["PERCALE_METRICS_LISTEN"]

    assert listen([{"cidr": "10.0.0.0/16"}]) == "0.0.0.0:9094"
    v6 = {"cidr": "fd00::/48", "blockSize": 122}
    assert listen([{"cidr": "10.0.0.0/16"}, v6]) == "0.0.0.0:9094"
    assert listen([v6]) == "[::]:9094"
