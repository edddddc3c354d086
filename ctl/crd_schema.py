"""The CustomResourceDefinitions in crds/, made from the pydantic models percalectl validates with.

One model, two validators: what `percalectl apply` accepts and what `kubectl apply` accepts agree
because the CRD schema is generated from the same classes. The translation is small and strict
(anything it does not know fails the generator, so a new kind of field cannot slip through
unvalidated):

- `$ref`s are inlined and `Optional[X]` becomes X with `nullable: true` (a structural schema
  has no `anyOf` of types and no `$ref`);
- `const` becomes a one-value `enum`; `additionalProperties: false` is dropped (the apiserver
  prunes or, with strict field validation, rejects unknown fields itself);
- titles and null defaults go; other defaults stay, so `kubectl get` shows what percale assumes.

Cross-field rules that pydantic checks in code (a blockSize inside its pool) stay percalectl's;
the apiserver additionally enforces what only it can: fields that never change (CEL
`self == oldSelf`).

Node and WorkloadEndpoint have no CRD: on Kubernetes they are the Node and the Pod themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from percale.api import KINDS
from percale.api.meta import API_VERSION

GROUP, VERSION = API_VERSION.split("/")

NATIVE_KINDS = ("Node", "WorkloadEndpoint")

# kubectl get columns, Calico's where it has them.
_PRINTER_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "IPPool": [("CIDR", "string", ".spec.cidr"), ("VXLAN", "string", ".spec.vxlanMode"),
               ("NAT", "boolean", ".spec.natOutgoing"), ("BLOCKSIZE", "integer", ".spec.blockSize")],
    "IPAMBlock": [("CIDR", "string", ".spec.cidr"), ("AFFINITY", "string", ".spec.affinity")],
    "BlockAffinity": [("NODE", "string", ".spec.node"), ("CIDR", "string", ".spec.cidr"),
                      ("STATE", "string", ".spec.state")],
    "IPAMHandle": [("HANDLE", "string", ".spec.handleID")],
    "BGPPeer": [("PEERIP", "string", ".spec.peerIP"), ("ASN", "integer", ".spec.asNumber")],
}
# Fields fixed at creation (spec-relative), enforced by the apiserver.
_IMMUTABLE: dict[str, tuple[str, ...]] = {
    "IPPool": ("cidr", "blockSize"),
    "IPAMBlock": ("cidr",),
    "BlockAffinity": ("node", "cidr"),
    "IPAMHandle": ("handleID",),
}
_DROPPED = {"title", "additionalProperties", "description"}


def crd_kinds() -> list[str]:
    return sorted(k for k in KINDS if k not in NATIVE_KINDS)


def file_name(kind: str) -> str:
    return f"{GROUP}_{KINDS[kind].info.plural}.yaml"


def _structural(schema: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return _structural({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, defs, where)
    out: dict[str, Any] = {}
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if sorted(o.get("type", "") for o in options) == ["integer", "string"]:
            # A port (80, "80:90" or a name) or a protocol (6 or "TCP"): Kubernetes' own
            # int-or-string, as IntOrString fields are declared.
            inner = {"x-kubernetes-int-or-string": True}
            if len(options) < len(schema["anyOf"]):
                inner["nullable"] = True
            return inner
        if len(options) != 1:
            raise ValueError(f"{where}: a union of {len(options)} types has no structural schema")
        inner = _structural(options[0], defs, where)
        if len(options) < len(schema["anyOf"]):
            inner["nullable"] = True
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**inner, **_structural(rest, defs, where)} if rest else inner
    for key, value in schema.items():
        if key in _DROPPED and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs, f"{where}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value, defs, f"{where}[]")
        elif key == "const":
            out["enum"] = [value]
        elif key == "default":
            if value is not None:
                out[key] = value
        elif key in ("type", "enum", "required", "minimum", "maximum", "pattern", "maxLength",
                     "minLength", "maxItems", "minItems", "format"):
            out[key] = value
        else:
            raise ValueError(f"{where}: the schema keyword {key!r} has no CRD translation")
    if out.get("type") == "integer" and out.get("format") is None:
        out["format"] = "int64"
    return dict(sorted(out.items(), key=lambda kv: _KEY_ORDER.get(kv[0], len(_KEY_ORDER))))


# The order kubectl explain and controller-gen print schema keywords in, for readable files.
_KEY_ORDER = {k: i for i, k in enumerate(
    ("type", "format", "nullable", "default", "enum", "minimum", "maximum", "pattern",
     "minLength", "maxLength", "minItems", "maxItems", "items", "additionalProperties",
     "properties", "required"))}


def openapi_schema(kind: str, cls: type | None = None) -> dict[str, Any]:
    cls = cls or KINDS[kind]
    schema = cls.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    props = schema["properties"]
    body: dict[str, Any] = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
        },
        "required": ["spec"],
    }
    for part in ("spec", "status"):
        if part in props:
            body["properties"][part] = _structural(props[part], defs, f"{kind}.{part}")
    spec = body["properties"]["spec"]
    if kind == "Installation":
        body["required"] = []
        body["x-kubernetes-validations"] = [{
            "rule": "self.metadata.name == 'default'",
            "message": "the Installation must be named default", "reason": "FieldValueInvalid"}]
    for field in _IMMUTABLE.get(kind, ()):
        spec["properties"][field]["x-kubernetes-validations"] = [
            {"rule": "self == oldSelf", "message": f"{field} cannot be changed",
             "reason": "FieldValueInvalid"}]
    return body


def crd(kind: str) -> dict[str, Any]:
    info = KINDS[kind].info
    version: dict[str, Any] = {
        "name": VERSION, "served": True, "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(kind)},
    }
    columns = [{"name": n, "type": t, "jsonPath": p} for n, t, p in _PRINTER_COLUMNS.get(kind, [])]
    columns.append({"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    version["additionalPrinterColumns"] = columns
    if "status" in KINDS[kind].model_fields:
        version["subresources"] = {"status": {}}
    names: dict[str, Any] = {"kind": kind, "listKind": f"{kind}List", "plural": info.plural,
                             "singular": kind.lower()}
    if info.short_names:
        names["shortNames"] = [s for s in info.short_names if s != kind.lower()]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced" if info.namespaced else "Cluster",
            "versions": [version],
        },
    }


def installation_crd() -> dict[str, Any]:
    """operator.percale.io/v1 Installation: cluster-scoped, named default, status subresource,
    tigera's condition types as columns."""
    from percale.installation import model

    def condition(kind: str) -> dict[str, str]:
        return {"name": kind.upper(), "type": "string",
                "jsonPath": f".status.conditions[?(@.type=='{kind}')].status"}

    version = {
        "name": model.VERSION, "served": True, "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema("Installation", model.Installation)},
        "subresources": {"status": {}},
        "additionalPrinterColumns": [
            condition("Ready"), condition("Progressing"), condition("Degraded"),
            {"name": "MTU", "type": "integer", "jsonPath": ".status.mtu"},
            {"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{model.PLURAL}.{model.GROUP}"},
        "spec": {"group": model.GROUP,
                 "names": {"kind": model.KIND, "listKind": f"{model.KIND}List",
                           "plural": model.PLURAL, "singular": "installation"},
                 "scope": "Cluster", "versions": [version]},
    }


HEADER = "# Generated by `percalectl crds --output-dir crds` from percale's resource models; do not edit.\n"


def rendered() -> dict[str, str]:
    """File name -> YAML text, for every kind stored as a custom resource, and the operator's
    Installation."""
    def text(doc: dict[str, Any]) -> str:
        # Through JSON first: shared sub-objects would otherwise become YAML anchors.
        return HEADER + yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False)

    files = {file_name(k): text(crd(k)) for k in crd_kinds()}
    files["operator.percale.io_installations.yaml"] = text(installation_crd())
    return files


def write(directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*percale.io_*.yaml"):
        if stale.name not in rendered():
            stale.unlink()
    for name, text in rendered().items():
        (directory / name).write_text(text)
    return sorted(rendered())


def stale_files(directory: Path) -> list[str]:
    """Names in `directory` that differ from what the models generate (missing ones included)."""
    want = rendered()
    have = {p.name for p in directory.glob("*percale.io_*.yaml")}
    return sorted(n for n in want.keys() | have
                  if n not in want or n not in have or (directory / n).read_text() != want[n])
