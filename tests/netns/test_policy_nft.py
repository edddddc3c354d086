"""The policy table's writer against the real kernel: libnftables in-process and `nft -f` give the
same table, a change rewrites only what changed, and a refused transaction changes nothing."""

from __future__ import annotations

import json

import pytest

from tests.helpers.netns_script import run_in_new_netns

pytestmark = pytest.mark.netns

SCRIPT = r"""
import json, re, subprocess, sys
from percale.api import parse
from percale.policy.compile import PolicyEndpoint, compile_ruleset
from percale.policy.nft import LibNftables, NftError, PolicyTable, run_nft

def listing():
    out = subprocess.run(["nft", "list", "table", "inet", "percale"], capture_output=True, text=True).stdout
    return re.sub(r"counter packets \d+ bytes \d+", "counter", out)

endpoints = [PolicyEndpoint(f"x/p{i}", "x", f"pcl{i:012x}", (f"10.244.0.{i + 1}",), {"app": f"a{i % 2}"},
                            {"kubernetes.io/metadata.name": "x"}) for i in range(4)]
policy = parse({"apiVersion": "percale.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
                "spec": {"selector": "app == 'a0'", "ingress": [{"action": "Allow", "protocol": "TCP",
                         "source": {"selector": "app == 'a1'"}, "destination": {"ports": [80]}}]}})
first, second = compile_ruleset([policy], {}, endpoints), compile_ruleset([], {}, endpoints[:3])
found = {}
for name, runner in (("process", run_nft), ("library", LibNftables())):
    table = PolicyTable(runner)
    table.apply(first)
    whole = listing()
    table.apply(second)
    changed = listing()
    before = listing()
    try:
        runner("add rule inet percale no-such-chain accept\n")
        refused = ""
    except NftError as err:
        refused = str(err)
    found[name] = {"whole": whole, "changed": changed, "refused": refused,
                   "unchanged": listing() == before, "drifted": table.drifted()}
    # The fixed chains count too: a flushed prerouting chain is anti-spoofing gone.
    subprocess.run(["nft", "flush", "chain", "inet", "percale", "prerouting"], check=True)
    found[name]["drifted_without_prerouting"] = table.drifted()
    subprocess.run(["nft", "delete", "table", "inet", "percale"], check=True)
print(json.dumps(found))
"""


def test_library_and_process_write_the_same_table():
    done = run_in_new_netns("pnft", SCRIPT)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    process, library = found["process"], found["library"]
    assert process["whole"] == library["whole"] and "x/p0" in process["whole"]
    assert process["changed"] == library["changed"]
    assert "pcl000000000003" in process["whole"] and "pcl000000000003" not in process["changed"]
    assert "pi-" not in process["changed"]  # the policy's chain went with the policy
    for runner in (process, library):
        assert "no-such-chain" in runner["refused"] and runner["unchanged"] and not runner["drifted"]
        assert runner["drifted_without_prerouting"]
