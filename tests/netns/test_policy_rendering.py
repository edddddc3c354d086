"""Rules whose nft rendering carries Calico's meaning, checked by the real nft (in a network
namespace of its own, `nft -c`: parsed and checked by the kernel's rules, programmed nowhere)."""

from __future__ import annotations

import subprocess

import pytest

from percale.api import parse
from percale.policy.compile import PolicyEndpoint, compile_ruleset, render

pytestmark = pytest.mark.netns

WEB = PolicyEndpoint("shop/web", "shop", "pcl000000000001", ("10.244.0.2",), {"app": "web"})
OTHER = PolicyEndpoint("bank/api", "bank", None, ("10.244.1.2",), {"app": "api"})


def table(*rules: dict, namespace: str = "shop") -> str:
    policy = parse({"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "p", "namespace": namespace},
                    "spec": {"selector": "app == 'web'", "ingress": list(rules)}})
    text = render(compile_ruleset([policy], {}, [WEB, OTHER]))
    checked = subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], input=text, text=True,
                             capture_output=True)
    assert checked.returncode == 0, checked.stderr
    return text


def test_not_icmp_with_a_code_is_not_that_type_with_that_code():
    """As iptables' ! --icmp-type 8/0: two separate != (type is not 8, code is not 0) let neither
    type 8 with another code nor any code-0 message through the rule."""
    text = table({"action": "Deny", "protocol": "ICMP", "notICMP": {"type": 8, "code": 0}})
    assert "icmp type . icmp code != { 8 . 0 }" in text
    assert "icmp code != 0" not in text
    assert "icmp type != 3" in table({"action": "Deny", "protocol": "ICMP", "notICMP": {"type": 3}})


def test_a_not_selector_alone_keeps_to_the_policys_namespace():
    """Calico scopes any selector of a namespaced policy's rule to its namespace, a notSelector
    alone included: bank/api (no app=db either) and hosts stay out of the Allow."""
    text = table({"action": "Allow", "source": {"notSelector": "app == 'db'"}})
    rule = next(line for line in text.splitlines() if "ip saddr != @" in line)
    assert "ip saddr @" in rule, rule  # the namespace's endpoints, then not the notSelector's
    namespace_set = rule.split("ip saddr @", 1)[1].split()[0]
    members = text.split(f"set {namespace_set} {{", 1)[1].split("}", 1)[0]
    assert "10.244.0.2" in members and "10.244.1.2" not in members
