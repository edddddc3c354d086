"""A Pod whose percale annotation was edited by hand, read as the Kubernetes backend reads it:
whatever its shape, a DatastoreError naming the Pod (an unreadable pair when the view defers
errors), never an exception that would end the view's watch on every node."""

from __future__ import annotations

import json

import pytest

from percale.datastore import DatastoreError
from percale.datastore.kube_native import ENDPOINT
from percale.datastore.kubernetes import _read

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
