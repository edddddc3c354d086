"""The stored form of a resource: the codec's JSON is the wire form (to_document) without the
revision, compact, and reads back as the value written."""

from __future__ import annotations

import json

import pytest

from percale.api import IPAMBlock, IPAMHandle, IPPool, Node, ObjectMeta, parse
from percale.api.ipam import IPAMHandleSpec
from percale.api.ippool import IPPoolSpec
from percale.datastore import DatastoreError
from percale.datastore.codec import decode, encode
from percale.ipam import blocks

pytestmark = pytest.mark.unit


def block_with_allocations() -> IPAMBlock:
    block = IPAMBlock.empty("10.0.0.0/28", affinity="host:node-1",
                            affinity_claim_time="2024-05-01T12:00:00Z", sequence_number=7)
    spec = block.spec
    for pod in ("b", "a", "c"):
        # Secondary keys out of order, as the allocator builds them: the stored form sorts them.
        spec, _ = blocks.assign(spec, 2, f"k8s-pod-network.{pod}",
                                {"pod": pod, "node": "node-1", "namespace": "default"})
    return block.model_copy(update={"spec": spec})


RESOURCES = [
    block_with_allocations(),
    IPAMHandle(metadata=ObjectMeta(name="k8s-pod-network.a", resource_version="12"),
               spec=IPAMHandleSpec(handle_id="k8s-pod-network.a", block={"10.0.0.0/28": 2})),
    IPPool(metadata=ObjectMeta(name="pool"), spec=IPPoolSpec(cidr="10.0.0.0/16")),
    Node(metadata=ObjectMeta(name="node-1", labels={"zone": "b", "rack": "r1"},
                             annotations={"note": "é\x7f"}, uid="u-1")),
]


@pytest.mark.parametrize("value", RESOURCES, ids=lambda v: v.kind)
def test_encode_is_the_compact_wire_form_without_revision(value):
    doc = value.to_document()
    doc["metadata"].pop("resourceVersion", None)
    data = encode(value)
    assert json.loads(data) == doc
    assert b"resourceVersion" not in data
    assert data == json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False).encode()


def test_an_infinite_policy_order_is_stored_as_infinity_not_as_no_order():
    policy = parse({"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy",
                    "metadata": {"name": "last"}, "spec": {"order": float("inf")}})
    assert b'"order":Infinity' in encode(policy)
    assert decode(policy.kind, encode(policy), "7").spec.order == float("inf")


@pytest.mark.parametrize("value", RESOURCES, ids=lambda v: v.kind)
def test_decode_reads_back_what_encode_wrote(value):
    back = decode(value.kind, encode(value), "42")
    assert back.metadata.resource_version == "42"
    assert back.model_copy(update={"metadata": value.metadata}) == value


def test_decode_drops_fields_a_newer_version_stored_and_still_refuses_a_bad_value():
    """A block written by a newer percale, with fields at every level this version does not
    know: read without them, as Calico's Go decoders read (an older node must not lose the block
    in a rolling upgrade). A known field with a bad value is still refused."""
    doc = json.loads(encode(block_with_allocations()))
    doc["futureTop"] = 1
    doc["metadata"]["futureMeta"] = {"a": 1}
    doc["spec"]["futureField"] = [1, 2]
    doc["spec"]["attributes"][0]["futureAttribute"] = "x"
    back = decode("IPAMBlock", json.dumps(doc).encode(), "9")
    assert back.spec == block_with_allocations().spec
    doc["spec"]["cidr"] = "not a cidr"
    with pytest.raises(DatastoreError, match="not a valid IPAMBlock"):
        decode("IPAMBlock", json.dumps(doc).encode(), "9")
