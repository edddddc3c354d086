"""A Kubernetes NetworkPolicy percale cannot hold, given to `percalectl apply -f`, exits 1 with the
file, the document, the Kubernetes field and the reason, and nothing of the batch is written.
Each case once printed pydantic's traceback instead."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cli

GOOD = """\
apiVersion: percale.io/v1
kind: IPPool
metadata:
  name: good-pool
spec:
  cidr: 10.10.0.0/16
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: good-policy
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
"""

BAD = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {name}
  namespace: shop
spec:
{spec}
"""

KEY_RULE = ("is not valid: a name starts and ends with a letter or digit, with only letters, "
            "digits, '-', '_' and '.' between")
LONG = "a" * 242

# name, spec (indented under `spec:`), and the line percalectl prints for the bad document.
CASES = {
    "upper-case name": (
        "UPPER", "  podSelector: {}",
        "(NetworkPolicy 'UPPER'): metadata.name: 'UPPER' is not a valid name: lower-case letters, "
        "digits, '-' and '.', each part between dots starting and ending with a letter or digit, at most 253 characters"),
    "name too long to convert": (
        LONG, "  podSelector: {}",
        f"(NetworkPolicy '{LONG}'): metadata.name: percale stores this policy as "
        "knp.default.<name>, so the name has at most 241 characters; this one has 242"),
    "matchLabels key": (
        "p", '  podSelector: {matchLabels: {"a b": c}}',
        f"(NetworkPolicy 'p'): spec.podSelector.matchLabels: label key 'a b' {KEY_RULE}"),
    "matchExpressions key": (
        "p", '  podSelector: {matchExpressions: [{key: "a b", operator: Exists}]}',
        f"(NetworkPolicy 'p'): spec.podSelector.matchExpressions.0.key: label key 'a b' {KEY_RULE}"),
    "label value with a quote": (
        "p", """  podSelector: {matchLabels: {app: 'we"b'}}""",
        "(NetworkPolicy 'p'): spec.podSelector.matchLabels: label value 'we\"b' is not valid: a "
        "value is empty, or starts and ends with a letter or digit, with only letters, digits, "
        "'-', '_' and '.' between (label 'app')"),
    "ingress peer podSelector": (
        "p", '  ingress: [{from: [{podSelector: {matchLabels: {"a b": c}}}]}]',
        "(NetworkPolicy 'p'): spec.ingress.0.from.0.podSelector.matchLabels: label key 'a b' "
        f"{KEY_RULE}"),
    "ingress peer namespaceSelector": (
        "p", '  ingress: [{from: [{namespaceSelector: {matchExpressions: '
             '[{key: "a b", operator: Exists}]}}]}]',
        "(NetworkPolicy 'p'): spec.ingress.0.from.0.namespaceSelector.matchExpressions.0.key: "
        f"label key 'a b' {KEY_RULE}"),
    # Kubernetes reads a quoted port as a port name, and a name needs a letter.
    "quoted port number": (
        "p", '  ingress: [{ports: [{port: "8080"}]}]',
        "(NetworkPolicy 'p'): spec.ingress.0.ports.0.port: '8080' is not a port name (lower-case "
        "letters, digits and inner dashes, with at least one letter)"),
    "boolean port": (
        "p", '  ingress: [{ports: [{port: true}]}]',
        "(NetworkPolicy 'p'): spec.ingress.0.ports.0.port: true is not a port: a number or a port "
        "name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_kubernetes_policy_names_its_field_and_nothing_is_written(cli, tmp_path, case):
    stored = tmp_path / "stored.yaml"
    stored.write_text(GOOD.replace("good-pool", "stored-pool").replace("10.10.0.0/16", "10.0.0.0/16")
                      .replace("good-policy", "stored-policy"))
    assert cli("apply", "-f", str(stored)).code == 0
    before = cli.stored()

    name, spec, line = CASES[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + BAD.format(name=name, spec=spec))
    for verb in ("apply", "create"):
        result = cli(verb, "-f", str(bad))
        assert (result.code, result.out) == (1, "")
        assert result.err == f"{bad}, document 3 {line}\nNo resources were changed.\n"
        assert cli.stored() == before

    # The good documents were refused only for the bad one beside them.
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert cli("apply", "-f", str(good)).code == 0
    assert set(cli.stored()) - set(before) == {
        "/percale/resources/v1/percale.io/ippools/good-pool",
        "/percale/resources/v1/percale.io/networkpolicies/shop/knp.default.good-policy"}


def test_every_bad_kubernetes_policy_of_a_batch_is_reported_at_once(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "".join(BAD.format(name=name, spec=spec)
                                  for name, spec, _ in CASES.values()))
    result = cli("apply", "-f", str(bad))
    assert (result.code, result.out) == (1, "")
    assert result.err == "".join(f"{bad}, document {number} {line}\n"
                                 for number, (_, _, line) in enumerate(CASES.values(), 3)) + \
        "No resources were changed.\n"
    assert cli.stored() == {}
