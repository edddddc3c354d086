"""crds/ is what the models generate, and every schema is one the apiserver accepts as
structural (the suite's real apiserver installs them too: tests/helpers/kube_apiserver.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from percale.ctl import crd_schema

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_crds_folder_matches_the_models():
    stale = crd_schema.stale_files(CRDS)
    assert not stale, (f"crds/ is out of date ({', '.join(stale)}); "
                       "run: percalectl crds --output-dir crds")


def _walk(schema: dict, where: str):
    yield where, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk(schema[key], f"{where}[]")


def test_every_schema_node_is_structural():
    for path in sorted(CRDS.glob("percale.io_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for where, node in _walk(schema, path.name):
            # int-or-string (ports, protocols) is the one node structural schemas leave untyped.
            assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{where} has no type"
            assert not {"anyOf", "oneOf", "allOf", "$ref"} & node.keys(), where
            assert node.get("additionalProperties") is not False, where
            assert "x-kubernetes-preserve-unknown-fields" not in node, where


def test_ippool_crd_has_calicos_columns_and_immutable_fields():
    crd = yaml.safe_load((CRDS / "percale.io_ippools.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "CIDR", "VXLAN", "NAT", "BLOCKSIZE", "AGE"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for field in ("cidr", "blockSize"):
        assert spec[field]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert crd["spec"]["scope"] == "Cluster"


def test_native_kinds_have_no_crd():
    names = {p.name for p in CRDS.glob("*.yaml")}
    assert "percale.io_nodes.yaml" not in names
    assert "percale.io_workloadendpoints.yaml" not in names
    status = yaml.safe_load((CRDS / "percale.io_nodestatuses.yaml").read_text())
    assert status["spec"]["versions"][0]["subresources"] == {"status": {}}
