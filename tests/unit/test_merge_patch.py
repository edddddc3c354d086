"""`percalectl patch`'s merge: RFC 7386's own examples (Appendix A), and what `--patch` takes."""

from __future__ import annotations

import pytest

from percale.ctl.crud import merge_patch, patch_document
from percale.ctl.documents import InputError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("target, changes, result", [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_rfc_7386_appendix_a(target, changes, result):
    assert merge_patch(target, changes) == result


def test_the_document_patched_is_not_changed_in_place():
    target = {"spec": {"cidr": "10.0.0.0/16", "disabled": False}}
    merge_patch(target, {"spec": {"disabled": True}})
    assert target == {"spec": {"cidr": "10.0.0.0/16", "disabled": False}}


@pytest.mark.parametrize("text, reason", [
    ("[1]", "--patch: must be a JSON object"),
    ("spec: {}", "--patch: not valid JSON"),
    ('{"spec": {}, "spec": {"disabled": true}}', 'key "spec" already set in map'),
    ("[" * 100_000 + "]" * 100_000, "--patch: nested too deeply to read"),
])
def test_a_patch_that_is_not_one_json_object_is_refused(text, reason):
    with pytest.raises(InputError) as caught:
        patch_document(text)
    assert reason in caught.value.problems[0], caught.value.problems
