"""What the compiled table refuses a pod whatever its policy says, as felix's does: VXLAN and
IP-in-IP in its egress chain before any policy, and (in a chain of its own at prerouting) a
source address that does not route back to it. tests/netns/test_policy_pod_guards.py checks the
same against the kernel."""

from __future__ import annotations

import pytest

from percale.api import parse
from percale.dataplane import vxlan
from percale.policy import reference
from percale.policy.compile import (
    IPIP_PROTOCOL,
    VXLAN_PORT,
    PolicyEndpoint,
    compile_ruleset,
    render,
)

pytestmark = pytest.mark.unit

WEB = PolicyEndpoint("shop/web", "shop", "pcl000000000001", ("10.244.0.2", "fd00::2"),
                     {"app": "web"})


def test_the_port_dropped_is_the_one_percales_vxlan_devices_use():
    assert VXLAN_PORT == vxlan.PORT == reference.VXLAN_PORT
    assert IPIP_PROTOCOL == reference.IPIP_PROTOCOL == 4


def test_a_pods_egress_chain_drops_vxlan_and_ip_in_ip_before_its_policies():
    policy = parse({"apiVersion": "percale.io/v1", "kind": "GlobalNetworkPolicy",
                    "metadata": {"name": "allow-everything"},
                    "spec": {"selector": "all()", "types": ["Ingress", "Egress"],
                             "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}})
    ruleset = compile_ruleset([policy], {}, [WEB])
    egress = ruleset.chains["fw-pcl000000000001"]
    vxlan_drop = egress.index(
        'udp dport 4789 counter drop comment "shop/web: VXLAN sent by the pod"')
    ipip_drop = egress.index(
        'meta l4proto 4 counter drop comment "shop/web: IP-in-IP sent by the pod"')
    first_jump = next(i for i, rule in enumerate(egress) if "jump " in rule)
    assert egress.index("ct state invalid drop") < vxlan_drop < ipip_drop < first_jump
    # What reaches the pod is not the pod's own encapsulation: its ingress chain has none.
    assert not any("4789" in rule or "l4proto 4 " in rule
                   for rule in ruleset.chains["tw-pcl000000000001"])


def test_a_pod_whose_source_does_not_route_back_to_it_is_dropped_at_prerouting():
    text = render(compile_ruleset([], {}, [WEB]))
    chain = text.split("chain prerouting {", 1)[1].split("}", 1)[0]
    rules = [line.strip() for line in chain.strip().splitlines()]
    assert rules[0] == "type filter hook prerouting priority raw; policy accept;"
    # Duplicate address detection from :: first, then the check itself, both families.
    assert rules[1].startswith('iifname "pcl*" ip6 saddr :: ip6 daddr ff02::/16')
    assert rules[2].startswith('iifname "pcl*" fib saddr . iif oif missing counter drop')
