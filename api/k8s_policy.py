"""Kubernetes NetworkPolicy (networking.k8s.io/v1), validated as the apiserver validates it.

percale reads these from YAML (`percalectl apply`, stored converted, as Calico's policy controller
does) and, on the Kubernetes datastore, from the apiserver; percale.policy.convert turns one into
percale's NetworkPolicy. The semantics are Kubernetes' (dataplane.md §A1): a pod is isolated for a
direction when some policy selecting it lists that direction in policyTypes; rules only allow, and
the rules of every policy selecting a pod add up.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from percale.api.fields import MaskedCIDR
from percale.api.meta import (
    DNS_SUBDOMAIN_RULE,
    FieldError,
    InvalidResource,
    KubernetesLabels,
    Model,
    ObjectMeta,
    Resource,
    validation_problems,
)
from percale.api.policy import port_name_problem
# The checks percale's own labels and selectors use: a selector that passes here also parses
# once converted.
from percale.api.selector import label_key_problem, label_value_problem

API_VERSION = "networking.k8s.io/v1"
# What messages call this kind, to tell it from percale's own NetworkPolicy.
KIND = f"NetworkPolicy ({API_VERSION})"
# A NetworkPolicy's name is a DNS subdomain: the apiserver refuses a longer one.
MAX_NAME_LENGTH = 253


class _KubernetesModel(Model):
    """A part of a Kubernetes object: a field given as null is a field left out, as Go's
    decoding has it (`podSelector:` with nothing after it, in YAML, is null)."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class LabelSelectorRequirement(_KubernetesModel):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @field_validator("key")
    @classmethod
    def _key_is_a_label_key(cls, key: str) -> str:
        if problem := label_key_problem(key):
            raise ValueError(problem)
        return key

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise FieldError("values", f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise FieldError("values", f"operator {self.operator} takes no values")
        for value in self.values:
            if problem := label_value_problem(value):
                raise FieldError("values", problem)
        return self


class LabelSelector(_KubernetesModel):
    """Empty: every pod (or namespace)."""

    match_labels: KubernetesLabels = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class IPBlock(_KubernetesModel):
    # Host bits masked, not refused: the whole policy was left out for one, and its pods were
    # then protected by nothing.
    cidr: MaskedCIDR
    except_: list[MaskedCIDR] = Field(default_factory=list, alias="except")

    @model_validator(mode="after")
    def _except_inside(self) -> IPBlock:
        outer = ipaddress.ip_network(self.cidr)
        for i, text in enumerate(self.except_):
            inner = ipaddress.ip_network(text)
            if inner.version != outer.version or not inner.subnet_of(outer) or inner == outer:
                raise FieldError(f"except[{i}]", f"{text} is not strictly inside cidr {self.cidr}")
        return self


class NetworkPolicyPeer(_KubernetesModel):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        if self.ip_block is not None and (self.pod_selector is not None or
                                          self.namespace_selector is not None):
            raise FieldError("ipBlock", "ipBlock cannot be combined with podSelector or "
                             "namespaceSelector in one peer")
        if self.ip_block is None and self.pod_selector is None and self.namespace_selector is None:
            raise FieldError("podSelector", "a peer needs podSelector, namespaceSelector or ipBlock")
        return self


def _int_or_string(value: Any) -> Any:
    """Kubernetes' IntOrString: an integer, or a string (a quoted "8080" is a string, a port
    name, and an invalid one: a name needs a letter); true or 80.0 is neither."""
    if value is None or isinstance(value, str) or (
            isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{json.dumps(value, default=repr)} is not a port: a number or a port name")


class NetworkPolicyPort(_KubernetesModel):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: Annotated[int | str | None, BeforeValidator(_int_or_string)] = None
    end_port: int | None = None

    @model_validator(mode="after")
    def _valid_port(self) -> NetworkPolicyPort:
        if isinstance(self.port, int) and not 1 <= self.port <= 65535:
            raise FieldError("port", f"{self.port} is not between 1 and 65535")
        if isinstance(self.port, str) and (problem := port_name_problem(self.port)):
            raise FieldError("port", problem)
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise FieldError("endPort", "endPort needs a numeric port")
            if not self.port <= self.end_port <= 65535:
                raise FieldError("endPort", f"endPort {self.end_port} must be between port "
                                 f"{self.port} and 65535")
        return self


class IngressRule(_KubernetesModel):
    from_: list[NetworkPolicyPeer] = Field(default_factory=list, alias="from")
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class EgressRule(_KubernetesModel):
    to: list[NetworkPolicyPeer] = Field(default_factory=list)
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class NetworkPolicySpec(_KubernetesModel):
    pod_selector: LabelSelector = Field(default_factory=LabelSelector)
    policy_types: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[IngressRule] = Field(default_factory=list)
    egress: list[EgressRule] = Field(default_factory=list)

    @property
    def effective_types(self) -> tuple[str, ...]:
        """policyTypes, or Kubernetes' default: Ingress always, Egress when there are egress
        rules (so a policy with egress rules and no policyTypes isolates ingress too)."""
        if self.policy_types:
            return tuple(t for t in ("Ingress", "Egress") if t in self.policy_types)
        return ("Ingress", "Egress") if self.egress else ("Ingress",)


class KubernetesNetworkPolicy(_KubernetesModel):
    api_version: Literal["networking.k8s.io/v1"] = API_VERSION
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    metadata: ObjectMeta
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)

    @model_validator(mode="after")
    def _named_and_namespaced(self) -> KubernetesNetworkPolicy:
        name = self.metadata.name
        if len(name) > MAX_NAME_LENGTH:
            raise FieldError("metadata.name", f"a name has at most {MAX_NAME_LENGTH} characters, "
                             f"this one has {len(name)}")
        # The pattern percale's own names follow: the converted knp.default.<name> fits it too.
        if not Resource.name_pattern.fullmatch(name):
            raise FieldError("metadata.name", f"{name!r} is not a valid name: {DNS_SUBDOMAIN_RULE}")
        if not self.metadata.namespace:
            self.metadata.namespace = "default"
        return self


def is_kubernetes_policy(document: Any) -> bool:
    return (isinstance(document, dict) and document.get("apiVersion") == API_VERSION
            and document.get("kind") == "NetworkPolicy")


# Metadata the apiserver writes and percale does not keep (ObjectMeta keeps uid,
# creationTimestamp and resourceVersion).
_SERVER_METADATA = frozenset({"generation", "managedFields", "selfLink"})


def parse_kubernetes_policy(document: dict) -> KubernetesNetworkPolicy:
    """Validate a networking.k8s.io/v1 NetworkPolicy document; InvalidResource names the field."""
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(metadata, dict) and _SERVER_METADATA & metadata.keys():
        # What `kubectl get -o yaml` prints is something to apply again.
        document = {**document, "metadata": {k: v for k, v in metadata.items()
                                             if k not in _SERVER_METADATA}}
    try:
        return KubernetesNetworkPolicy.model_validate(document)
    except ValidationError as err:
        raise InvalidResource(KIND, name, validation_problems(err)) from None
