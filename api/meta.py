"""The shape every percale resource shares: apiVersion, kind, metadata, spec (and status).

Each kind registers itself here with its plural, its short names and whether it is namespaced, so
the datastore can lay out keys and `percalectl` can resolve `ippools`, `ipp` or `IPPool` alike.
Validation failures are turned into `InvalidResource`, whose problems name the field and the
reason, never a pydantic dump.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from percale.api.selector import label_key_problem, labels_problem

API_VERSION = "percale.io/v1"


class Model(BaseModel):
    """Base for every nested object: camelCase on the wire, unknown fields rejected."""

    # ser_json_inf_nan: an infinite policy order is stored as Infinity, as json.dumps wrote it,
    # not as null (which reads back as no order at all).
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True,
        ser_json_inf_nan="constants",
    )


# The longest name a DNS subdomain, and so any object's name, may have.
DNS_SUBDOMAIN_MAX = 253
# Kubernetes' (and Calico's) DNS names: a label is 1-63 lower-case letters, digits and '-', not
# starting or ending with '-'; a subdomain is labels joined by '.', at most 253 characters.
_DNS_LABEL_FORMAT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_DNS_LABEL_FORMAT)
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL_FORMAT}(\.{_DNS_LABEL_FORMAT})*")
DNS_SUBDOMAIN_RULE = ("lower-case letters, digits, '-' and '.', each part between dots starting and "
                      "ending with a letter or digit, at most 253 characters")
# What the apiserver allows in one object's annotations, keys and values together.
ANNOTATIONS_LIMIT = 256 * 1024


def _kubernetes_labels(labels: dict[str, str]) -> dict[str, str]:
    if problem := labels_problem(labels):
        raise ValueError(problem)
    return labels


# A map of labels as Kubernetes allows them: an object's own, a Profile's labelsToApply, a
# LabelSelector's matchLabels.
KubernetesLabels = Annotated[dict[str, str], AfterValidator(_kubernetes_labels)]


# ObjectMeta fields the apiserver keeps for itself, which `kubectl get -o yaml` prints: calicoctl
# decodes them into metav1.ObjectMeta and does not write them back, so what kubectl printed
# applies again. percale keeps none of them for its resources: they are taken and dropped, never
# stored, never printed back (refused as unknown, kubectl's output did not apply at all).
SERVER_MANAGED_METADATA = frozenset({
    "generation", "managedFields", "finalizers", "ownerReferences", "generateName",
    "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
})


class ObjectMeta(Model):
    name: str
    namespace: str | None = None
    labels: KubernetesLabels = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Set by the datastore, never by the user: the opaque revision of the stored value, and the
    # identity and birth time it got when it was created.
    resource_version: str | None = None
    uid: str | None = None
    creation_timestamp: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_server_managed(cls, data: Any) -> Any:
        if isinstance(data, dict) and not SERVER_MANAGED_METADATA.isdisjoint(data):
            return {k: v for k, v in data.items() if k not in SERVER_MANAGED_METADATA}
        return data

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_dns_label(cls, namespace: str | None) -> str | None:
        # The namespace is one segment of the stored key: a '/' in it would put the object
        # under another namespace when the key is read back.
        if namespace is not None and (problem := namespace_problem(namespace)):
            raise ValueError(problem)
        return namespace

    @field_validator("annotations")
    @classmethod
    def _annotations_fit_kubernetes(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            # Kubernetes checks the key lower-cased (an upper-case prefix passes), as here.
            if label_key_problem(key.lower()):
                raise ValueError(label_key_problem(key, "annotation key"))
        size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
        if size > ANNOTATIONS_LIMIT:
            raise ValueError(f"annotations hold {size} bytes; at most {ANNOTATIONS_LIMIT} (256 KiB) "
                             "in all, as Kubernetes allows")
        return annotations


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    # Kinds percale maintains itself (IPAM state); percalectl shows them but does not write them.
    managed: bool


class Resource(Model):
    """A percale resource. Subclasses set `spec` (and `status`) and call `register`."""

    api_version: Literal["percale.io/v1"] = API_VERSION
    kind: str
    metadata: ObjectMeta

    info: ClassVar[KindInfo]
    # The names this kind's objects may take; most kinds use Kubernetes DNS-subdomain names.
    name_pattern: ClassVar[re.Pattern[str]] = _DNS_SUBDOMAIN
    # What a refused name is told, when the pattern alone would not say it well.
    name_rule: ClassVar[str] = ""

    @classmethod
    def is_valid_name(cls, name: str) -> bool:
        """Whether an object of this kind may be called `name` (also for settings that name
        one, such as a node's name, checked before anything is written)."""
        return len(name) <= DNS_SUBDOMAIN_MAX and cls.name_pattern.fullmatch(name) is not None

    @field_validator("metadata")
    @classmethod
    def _metadata_fits_kind(cls, meta: ObjectMeta) -> ObjectMeta:
        if not cls.is_valid_name(meta.name):
            rule = cls.name_rule or (DNS_SUBDOMAIN_RULE if cls.name_pattern is _DNS_SUBDOMAIN
                                     else "")
            raise ValueError(f"name {meta.name!r} is not a valid {cls.info.kind} name"
                             + (f": {rule}" if rule else ""))
        if cls.info.namespaced and not meta.namespace:
            meta.namespace = "default"
        if not cls.info.namespaced and meta.namespace:
            raise ValueError(f"{cls.info.kind} is not namespaced; remove metadata.namespace")
        return meta

    def to_document(self) -> dict[str, Any]:
        """The wire form: what `-o yaml` prints and what the datastore stores."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True,
                               exclude={"metadata": self.empty_maps()})

    def empty_maps(self) -> set[str]:
        """The metadata fields the wire form leaves out: like kubectl, empty label and
        annotation maps rather than "{}"."""
        meta = self.metadata
        return {name for name, held in (("labels", meta.labels), ("annotations", meta.annotations))
                if not held}


KINDS: dict[str, type[Resource]] = {}
_BY_NAME: dict[str, type[Resource]] = {}


def register(
    cls: type[Resource], *, plural: str, short_names: tuple[str, ...] = (),
    namespaced: bool = False, managed: bool = False, cli_aliases: tuple[str, ...] = (),
) -> type[Resource]:
    """`short_names` go into the kind's CRD (kubectl's) as well; `cli_aliases` are percalectl's
    only (calicoctl's names that would read oddly to kubectl, such as `policy`)."""
    kind = cls.model_fields["kind"].default
    cls.info = KindInfo(kind, plural, short_names, namespaced, managed)
    KINDS[kind] = cls
    for alias in (kind, plural, *short_names, *cli_aliases):
        _BY_NAME[alias.lower()] = cls
    return cls


def kind_named(name: str) -> type[Resource]:
    """The kind a user means by `ippools`, `ipp`, `IPPool` or `ippool`; KeyError when none."""
    return _BY_NAME[name.lower()]


@dataclass(frozen=True)
class Problem:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


def written(info: ValidationInfo) -> bool:
    """Whether a validator judges new input rather than a value read back from the datastore
    (which validates with context {"stored": True}, datastore/codec.py READ_CONTEXT): a rule
    added later holds what users write to it, not what they stored before it existed."""
    return not (isinstance(info.context, dict) and info.context.get("stored"))


class FieldError(ValueError):
    """Raised by a check that spans several fields, to point at the field that is wrong.

    `field` is the wire name relative to the object the validator belongs to ("blockSize",
    "metadata.name"); the reported location becomes that object's location plus `field`.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        super().__init__(reason)


class InvalidResource(ValueError):
    """A document is not a valid resource; `problems` says which field is wrong and why."""

    def __init__(self, kind: str, name: str | None, problems: list[Problem]):
        self.kind, self.name, self.problems = kind, name, problems
        what = f"{kind} {name!r}" if name else kind
        super().__init__(f"invalid {what}: " + "; ".join(map(str, problems)))


def namespace_problem(namespace: str) -> str | None:
    """Why `namespace` is not a Kubernetes namespace name (a DNS label); None if it is one."""
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        return (f"namespace {namespace!r} is not a valid namespace: lower-case letters, digits "
                "and '-', starting and ending with a letter or digit, at most 63 characters")
    return None


def validation_problems(err: ValidationError) -> list[Problem]:
    """A pydantic error as problems naming the field (wire spelling) and the reason."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            problems.append(Problem(f"{loc}.{cause.field}" if loc else cause.field, str(cause)))
            continue
        if e["type"] == "extra_forbidden":
            reason = "unknown field"
        elif e["type"] == "missing":
            reason = "required field is missing"
        else:
            reason = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problems.append(Problem(loc, reason))
    return problems


def explained(err: ValidationError) -> str:
    """A pydantic error in one line: each field (wire spelling) with its reason, as `percalectl
    apply` reports a document, without pydantic's input echo and links."""
    return "; ".join(map(str, validation_problems(err)))


def parse(document: Any) -> Resource:
    """Validate one document (a dict from YAML or JSON) into its resource class."""
    if not isinstance(document, dict):
        raise InvalidResource("resource", None, [Problem("", "a resource must be a mapping")])
    name = (document.get("metadata") or {}).get("name") if isinstance(document.get("metadata"), dict) else None
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if api_version != API_VERSION:
        raise InvalidResource(
            str(kind or "resource"), name,
            [Problem("apiVersion", f"must be {API_VERSION!r}, got {api_version!r}")],
        )
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(sorted(KINDS))
        raise InvalidResource("resource", name, [Problem("kind", f"unknown kind {kind!r}; known kinds: {known}")])
    try:
        return cls.model_validate(document)
    except ValidationError as err:
        raise InvalidResource(kind, name, validation_problems(err)) from None
