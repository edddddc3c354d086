"""etcd stopped for 30 s under mesh3, and started again: pod traffic never stops (BGP and the
kernel's routes do not depend on the datastore); a pod ADD during the outage fails cleanly (CNI
code 11, nothing left behind); the first ADD after etcd is healthy succeeds and its pod is
reached from every node; every agent's view is following the datastore again at once (a change
made after the outage reaches all three within seconds); percalectl works at once.

The time from "etcd healthy" to the first ADD answered is printed (bench/README.md keeps it)."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from percale.dataplane.pod_network import host_veth_name
from percale.lab import pods
from percale.lab.pods import PluginFailed
from tests.helpers.lab_e2e import every_pod_reaches_every_pod, running, wait_for

pytestmark = pytest.mark.lab

OUTAGE_SECONDS = 30
NODES = ("node1", "node2", "node3")


def etcd_healthy(lab) -> bool:
    try:
        done = lab.exec("etcd", ["etcdctl", "--endpoints", "http://127.0.0.1:2379", "--dial-timeout",
                                 "1s", "--command-timeout", "1s", "endpoint", "health"],
                        capture=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def view_events(lab, node: str) -> float:
    script = ("import urllib.request;"
              "print(urllib.request.urlopen('http://127.0.0.1:9099/metrics', timeout=5).read().decode())")
    out = lab.exec(node, ["python3", "-c", script], capture=True).stdout
    found = re.search(r"^percale_datastore_view_events_total (\S+)$", out, re.M)
    return float(found.group(1)) if found else -1.0


def test_an_etcd_outage_stops_no_traffic_and_percale_works_again_at_once():
    with running("mesh3") as lab:
        a = pods.add(lab, "node1", "out-a")
        b = pods.add(lab, "node2", "out-b")
        pods.add(lab, "node3", "out-c")
        assert every_pod_reaches_every_pod(lab) == []
        pingers = [subprocess.Popen(["ip", "netns", "exec", source.namespace, "ping", "-n", "-q",
                                     "-i", "0.2", "-W", "1", target.addresses[0]],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for source, target in ((a, b), (b, a))]
        try:
            lab.stop("etcd")
            stopped = time.monotonic()
            assert not etcd_healthy(lab)

            # During the outage: try again later, and nothing left behind.
            with pytest.raises(PluginFailed) as refused:
                pods.add(lab, "node2", "during")
            assert refused.value.code == 11, refused.value
            links = lab.exec("node2", ["ip", "-o", "link"], capture=True).stdout
            assert host_veth_name("default", "during") not in links
            assert "during" not in {p.name for p in pods.pods(lab)}

            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
            lab.start("etcd")
            assert wait_for(lambda: etcd_healthy(lab), 30, interval=0.05)
            healthy = time.monotonic()

            # The first ADD after etcd is back succeeds.
            after = pods.add(lab, "node3", "after")
            answered = time.monotonic() - healthy
            print(f"\netcd healthy -> first pod ADD answered: {answered:.2f} s")
            assert answered < 5, answered
            ctl = lab.exec("node1", ["percalectl", "get", "nodes"], capture=True)
            assert ctl.returncode == 0, ctl.stderr

            # Every agent's view follows the datastore again: a change made now reaches each.
            before = {node: view_events(lab, node) for node in NODES}
            applied = lab.exec("node1", ["percalectl", "apply", "-f", "-"], capture=True, input=(
                "apiVersion: percale.io/v1\nkind: IPPool\nmetadata: {name: after-outage}\n"
                "spec: {cidr: 10.250.0.0/16, disabled: true}\n"))
            assert applied.returncode == 0, applied.stderr
            for node in NODES:
                assert wait_for(lambda node=node: view_events(lab, node) > before[node], 5), node
            assert every_pod_reaches_every_pod(lab) == []
            assert after.addresses
        finally:
            outs = []
            for pinger in pingers:
                pinger.send_signal(signal.SIGINT)
                outs.append(pinger.communicate(timeout=10)[0])
        for out in outs:
            sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
            assert sent > OUTAGE_SECONDS * 4 and received == sent, out
        check = lab.exec("node1", ["percalectl", "ipam", "check"], capture=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "Found 0 IPs that are allocated in IPAM but not actually in use." in check.stdout
