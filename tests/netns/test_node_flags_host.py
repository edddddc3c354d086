"""percale-node's flags checked against the host it runs on, in a node namespace of its own with
a real etcd: what the node's interfaces cannot carry is capped or warned about, in the agent's
log, naming the flag.

  * --mtu above the MTU of the interface holding the node's address: capped to that interface's
    MTU. It used to be taken as given: pods got 8950 on a 1500 link, and once the VXLAN device
    existed every restart failed to set its MTU (EINVAL) and retried for ever.
  * --ip naming an address no interface has: a warning, as calico-node gives, not a refusal (the
    lab adds a node's fabric address only after its agent started).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers.cni_node import CNINode, netconf
from tests.netns.conftest import reset_store

pytestmark = pytest.mark.netns

POD = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=big;K8S_POD_INFRA_CONTAINER_ID=x"


def link_mtu(netns: str, link: str) -> int | None:
    shown = subprocess.run(["ip", "-n", netns, "-o", "link", "show", link], capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    words = shown.stdout.split()
    return int(words[words.index("mtu") + 1])


def test_an_mtu_above_the_node_interface_is_capped_naming_the_flag(etcd):
    reset_store(etcd.endpoint, {"tunnelled": {"cidr": "10.244.0.0/16", "vxlanMode": "Always"}})
    node = CNINode(etcd.unix_endpoint)
    node.agent_args = ["--ip", "192.0.2.10/24", "--mtu-file", str(node.workdir / "mtu")]
    try:
        node.start(mtu=9000)  # eth0, which holds 192.0.2.10, has 1500
        log = (node.workdir / "agent.log").read_text()
        assert ("--mtu (PERCALE_MTU): host MTU 9000 is above the MTU 1500 of eth0, which holds this"
                " node's address: using 1500") in log, log
        assert "Traceback" not in log

        pod = node.new_pod_netns()
        added = node.plugin("percale", "ADD", netconf(node), container_id="c-big", netns=pod, args=POD)
        assert added.code == 0, added.out + added.err
        assert link_mtu(pod, "eth0") == 1450  # 1500 less VXLAN's 50, not 8950

        # Once the device exists, a restart keeps it: no EINVAL from setting 8950 on it.
        deadline = time.monotonic() + 20
        while link_mtu(node.name, "vxlan.percale") is None:
            assert time.monotonic() < deadline, (node.workdir / "agent.log").read_text()
            time.sleep(0.1)
        node.restart_agent()
        time.sleep(2)  # the VXLAN agent programs its device as soon as its view is synced
        log = (node.workdir / "agent.log").read_text()
        assert link_mtu(node.name, "vxlan.percale") == 1450
        assert (node.workdir / "mtu").read_text().strip() == "1450"
        assert "Invalid argument" not in log, log
    finally:
        node.stop()


def test_an_address_on_no_interface_is_warned_about_naming_the_flag(etcd):
    reset_store(etcd.endpoint, {})
    node = CNINode(etcd.unix_endpoint, agent_args=["--ip", "192.0.2.99/24"])  # eth0 has .10
    try:
        node.start()
        log = (node.workdir / "agent.log").read_text()
        assert ("WARNING percale.node: --ip 192.0.2.99/24: no interface of this host has 192.0.2.99"
                " (yet): peers and VXLAN tunnels cannot reach this node there until one has") in log, log
    finally:
        node.stop()
