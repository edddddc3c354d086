"""A Pod whose percale annotation was edited by hand, read as the Kubernetes backend reads it:
whatever its shape, a DatastoreError naming the Pod (an unreadable pair when the view defers
errors), never an exception that would end the view's watch on every node."""

from __future__ import annotations

import json

import pytest

from percale.datastore import DatastoreError
from percale.datastore.kube_native import ENDPOINT
from percale.datastore.kubernetes import _read, from_object

pytestmark = pytest.mark.unit


def pod(annotation: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "default", "resourceVersion": "42",
                         "annotations": {ENDPOINT: annotation}},
            "spec": {"containers": [{"name": "main"}]}}


@pytest.mark.parametrize("annotation", [
    json.dumps({"name": "x", "spec": None}),
    json.dumps({"name": "x", "spec": "oops"}),
    json.dumps({"name": "x", "spec": [1]}),
    json.dumps({"name": 5, "spec": {}}),
    json.dumps([1]),
    "not json",
])
def test_a_hand_edited_endpoint_annotation_is_unreadable_not_a_crash(annotation):
    with pytest.raises(DatastoreError, match="web-0"):
        _read("WorkloadEndpoint", pod(annotation), False)
    deferred = _read("WorkloadEndpoint", pod(annotation), True)
    assert deferred is not None and deferred.revision == "42"
    with pytest.raises(DatastoreError, match="web-0"):
        deferred.value


def test_fields_a_newer_version_wrote_are_dropped_when_read():
    """A rolling upgrade on Kubernetes: the newer percale's CRD declares a field this version
    does not know, and its CNI side writes a field more into a Pod's annotation. This version
    reads both objects without them, instead of losing the pool or the endpoint."""
    pool = from_object("IPPool", {
        "apiVersion": "percale.io/v1", "kind": "IPPool",
        "metadata": {"name": "newer", "resourceVersion": "7"},
        "spec": {"cidr": "10.7.0.0/16", "natOutgoing": True, "futureMode": "Sometimes"}})
    assert pool.value.spec.cidr == "10.7.0.0/16" and pool.revision == "7"
    endpoint = _read("WorkloadEndpoint", pod(json.dumps({
        "name": "node1-k8s-web--0-eth0",
        "spec": {"node": "node1", "orchestrator": "k8s", "endpoint": "eth0", "pod": "web-0",
                 "interfaceName": "cali0123456789a", "ipNetworks": ["10.0.0.5/32"],
                 "futureField": {"x": 1}}})), False)
    assert endpoint.value.spec.ip_networks == ["10.0.0.5/32"]
