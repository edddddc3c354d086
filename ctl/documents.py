"""Reading resources from `-f FILE|DIR|-`: YAML or JSON, several documents, `List` wrappers;
Kubernetes NetworkPolicies (networking.k8s.io/v1) too, converted into percale's NetworkPolicy.
`-n NAMESPACE` is the namespace of a namespaced document that names none, as in calicoctl.

Every document is validated before anything is written, and every problem is reported with where
it came from: the file, the document's position in it, the kind and name, the field and the reason.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from percale.api import KINDS, InvalidResource, Problem, Resource, parse
from percale.api.k8s_policy import is_kubernetes_policy, parse_kubernetes_policy
from percale.policy.convert import convert

_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Document:
    source: str  # "pools.yaml, document 2" — what a message points the user at
    resource: Resource


class InputError(Exception):
    """One or more documents cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _files(target: str) -> list[tuple[str, str]]:
    """(display name, text) for each file `-f` names; a folder gives its YAML and JSON files."""
    if target == "-":
        return [("<stdin>", sys.stdin.read())]
    if not target:
        # Path("") is the working directory: `-f "$FILE"` with FILE unset would apply (or
        # delete) every resource file there.
        raise InputError(["-f: the file name is empty"])
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        if not files:
            raise InputError([f"{target}: no .yaml, .yml or .json files in this folder"])
    elif path.exists():
        files = [path]
    else:
        raise InputError([f"{target}: no such file or folder"])
    out = []
    for file in files:
        try:
            out.append((str(file), file.read_text()))
        except (OSError, UnicodeDecodeError) as err:
            raise InputError([f"{file}: cannot read: {err}"]) from None
    return out


class _StrictLoader(yaml.SafeLoader):
    """YAML (and JSON) read as calicoctl's strict decoding reads it: a key repeated in one
    mapping is refused, naming it. Read leniently, the last value won without a word: two
    `spec:` blocks stored the second alone, the first's fields (a BGP password) dropped."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            # A merge (`<<: *base`) may be overridden by the mapping's own keys, as YAML says.
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:
                continue  # unhashable: the base constructor refuses it with its own message
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f'key "{key}" already set in map', key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _where(source: str, doc: object) -> str:
    if isinstance(doc, dict):
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        if doc.get("kind") and meta.get("name"):
            return f"{source} ({doc['kind']} {meta['name']!r})"
    return source


def _expand(source: str, doc: object) -> list[tuple[str, object]]:
    """A `List` (or `IPPoolList`, ...) stands for its items, as kubectl and calicoctl read it;
    InputError when its items are no list."""
    if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
        items = doc["items"]
        if not isinstance(items, list):
            raise InputError([f"{source} ({doc['kind']}): items: must be a list of resources"])
        return [(f"{source}, item {i}", item) for i, item in enumerate(items, 1)]
    return [(source, doc)]


def not_namespaced(kind: str, flag: str = "-n") -> str:
    """calicoctl's refusal of -n (or -A) for a global kind, and what to do."""
    return f"{kind} is not namespaced: leave out {flag}"


def in_namespace(document: object, namespace: str | None) -> object:
    """`document` as read with `-n namespace` (calicoctl's handleNamespace): a namespaced
    document that names no namespace takes it; one that names another is refused, as is a
    global kind. Without -n, a namespaced document names "default" (the model fills it in).
    Read as given (no namespace), `delete -f pol.yaml -n production` deleted default's policy
    of that name, another one, and left production's in place."""
    if namespace is None or not isinstance(document, dict):
        return document
    kind = document.get("kind")
    meta = document.get("metadata")
    # A Kubernetes NetworkPolicy is kind NetworkPolicy too: namespaced, as percale's.
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(meta, dict):
        return document  # parse names what is wrong with it
    name = meta.get("name") if isinstance(meta.get("name"), str) else None
    if not cls.info.namespaced:
        raise InvalidResource(kind, name, [Problem("", not_namespaced(kind))])
    given = meta.get("namespace")
    if given and given != namespace:
        raise InvalidResource(kind, name, [Problem(
            "metadata.namespace", "resource namespace does not match client namespace: "
            f"{given} != {namespace} (-n)")])
    return {**document, "metadata": {**meta, "namespace": namespace}}


def _resource(document: object, namespace: str | None) -> Resource:
    """A percale resource, or a Kubernetes NetworkPolicy stored converted as Calico's policy
    controller stores it (knp.default.<name>)."""
    document = in_namespace(document, namespace)
    if is_kubernetes_policy(document):
        return convert(parse_kubernetes_policy(document))
    return parse(document)


def load(targets: list[str], namespace: str | None = None) -> list[Document]:
    """Every resource in the named files, in order, namespaced documents that name no
    namespace in `namespace` (-n); raises InputError naming every problem."""
    documents: list[Document] = []
    problems: list[str] = []
    for target in targets:
        try:
            files = _files(target)
        except InputError as err:
            problems += err.problems
            continue
        for name, text in files:
            try:
                raw = list(yaml.load_all(text, Loader=_StrictLoader))
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                reason = getattr(err, "problem", None) or str(err)
                problems.append(f"{name}: not valid YAML or JSON{at}: {reason}")
                continue
            except RecursionError:
                problems.append(f"{name}: nested too deeply to read")
                continue
            for number, doc in enumerate(raw, 1):
                if doc is None:
                    continue  # an empty document between two "---"
                source = f"{name}, document {number}" if len(raw) > 1 else name
                try:
                    expanded = _expand(source, doc)
                except InputError as err:
                    problems += err.problems
                    continue
                for where, item in expanded:
                    try:
                        documents.append(Document(where, _resource(item, namespace)))
                    except InvalidResource as err:
                        for problem in err.problems:
                            problems.append(f"{_where(where, item)}: {problem}")
    if problems:
        raise InputError(problems)
    if not documents:
        raise InputError([f"{', '.join(targets)}: no resources found"])
    return documents
