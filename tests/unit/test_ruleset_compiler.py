"""The compiler that keeps unchanged endpoints' chains (RulesetCompiler) against a compilation
from nothing (compile_ruleset): after any sequence of changes to endpoints, labels, namespace
labels, profiles and policies, both give the same table. An agent programs its node from the
first; a chain kept when it should have been rebuilt would leave a pod under old policy."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from percale.api import parse
from percale.policy.compile import (
    COMMENT_LIMIT, PolicyEndpoint, RulesetCompiler, _Compiler, compile_ruleset, render,
)

pytestmark = pytest.mark.unit

NAMESPACES = ("shop", "bank")


def policy(name: str, namespace: str | None, app: str, order: float | None, peer: str) -> object:
    kind = "NetworkPolicy" if namespace else "GlobalNetworkPolicy"
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    spec = {"selector": f"app == '{app}'",
            "ingress": [{"action": "Allow", "source": {"selector": f"app == '{peer}'"}}],
            "egress": [{"action": "Deny", "protocol": "TCP", "destination": {"ports": [443]}}]}
    if order is not None:
        spec["order"] = order
    return parse({"apiVersion": "percale.io/v1", "kind": kind, "metadata": meta, "spec": spec})


def profile(namespace: str, tier: str, peer: str | None = None) -> object:
    return parse({"apiVersion": "percale.io/v1", "kind": "Profile",
                  "metadata": {"name": f"kns.{namespace}"},
                  "spec": {"labelsToApply": {"tier": tier},
                           "ingress": [{"action": "Allow", "source": {"selector": f"tier == '{peer or tier}'"}}],
                           "egress": [{"action": "Allow"}]}})


# A pool of policies and profiles the worlds draw from: the same object drawn twice in a row is
# "unchanged", another one of the same name is an edit.
POLICIES = [policy(f"p{i}", ns, app, order, peer)
            for i, (ns, app, order, peer) in enumerate([
                ("shop", "web", 10, "api"), ("shop", "web", 20, "web"), (None, "api", None, "web"),
                ("bank", "api", 5, "db"), (None, "db", 1, "api")])]
EDITED = {0: policy("p0", "shop", "api", 10, "db"), 2: policy("p2", None, "web", 3, "db")}
# ("shop", "a2") differs from ("shop", "a") in its rules only: the namespace's endpoints stay
# the same, and only the profile's own chains change.
PROFILES = {("shop", "a"): profile("shop", "a"), ("shop", "a2"): profile("shop", "a", peer="b"),
            ("shop", "b"): profile("shop", "b"), ("bank", "a"): profile("bank", "a")}

pods = st.fixed_dictionaries({
    "namespace": st.sampled_from(NAMESPACES),
    "app": st.sampled_from(["web", "api", "db"]),
    "local": st.booleans(),
})
worlds = st.fixed_dictionaries({
    "pods": st.dictionaries(st.integers(0, 7), pods, max_size=6),
    # Few choices, so that consecutive worlds often have the same policies (endpoint chains are
    # kept only then).
    "policies": st.sampled_from([(0, 1, 2), (0, 3, 4), (2, 4)]),
    "edited": st.sampled_from([frozenset(), frozenset(), frozenset({0}), frozenset({0, 2})]),
    "profiles": st.sets(st.sampled_from(sorted(PROFILES)), max_size=2),
})


class Builder:
    """Turns drawn worlds into compiler inputs, handing out the same PolicyEndpoint object for a
    pod that did not change, as the agent does (one conversion per revision)."""

    def __init__(self) -> None:
        self.endpoints: dict[int, PolicyEndpoint] = {}

    def inputs(self, world: dict):
        profiles = {}
        for namespace, tier in sorted(world["profiles"]):
            profiles.setdefault(namespace, PROFILES[namespace, tier])
        endpoints = {}
        for number, pod in world["pods"].items():
            namespace = pod["namespace"]
            namespace_labels = {"kubernetes.io/metadata.name": namespace,
                                **(profiles[namespace].spec.labels_to_apply if namespace in profiles else {})}
            fresh = PolicyEndpoint(
                key=f"{namespace}/pod{number}", namespace=namespace,
                interface=f"pcl{number:011x}" if pod["local"] else None,
                addresses=(f"10.244.0.{number + 1}",), labels={"app": pod["app"]},
                namespace_labels=namespace_labels)
            before = self.endpoints.get(number)
            endpoints[number] = before if before == fresh else fresh
        self.endpoints = endpoints
        policies = [EDITED[i] if i in world["edited"] and i in EDITED else POLICIES[i]
                    for i in world["policies"]]
        return policies, profiles, list(endpoints.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(worlds, min_size=1, max_size=8))
def test_keeping_chains_gives_the_table_a_fresh_compilation_gives(sequence):
    compiler, builder = RulesetCompiler(), Builder()
    for world in sequence:
        policies, profiles, endpoints = builder.inputs(world)
        kept = compiler.compile(policies, profiles, endpoints)
        fresh = compile_ruleset(policies, profiles, endpoints)
        assert render(kept) == render(fresh)


def test_an_unchanged_endpoint_keeps_its_chains_and_a_relabelled_one_does_not():
    compiler = RulesetCompiler()
    web = PolicyEndpoint(key="shop/web", namespace="shop", interface="pcl000000000001",
                         addresses=("10.244.0.1",), labels={"app": "web"},
                         namespace_labels={"kubernetes.io/metadata.name": "shop"})
    api = PolicyEndpoint(key="shop/api", namespace="shop", interface="pcl000000000002",
                         addresses=("10.244.0.2",), labels={"app": "api"},
                         namespace_labels={"kubernetes.io/metadata.name": "shop"})
    first = compiler.compile([POLICIES[0]], {}, [web, api])
    relabelled = dataclasses.replace(api, labels={"app": "web"})
    second = compiler.compile([POLICIES[0]], {}, [web, relabelled])
    assert second.chains["tw-pcl000000000001"] is first.chains["tw-pcl000000000001"]
    assert second.chains["tw-pcl000000000002"] is not first.chains["tw-pcl000000000002"]
    # p0 selects app == web: the relabelled pod now jumps to its chain, as a fresh compile says.
    assert second.chains["tw-pcl000000000002"] == compile_ruleset(
        [POLICIES[0]], {}, [web, relabelled]).chains["tw-pcl000000000002"]
    assert any(rule.startswith("jump pi-") for rule in second.chains["tw-pcl000000000002"])


def test_a_profile_whose_rules_change_is_compiled_again_though_its_endpoints_did_not():
    compiler = RulesetCompiler()
    web = PolicyEndpoint(key="shop/web", namespace="shop", interface="pcl000000000001",
                         addresses=("10.244.0.1",), labels={"app": "web"},
                         namespace_labels={"kubernetes.io/metadata.name": "shop", "tier": "a"})
    before = compiler.compile([], {"shop": PROFILES["shop", "a"]}, [web])
    after = compiler.compile([], {"shop": PROFILES["shop", "a2"]}, [web])
    assert render(after) == render(compile_ruleset([], {"shop": PROFILES["shop", "a2"]}, [web]))
    assert render(after) != render(before)


def test_a_compilation_that_fails_halfway_leaves_nothing_half_carried_over(monkeypatch):
    compiler = RulesetCompiler()
    endpoints = [PolicyEndpoint(key=f"shop/p{i}", namespace="shop", interface=f"pcl00000000000{i}",
                                addresses=(f"10.244.0.{i + 1}",), labels={"app": "web"})
                 for i in range(3)]
    compiler.compile([], {}, endpoints[:2])
    real = _Compiler.endpoint_chain

    def fails_for_the_third(self, endpoint, *args):
        if endpoint is endpoints[2]:
            raise RuntimeError("a bug met halfway")
        return real(self, endpoint, *args)

    monkeypatch.setattr(_Compiler, "endpoint_chain", fails_for_the_third)
    with pytest.raises(RuntimeError):
        compiler.compile([], {}, [endpoints[2]])  # p0 and p1 forgotten, p2 failed
    monkeypatch.setattr(_Compiler, "endpoint_chain", real)
    for world in ([endpoints[0]], endpoints):
        assert render(compiler.compile([], {}, world)) == render(compile_ruleset([], {}, world))


def test_every_comment_fits_nfts_limit_and_long_names_stay_apart():
    """nft refuses a comment over 128 characters (and the whole table with it). Two policies
    whose long names share their first 200 characters get different comments, and the ruleset
    says which whole name each cut one stands for; an endpoint with a long key fits too."""
    common = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 10])
    first, second = policy(common + "1", None, "web", 1, "api"), policy(common + "2", None, "web", 2, "api")
    web = PolicyEndpoint(key="n" * 63 + "/" + "w" * 200, namespace="shop", interface="pcl000000000001",
                         addresses=("10.244.0.1",), labels={"app": "web"})
    ruleset = compile_ruleset([first, second], {}, [web])
    comments = re.findall(r'comment "([^"]*)"', render(ruleset))
    assert comments and max(map(len, comments)) <= COMMENT_LIMIT
    cut = {c.split(" ")[0] for c in comments if c.startswith("GlobalNetworkPolicy/")}
    assert len(cut) == 2  # one per policy, the same in its ingress and egress rules
    assert sorted(ruleset.shortened[c] for c in cut) == [
        f"GlobalNetworkPolicy/{common}1", f"GlobalNetworkPolicy/{common}2"]
    assert any(c.endswith(": no policy allowed it") for c in comments)


def test_a_rule_whose_not_nets_are_all_of_the_other_family_is_left_out_of_this_one():
    """As felix renders it: `notNets: [fd00::/8]` and nothing else makes an IPv6 rule only; it
    rendered an IPv4 rule that allowed everything."""
    allow = parse({"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "p"},
                   "spec": {"selector": "all()", "ingress": [{"action": "Allow", "source": {"notNets": ["fd00::/8"]}}]}})
    web = PolicyEndpoint(key="shop/web", namespace="shop", interface="pcl000000000001",
                         addresses=("10.244.0.1",), labels={"app": "web"})
    rules = [r for r in render(compile_ruleset([allow], {}, [web])).splitlines() if "GlobalNetworkPolicy/p ingress 0" in r]
    assert len(rules) == 1 and "nfproto ipv6" in rules[0] and "!= { fd00::/8 }" in rules[0], rules
