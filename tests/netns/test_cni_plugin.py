"""The percale CNI plugins called exactly as a container runtime calls them, in real network
namespaces, with percale-node serving them and a real etcd behind it. Every test runs with each
shim installed, the compiled one and the Python one: both must serve a runtime alike."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from percale.dataplane import pod_network

from percale.datastore import Key
from percale.api.workloadendpoint import workload_endpoint_name
from percale.ipam.allocator import IPAM
from percale.ipam.check import check as ipam_check
from tests.helpers.cni_node import CNINode, PluginResult, netconf
from tests.helpers.shims import compiled_shim
from tests.netns.conftest import POOL, reset_store
from tests.helpers.store import with_store
from tests.helpers.ipam_world import add_pool
from tests.helpers.processes import cmdline, descendants

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module", params=["compiled", "python"])
def node(request, etcd_server):
    """conftest's node, with the shim chosen here."""
    reset_store(etcd_server.endpoint, {"pods": {"cidr": POOL}})
    compiled_shim()
    cni = CNINode(etcd_server.unix_endpoint, shim=request.param).start()
    magic = (cni.bin_dir / "percale").read_bytes()[:4]
    assert magic == (b"\x7fELF" if request.param == "compiled" else b"#!/u"), magic
    yield cni
    cni.stop()


def k8s(namespace: str, pod: str) -> str:
    return f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=x"


def in_pod(netns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *args], capture_output=True, text=True)


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pod_ip(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def handle_names(etcd_server) -> list[str]:
    held = with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle"))
    return [kv.key.name for kv in held.items]


def test_add_check_del(node, etcd_server):
    netns = node.new_pod_netns()
    conf = netconf(node)
    added = node.plugin("percale", "ADD", conf, container_id="c-basic", netns=netns, args=k8s("shop", "web-1"))
    assert added.code == 0, added.out + added.err
    result = added.json
    address = ipaddress.ip_interface(result["ips"][0]["address"])
    assert address.network.prefixlen == 32 and address.ip in ipaddress.ip_network("10.244.0.0/16")
    assert result["ips"][0]["interface"] == 1
    assert result["interfaces"][1] == {"name": "eth0", "mac": result["interfaces"][1]["mac"],
                                       "sandbox": f"/var/run/netns/{netns}"}
    assert result["interfaces"][0]["mac"] == "ee:ee:ee:ee:ee:ee"

    # The pod's side, as Calico wires it.
    routes = in_pod(netns, "ip", "route").stdout.splitlines()
    assert any(r.startswith("default via 169.254.1.1 dev eth0") for r in routes), routes
    assert any(r.startswith("169.254.1.1 dev eth0") and "scope link" in r for r in routes), routes
    assert f"inet {address.ip}/32" in in_pod(netns, "ip", "-o", "addr", "show", "eth0").stdout
    # The host's side: a /32 route to the pod through its veth, tagged with percale's protocol.
    host_veth = result["interfaces"][0]["name"]
    assert f"{address.ip} dev {host_veth} proto 201 scope link" in node.exec("ip", "route").stdout
    assert node.exec("cat", f"/proc/sys/net/ipv4/conf/{host_veth}/proxy_arp").stdout.strip() == "1"
    # So the host may DNAT the pod's packets to its loopback (calico.md §4.2).
    localnet = f"/proc/sys/net/ipv4/conf/{host_veth}/route_localnet"
    assert node.exec("cat", localnet).stdout.strip() == "1"
    # The host reaches the pod (proxy ARP answers the pod's gateway lookups).
    assert node.exec("ping", "-c1", "-W2", str(address.ip), check=False).returncode == 0

    wep_name = workload_endpoint_name(node.name, "k8s", "web-1", "eth0")
    wep = with_store(etcd_server.endpoint,
                     lambda s: s.get(Key("WorkloadEndpoint", wep_name, "shop"))).value
    assert wep.spec.container_id == "c-basic" and wep.spec.ip_networks == [str(address)]
    assert wep.spec.interface_name == host_veth

    checked = node.plugin("percale", "CHECK", {**conf, "prevResult": result},
                          container_id="c-basic", netns=netns, args=k8s("shop", "web-1"))
    assert checked.code == 0, checked.out

    # CHECK really checks: remove the pod's default route and it fails, naming what is wrong.
    in_pod(netns, "ip", "route", "del", "default")
    broken = node.plugin("percale", "CHECK", {**conf, "prevResult": result},
                         container_id="c-basic", netns=netns, args=k8s("shop", "web-1"))
    assert broken.code == 1 and broken.json["code"] == 101
    assert "default route" in broken.json["msg"]

    for _ in range(2):  # DEL is idempotent
        deleted = node.plugin("percale", "DEL", {**conf, "prevResult": result},
                              container_id="c-basic", netns=netns, args=k8s("shop", "web-1"))
        assert deleted.code == 0, deleted.out
    # At once: no route to the pod any more. Shortly after: no veth either (deleting a veth
    # pair takes the kernel a while, so DEL does not wait for it).
    assert str(address.ip) not in node.exec("ip", "route").stdout
    assert wait_until(lambda: host_veth not in node.exec("ip", "link").stdout)
    held = with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle"))
    assert "k8s-pod-network.c-basic" not in [kv.key.name for kv in held.items]
    weps = with_store(etcd_server.endpoint, lambda s: s.list("WorkloadEndpoint", "shop"))
    assert wep_name not in [kv.key.name for kv in weps.items]


def test_del_after_the_netns_is_gone_releases_everything(node, etcd_server):
    netns = node.new_pod_netns()
    added = node.plugin("percale", "ADD", netconf(node), container_id="c-gone", netns=netns, args=k8s("default", "gone"))
    assert added.code == 0
    subprocess.run(["ip", "netns", "del", netns], check=True)
    deleted = node.plugin("percale", "DEL", netconf(node), container_id="c-gone", netns=netns, args=k8s("default", "gone"))
    assert deleted.code == 0, deleted.out
    handles = with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle"))
    assert "k8s-pod-network.c-gone" not in [kv.key.name for kv in handles.items]
    # The kernel tears the pair down as it destroys the namespace, and DEL does not wait for a
    # veth's deletion: the host end goes shortly after.
    host_veth = added.json["interfaces"][0]["name"]
    assert wait_until(lambda: host_veth not in node.exec("ip", "link").stdout)


def test_del_when_the_netns_file_outlives_its_namespace_releases_everything(node, etcd_server):
    """The runtime unmounted the pod's netns (the namespace is gone with its veth pair) and
    left the empty file the bind mount was on: DEL answered 4 "is not a namespace" and freed
    nothing, so the pod stuck in Terminating and its address leaked. A CNI_NETNS that cannot
    name a file at all (over NAME_MAX) was a 999."""
    netns = node.new_pod_netns()
    added = node.plugin("percale", "ADD", netconf(node), container_id="c-unmounted", netns=netns,
                        args=k8s("default", "unmounted"))
    assert added.code == 0, added.out
    subprocess.run(["umount", f"/var/run/netns/{netns}"], check=True)
    assert os.stat(f"/var/run/netns/{netns}").st_size == 0
    unmounted = node.plugin("percale", "DEL", netconf(node), container_id="c-unmounted",
                            netns=netns, args=k8s("default", "unmounted"))
    assert unmounted.code == 0, unmounted.out

    gone = node.new_pod_netns()
    added_too = node.plugin("percale", "ADD", netconf(node), container_id="c-too-long", netns=gone,
                            args=k8s("default", "too-long"))
    assert added_too.code == 0, added_too.out
    subprocess.run(["ip", "netns", "del", gone], check=True)
    too_long = node.plugin("percale", "DEL", netconf(node), container_id="c-too-long",
                           args=k8s("default", "too-long"),
                           env={"CNI_NETNS": "/var/run/netns/" + "x" * 300})
    assert too_long.code == 0, too_long.out

    handles = handle_names(etcd_server)
    assert "k8s-pod-network.c-unmounted" not in handles
    assert "k8s-pod-network.c-too-long" not in handles
    endpoints = [kv.value.spec.container_id for kv in
                 with_store(etcd_server.endpoint, lambda s: s.list("WorkloadEndpoint")).items]
    assert "c-unmounted" not in endpoints and "c-too-long" not in endpoints
    for result in (added, added_too):
        host_veth = result.json["interfaces"][0]["name"]
        assert wait_until(lambda: host_veth not in node.exec("ip", "link").stdout)


def test_an_add_right_after_a_del_into_the_same_netns_is_wired_and_stays(node, etcd_server):
    """DEL answers before the pod's veth pair is deleted (the kernel takes a while). A runtime
    that ADDs into the same netns at once was refused (102, "already has an interface named
    eth0"), or, when the deletion came later still, answered 0 and then lost its new eth0 to
    the earlier DEL's deletion. Other pods' DELs queue deletions ahead of it here."""
    others = []
    for i in range(20):
        netns = node.new_pod_netns()
        added = node.plugin("percale", "ADD", netconf(node), container_id=f"c-busy-{i}",
                            netns=netns, args=k8s("default", f"busy-{i}"))
        assert added.code == 0, added.out
        others.append((i, netns))
    netns, conf, args = node.new_pod_netns(), netconf(node), k8s("default", "again")
    added = node.plugin("percale", "ADD", conf, container_id="c-again", netns=netns, args=args)
    assert added.code == 0, added.out

    def delete_other(other: tuple[int, str]) -> PluginResult:
        i, at = other
        return node.plugin("percale", "DEL", conf, container_id=f"c-busy-{i}", netns=at,
                           args=k8s("default", f"busy-{i}"))

    with ThreadPoolExecutor(len(others)) as pool:
        deleting = pool.map(delete_other, others)
        for _ in range(5):
            deleted = node.plugin("percale", "DEL", conf, container_id="c-again", netns=netns,
                                  args=args)
            assert deleted.code == 0, deleted.out
            added = node.plugin("percale", "ADD", conf, container_id="c-again", netns=netns,
                                args=args)
            assert added.code == 0, added.out
        assert all(d.code == 0 for d in deleting)
    time.sleep(0.5)  # whatever an earlier DEL left to do is done by now
    assert "eth0" in in_pod(netns, "ip", "-o", "link").stdout
    checked = node.plugin("percale", "CHECK", {**conf, "prevResult": added.json},
                          container_id="c-again", netns=netns, args=args)
    assert checked.code == 0, checked.out
    assert node.exec("ping", "-c1", "-W2", pod_ip(added.json), check=False).returncode == 0
    assert node.plugin("percale", "DEL", conf, container_id="c-again", netns=netns,
                       args=args).code == 0


def test_a_failing_add_retried_under_an_ip_cooldown_holds_no_address(node, etcd_server):
    """A failed ADD gives back the addresses it took at once: no pod ever had them. With
    ipCooldownSeconds set, each retry of a failing ADD held one more address for the cooldown."""
    netns = node.new_pod_netns()
    # An eth0 the runtime did not expect: every ADD is refused (102) after IPAM picked an address.
    in_pod(netns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0")

    async def cooling(store) -> int:
        return sum(attribute.released_at is not None
                   for kv in (await store.list("IPAMBlock")).items
                   for attribute in kv.value.spec.attributes)

    before = with_store(etcd_server.endpoint, cooling)
    node.wait_for_view(lambda: with_store(etcd_server.endpoint,
                                          lambda s: IPAM(s).set_config(ip_cooldown_seconds=600)))
    try:
        for _ in range(3):
            refused = node.plugin("percale", "ADD", netconf(node), container_id="c-cool",
                                  netns=netns, args=k8s("default", "cool"))
            assert refused.code == 1 and refused.json["code"] == 102, refused.out
        assert with_store(etcd_server.endpoint, cooling) == before
        assert "k8s-pod-network.c-cool" not in handle_names(etcd_server)
    finally:
        node.wait_for_view(lambda: with_store(etcd_server.endpoint,
                                              lambda s: IPAM(s).set_config(ip_cooldown_seconds=0)))


def test_check_finds_a_host_veth_by_the_name_its_add_gave_it(node, etcd_server):
    """A pod's interface other than eth0 wired by an older percale has a host veth hashed from
    "<ns>.<pod>.<ifname>"; CHECK looks for the name its endpoint records, not the name an ADD
    would give it now, and passes."""
    import hashlib
    netns, conf, args = node.new_pod_netns(), netconf(node), k8s("shop", "older-1")
    added = node.plugin("percale", "ADD", conf, container_id="c-older", netns=netns,
                        ifname="net1", args=args)
    assert added.code == 0, added.out + added.err
    now = added.json["interfaces"][0]["name"]
    older = "pcl" + hashlib.sha1(b"shop.older-1.net1").hexdigest()[:12]
    node.exec("ip", "link", "set", now, "name", older)
    key = Key("WorkloadEndpoint", workload_endpoint_name(node.name, "k8s", "older-1", "net1"),
              "shop")

    async def rename(store):
        current = await store.get(key)
        spec = current.value.spec.model_copy(update={"interface_name": older})
        await store.update(current.value.model_copy(update={"spec": spec}),
                           revision=current.revision)
    node.wait_for_view(lambda: with_store(etcd_server.endpoint, rename))
    checked = node.plugin("percale", "CHECK", {**conf, "prevResult": added.json},
                          container_id="c-older", netns=netns, ifname="net1", args=args)
    assert checked.code == 0, checked.out
    deleted = node.plugin("percale", "DEL", conf, container_id="c-older", netns=netns,
                          ifname="net1", args=args)
    assert deleted.code == 0, deleted.out


def stored_endpoint(node, etcd_server, pod: str):
    key = Key("WorkloadEndpoint", workload_endpoint_name(node.name, "k8s", pod, "eth0"), "default")
    return with_store(etcd_server.endpoint, lambda s: s.get(key))


def forget_endpoint(node, etcd_server, pod: str) -> None:
    """Delete the pod's endpoint from the datastore, and wait until the agent's view has seen
    it go: what an ADD killed before it stored the endpoint leaves."""
    key = Key("WorkloadEndpoint", workload_endpoint_name(node.name, "k8s", pod, "eth0"), "default")
    node.wait_for_view(lambda: with_store(etcd_server.endpoint, lambda s: s.delete(key)))


def held_by(etcd_server, container: str) -> list[str]:
    return with_store(etcd_server.endpoint,
                      lambda s: IPAM(s).ips_by_handle(f"k8s-pod-network.{container}"))


def test_the_same_add_again_is_answered_as_the_first_and_takes_nothing(node, etcd_server):
    """A runtime sends an ADD again when it got no answer: the agent died after finishing it,
    and the shim said 11, "try again later" (cni-plugin/PROTOCOL.md). It was refused (102,
    "already has eth0 ... DEL it before adding it again") until a DEL; Calico's ADD succeeds
    again. It is answered with the first ADD's result, nothing is taken and the pod is as it
    was; a host route lost meanwhile is put back."""
    netns, args = node.new_pod_netns(), k8s("default", "twice")
    first = node.plugin("percale", "ADD", netconf(node), container_id="c-twice", netns=netns,
                        args=args)
    assert first.code == 0, first.out
    address, host_veth = pod_ip(first.json), first.json["interfaces"][0]["name"]
    written = stored_endpoint(node, etcd_server, "twice")
    node.exec("ip", "route", "del", address, "dev", host_veth, "proto", "201")
    for _ in range(2):
        again = node.plugin("percale", "ADD", netconf(node), container_id="c-twice",
                            netns=netns, args=args)
        assert again.code == 0, again.out
        assert again.json == first.json
    assert held_by(etcd_server, "c-twice") == [address]
    assert stored_endpoint(node, etcd_server, "twice").revision == written.revision
    assert f"{address} dev {host_veth} proto 201" in node.exec("ip", "route").stdout
    assert node.exec("ping", "-c1", "-W2", address, check=False).returncode == 0
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-twice", netns=netns,
                       args=args).code == 0


def test_an_add_killed_before_it_stored_its_endpoint_is_done_afresh_when_sent_again(
        node, etcd_server):
    """The agent died after it made the pod's veth pair (here: wired it too) but before it
    stored the endpoint: the runtime's retry was refused (102, "the container already has an
    interface named eth0") until a DEL. That interface is the peer of the pod's own host veth:
    it goes, with the address the killed ADD took, and the ADD is done afresh."""
    netns, args = node.new_pod_netns(), k8s("default", "killed-early")
    first = node.plugin("percale", "ADD", netconf(node), container_id="c-killed-early",
                        netns=netns, args=args)
    assert first.code == 0, first.out
    forget_endpoint(node, etcd_server, "killed-early")
    again = node.plugin("percale", "ADD", netconf(node), container_id="c-killed-early",
                        netns=netns, args=args)
    assert again.code == 0, again.out
    address = pod_ip(again.json)
    assert held_by(etcd_server, "c-killed-early") == [address]
    assert f"inet {address}/32" in in_pod(netns, "ip", "-o", "addr", "show", "eth0").stdout
    assert node.exec("ping", "-c1", "-W2", address, check=False).returncode == 0
    wep = stored_endpoint(node, etcd_server, "killed-early").value
    assert wep.spec.container_id == "c-killed-early" and wep.spec.ip_networks == [f"{address}/32"]
    report = with_store(etcd_server.endpoint, ipam_check)
    assert "k8s-pod-network.c-killed-early" not in [
        h.id for h in report.leaked_handles + report.overstated_handles]
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-killed-early",
                       netns=netns, args=args).code == 0


def test_an_add_killed_after_it_stored_its_endpoint_but_before_it_wired_the_pod_is_done_afresh(
        node, etcd_server):
    """The pod is configured while the endpoint is stored: the agent may die with the one done
    and not the other. Sent again, the ADD finds its pod interface not wired as the endpoint
    says (here: no default route), clears it and wires the pod afresh."""
    netns, args = node.new_pod_netns(), k8s("default", "killed-late")
    first = node.plugin("percale", "ADD", netconf(node), container_id="c-killed-late",
                        netns=netns, args=args)
    assert first.code == 0, first.out
    in_pod(netns, "ip", "route", "del", "default")
    again = node.plugin("percale", "ADD", netconf(node), container_id="c-killed-late",
                        netns=netns, args=args)
    assert again.code == 0, again.out
    address = pod_ip(again.json)
    assert held_by(etcd_server, "c-killed-late") == [address]
    assert "default via 169.254.1.1 dev eth0" in in_pod(netns, "ip", "route").stdout
    assert node.exec("ping", "-c1", "-W2", address, check=False).returncode == 0
    assert stored_endpoint(node, etcd_server, "killed-late").value.spec.ip_networks == \
        [f"{address}/32"]
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-killed-late",
                       netns=netns, args=args).code == 0


def test_an_add_cut_short_by_the_agents_death_succeeds_when_sent_again(node, etcd_server):
    """The agent is killed (SIGKILL) at moments spread over an ADD, started again, and the
    runtime sends the same ADD again, as the shim's 11 tells it to: whatever the first left,
    the retry wires the pod, and a DEL then leaves nothing of it."""
    conf = json.dumps(netconf(node))
    answered = []
    for i, delay in enumerate((0.0, 0.004, 0.008, 0.012, 0.016, 0.024, 0.032, 0.05)):
        netns, pod = node.new_pod_netns(), f"cut-{i}"
        environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c-{pod}",
                   "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_IFNAME": "eth0",
                   "CNI_ARGS": k8s("default", pod), "CNI_PATH": str(node.bin_dir),
                   "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        adding = subprocess.Popen(["ip", "netns", "exec", node.name, str(node.bin_dir / "percale")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environ,
                                  text=True)
        adding.stdin.write(conf)
        adding.stdin.close()
        time.sleep(delay)
        node.agent.kill()
        node.agent.wait()
        out = adding.stdout.read()
        adding.wait()
        answered.append(json.loads(out).get("code", 0) if out.strip() else None)
        node.start_agent()
        again = node.plugin("percale", "ADD", netconf(node), container_id=f"c-{pod}",
                            netns=netns, args=k8s("default", pod))
        assert again.code == 0, (delay, again.out)
        assert node.exec("ping", "-c1", "-W2", pod_ip(again.json), check=False).returncode == 0
        assert node.plugin("percale", "DEL", netconf(node), container_id=f"c-{pod}",
                           netns=netns, args=k8s("default", pod)).code == 0
        assert held_by(etcd_server, f"c-{pod}") == []
    assert 11 in answered, answered  # some kills did land in the middle of an ADD


def test_a_second_add_of_the_container_into_another_netns_is_refused_and_leaks_nothing(node, etcd_server):
    """A container ID names one sandbox with one netns: while its first ADD stands, a second ADD
    for the same container and interface is refused (102) wherever it points, before anything
    is taken. Into another netns it used to succeed: the pod's host veth was replaced (the
    first netns lost its eth0) and the handle held a second address the endpoint did not
    list, which ipam check reported leaked."""
    first_netns, second_netns = node.new_pod_netns(), node.new_pod_netns()
    first = node.plugin("percale", "ADD", netconf(node), container_id="c-moved", netns=first_netns,
                        args=k8s("default", "moved"))
    assert first.code == 0, first.out
    address, host_veth = pod_ip(first.json), first.json["interfaces"][0]["name"]

    second = node.plugin("percale", "ADD", netconf(node), container_id="c-moved", netns=second_netns,
                         args=k8s("default", "moved"))
    assert second.code == 1 and second.json["code"] == 102, second.out
    message = second.json["msg"]
    assert all(w in message for w in ("c-moved", "eth0", "default/moved", address, host_veth)), message

    # The first pod is as its ADD left it; the second netns got nothing.
    assert in_pod(second_netns, "ip", "-o", "link").stdout.count("\n") == 1  # lo only
    assert f"inet {address}/32" in in_pod(first_netns, "ip", "-o", "addr", "show", "eth0").stdout
    assert node.exec("ping", "-c1", "-W2", address, check=False).returncode == 0
    held = with_store(etcd_server.endpoint, lambda s: IPAM(s).ips_by_handle("k8s-pod-network.c-moved"))
    assert held == [address]
    wep_name = workload_endpoint_name(node.name, "k8s", "moved", "eth0")
    wep = with_store(etcd_server.endpoint, lambda s: s.get(Key("WorkloadEndpoint", wep_name, "default"))).value
    assert (wep.spec.container_id, wep.spec.ip_networks, wep.spec.interface_name) == \
        ("c-moved", [f"{address}/32"], host_veth)
    report = with_store(etcd_server.endpoint, ipam_check)
    assert address not in report.leaked_ips
    assert "k8s-pod-network.c-moved" not in [h.id for h in report.leaked_handles + report.overstated_handles]

    # After a DEL the container may be added again, wherever the runtime wants it.
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-moved", netns=first_netns,
                       args=k8s("default", "moved")).code == 0
    assert wait_until(lambda: host_veth not in node.exec("ip", "link").stdout)
    again = node.plugin("percale", "ADD", netconf(node), container_id="c-moved", netns=second_netns,
                        args=k8s("default", "moved"))
    assert again.code == 0, again.out
    assert node.exec("ping", "-c1", "-W2", pod_ip(again.json), check=False).returncode == 0
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-moved", netns=second_netns,
                       args=k8s("default", "moved")).code == 0


def test_an_attachment_that_did_not_survive_is_added_afresh(node, etcd_server):
    """A runtime that keeps container IDs across a reboot (Podman, nerdctl) ADDs a container
    whose DEL never came: its endpoint is stored, its host veth is gone. The ADD goes on, the
    old address is freed, and nothing is left leaked."""
    first = node.plugin("percale", "ADD", netconf(node), container_id="c-reboot",
                        netns=node.new_pod_netns(),
                        args=k8s("default", "reboot"))
    assert first.code == 0, first.out
    old_address, host_veth = pod_ip(first.json), first.json["interfaces"][0]["name"]
    node.exec("ip", "link", "del", host_veth)  # the reboot: the veth pair is gone, the record stays

    new_netns = node.new_pod_netns()
    again = node.plugin("percale", "ADD", netconf(node), container_id="c-reboot",
                        netns=new_netns, args=k8s("default", "reboot"))
    assert again.code == 0, again.out
    address = pod_ip(again.json)
    assert node.exec("ping", "-c1", "-W2", address, check=False).returncode == 0
    held = with_store(etcd_server.endpoint, lambda s: IPAM(s).ips_by_handle("k8s-pod-network.c-reboot"))
    assert held == [address]
    report = with_store(etcd_server.endpoint, ipam_check)
    assert old_address not in report.leaked_ips and address not in report.leaked_ips
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-reboot",
                       netns=new_netns, args=k8s("default", "reboot")).code == 0
    assert wait_until(lambda: host_veth not in node.exec("ip", "link").stdout)


def test_pods_on_one_node_reach_each_other(node):
    pods = []
    for i in range(2):
        netns = node.new_pod_netns()
        added = node.plugin("percale", "ADD", netconf(node), container_id=f"c-ping-{i}", netns=netns,
                            args=k8s("default", f"ping-{i}"))
        assert added.code == 0, added.out
        pods.append((netns, pod_ip(added.json)))
    (a, ip_a), (b, ip_b) = pods
    assert in_pod(a, "ping", "-c2", "-W2", ip_b).returncode == 0
    assert in_pod(b, "ping", "-c2", "-W2", ip_a).returncode == 0


def test_fifty_concurrent_adds(node):
    netnses = [node.new_pod_netns() for _ in range(50)]

    def add(i: int):
        return node.plugin("percale", "ADD", netconf(node), container_id=f"c-many-{i}",
                           netns=netnses[i], args=k8s("load", f"many-{i}"))

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(add, range(50)))
    assert all(r.code == 0 for r in results), [r.out for r in results if r.code][:3]
    addresses = [pod_ip(r.json) for r in results]
    assert len(set(addresses)) == 50
    unreachable = [ip for ip in addresses
                   if node.exec("ping", "-c1", "-W2", ip, check=False).returncode != 0]
    assert unreachable == []


def test_chained_with_portmap(node):
    """percale's result feeds the next plugin in the list, as a runtime chains a conflist."""
    netns = node.new_pod_netns()
    added = node.plugin("percale", "ADD", netconf(node), container_id="c-chain", netns=netns,
                        args=k8s("default", "chain"))
    assert added.code == 0
    portmap = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "portmap", "snat": True,
               "capabilities": {"portMappings": True},
               "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
               "prevResult": added.json}
    mapped = node.plugin("portmap", "ADD", portmap, container_id="c-chain", netns=netns)
    assert mapped.code == 0, mapped.out + mapped.err
    assert mapped.json["ips"] == added.json["ips"]  # passed through
    assert node.plugin("portmap", "DEL", portmap, container_id="c-chain", netns=netns).code == 0
    deleted = node.plugin("percale", "DEL", {**netconf(node), "prevResult": added.json},
                          container_id="c-chain", netns=netns, args=k8s("default", "chain"))
    assert deleted.code == 0


def test_percale_ipam_under_ptp(node, etcd_server):
    netns = node.new_pod_netns()
    # ptp hands its whole configuration to its IPAM plugin; percale-ipam reads its settings from
    # the top level, as Calico's calico-ipam does.
    conf = {"cniVersion": "1.0.0", "name": "ptp-net", "type": "ptp", "ipMasq": False,
            "agent_socket": node.socket, "nodename": node.name, "ipam": {"type": "percale-ipam"}}
    added = node.plugin("ptp", "ADD", conf, container_id="c-ptp", netns=netns, args=k8s("default", "ptp"))
    assert added.code == 0, added.out + added.err
    address = pod_ip(added.json)
    assert ipaddress.ip_address(address) in ipaddress.ip_network("10.244.0.0/16")
    assert f"inet {added.json['ips'][0]['address']}" in in_pod(netns, "ip", "-o", "addr").stdout
    assert ipaddress.ip_interface(added.json["ips"][0]["address"]).network.prefixlen == 26
    assert node.exec("ping", "-c1", "-W2", address, check=False).returncode == 0
    # A second ADD of the container: percale-ipam refuses it (102) before taking a second
    # address, so ptp's failure calls no IPAM DEL, which freed the running pod's address.
    again = node.plugin("ptp", "ADD", conf, container_id="c-ptp", netns=netns,
                        args=k8s("default", "ptp"))
    assert again.code != 0 and again.json["code"] == 102, again.out
    assert "already holds" in again.json["msg"]
    held = with_store(etcd_server.endpoint, lambda s: IPAM(s).ips_by_handle("ptp-net.c-ptp"))
    assert held == [address]
    assert node.exec("ping", "-c1", "-W2", address, check=False).returncode == 0
    # CHECK of the IPAM plugin: what it gave is in the result, and an address another plugin
    # of the chain added beside it does not fail it.
    prev = {**added.json, "ips": [*added.json["ips"], {"address": "192.168.50.2/32"}]}
    checked = node.plugin("percale-ipam", "CHECK", {**conf, "prevResult": prev},
                          container_id="c-ptp", netns=netns)
    assert checked.code == 0, checked.out
    moved = {**added.json, "ips": [{"address": "10.244.255.1/26"}]}
    wrong = node.plugin("percale-ipam", "CHECK", {**conf, "prevResult": moved},
                        container_id="c-ptp", netns=netns)
    assert wrong.code != 0 and wrong.json["code"] == 101, wrong.out
    assert node.plugin("ptp", "DEL", conf, container_id="c-ptp", netns=netns).code == 0
    handles = with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle"))
    assert "ptp-net.c-ptp" not in [kv.key.name for kv in handles.items]


def test_version_status_and_gc(node, etcd_server):
    version = node.plugin("percale", "VERSION", netconf(node, version="1.1.0"))
    assert version.code == 0
    assert set(version.json["supportedVersions"]) == {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
    assert node.plugin("percale", "STATUS", netconf(node, version="1.1.0")).code == 0

    netns = node.new_pod_netns()
    kept = node.plugin("percale", "ADD", netconf(node), container_id="c-keep", netns=netns, args=k8s("default", "keep"))
    stray = node.plugin("percale-ipam", "ADD", netconf(node), container_id="c-stray",
                        netns=node.new_pod_netns(), args=k8s("default", "stray"))
    # A sandbox the runtime lost track of, still wired: GC takes its veth (and with it its
    # routes) and its endpoint before its address, as DEL does; it released only the address,
    # which the next pod then got, to find its route taken (103).
    lost = node.plugin("percale", "ADD", netconf(node), container_id="c-lost",
                       netns=node.new_pod_netns(), args=k8s("default", "lost"))
    # A network whose name extends this one's: its handle k8s-pod-network.v2.c-other was taken
    # for container "v2.c-other" of this network, and freed.
    other = node.plugin("percale-ipam", "ADD", {**netconf(node), "name": "k8s-pod-network.v2"},
                        container_id="c-other", netns=node.new_pod_netns(),
                        args=k8s("default", "other"))
    assert kept.code == 0 and stray.code == 0 and lost.code == 0 and other.code == 0
    lost_address = ipaddress.ip_interface(lost.json["ips"][0]["address"]).ip
    gc = node.plugin("percale", "GC", {**netconf(node, version="1.1.0"),
                                       "cni.dev/valid-attachments": [{"containerID": "c-keep", "ifname": "eth0"}]})
    assert gc.code == 0, gc.out
    handles = [kv.key.name for kv in with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle")).items]
    assert "k8s-pod-network.c-keep" in handles and "k8s-pod-network.c-stray" not in handles
    assert "k8s-pod-network.c-lost" not in handles and "k8s-pod-network.v2.c-other" in handles
    endpoints = [kv.value.spec.container_id for kv in
                 with_store(etcd_server.endpoint, lambda s: s.list("WorkloadEndpoint")).items]
    assert "c-keep" in endpoints and "c-lost" not in endpoints
    links, routes = node.exec("ip", "link").stdout, node.exec("ip", "route").stdout
    assert pod_network.host_veth_name("default", "keep") in links
    assert pod_network.host_veth_name("default", "lost") not in links
    assert f"{lost_address} dev" not in routes
    # The list is a key of GC's configuration (CNI spec, "GC: Input"): without it the
    # configuration is wrong (7), and nothing is released.
    unlisted = node.plugin("percale", "GC", netconf(node, version="1.1.0"))
    assert unlisted.code == 1 and unlisted.json["code"] == 7, unlisted.out
    assert "cni.dev/valid-attachments" in unlisted.json["msg"]
    handles = [kv.key.name for kv in with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle")).items]
    assert "k8s-pod-network.c-keep" in handles


def test_gc_removes_a_collected_containers_veth_no_endpoint_names_but_not_a_newer_ones(
        node, etcd_server):
    """GC found a collected container's host veth only through its WorkloadEndpoint: the veth
    an ADD killed before it stored the endpoint left (or one whose endpoint was deleted) stayed,
    holding the route to an address GC released, and the next pod given it could not be wired
    (103). Its name comes from the allocation's pod and namespace now. A newer container of the
    same pod, still in use, keeps the veth of that name."""
    conf = netconf(node, version="1.1.0")
    orphan = node.plugin("percale", "ADD", conf, container_id="c-gc-orphan",
                         netns=node.new_pod_netns(), args=k8s("default", "gc-orphan"))
    assert orphan.code == 0, orphan.out
    forget_endpoint(node, etcd_server, "gc-orphan")
    old = node.plugin("percale", "ADD", conf, container_id="c-gc-old",
                      netns=node.new_pod_netns(), args=k8s("default", "gc-renewed"))
    new = node.plugin("percale", "ADD", conf, container_id="c-gc-new",
                      netns=node.new_pod_netns(), args=k8s("default", "gc-renewed"))
    assert old.code == 0 and new.code == 0, old.out + new.out
    gc = node.plugin("percale", "GC", {**conf, "cni.dev/valid-attachments": [
        {"containerID": "c-gc-new", "ifname": "eth0"}]})
    assert gc.code == 0, gc.out
    links, routes = node.exec("ip", "link").stdout, node.exec("ip", "route").stdout
    assert orphan.json["interfaces"][0]["name"] not in links
    assert f"{pod_ip(orphan.json)} dev" not in routes
    assert held_by(etcd_server, "c-gc-orphan") == [] and held_by(etcd_server, "c-gc-old") == []
    assert new.json["interfaces"][0]["name"] in links
    assert node.exec("ping", "-c1", "-W2", pod_ip(new.json), check=False).returncode == 0
    assert held_by(etcd_server, "c-gc-new") == [pod_ip(new.json)]


def test_error_codes(node):
    netns = node.new_pod_netns()
    no_netns = node.plugin("percale", "ADD", netconf(node), container_id="c-err", netns=None)
    assert no_netns.code == 1 and no_netns.json["code"] == 4
    garbage = node.plugin("percale", "ADD", "{not json", container_id="c-err", netns=netns)
    assert garbage.json["code"] == 6
    bad_mtu = node.plugin("percale", "ADD", netconf(node, mtu=12), container_id="c-err", netns=netns)
    assert bad_mtu.json["code"] == 7 and "mtu" in bad_mtu.json["msg"]
    old = node.plugin("percale", "ADD", netconf(node, version="0.1.0"), container_id="c-err", netns=netns)
    assert old.json["code"] == 1
    no_pool = node.plugin("percale", "ADD", netconf(node, ipam={"type": "percale-ipam", "ipv4_pools": ["nope"]}),
                          container_id="c-err", netns=netns, args=k8s("default", "err"))
    assert no_pool.json["code"] == 100 and "nope" in no_pool.json["msg"]
    # Nothing of the failed ADDs is left in the pod.
    assert "eth0" not in in_pod(netns, "ip", "link").stdout


def test_agent_down_means_try_again_later(node):
    netns = node.new_pod_netns()
    down = node.plugin("percale", "ADD", {**netconf(node), "agent_socket": node.socket + ".absent"},
                       container_id="c-down", netns=netns)
    assert down.code == 1 and down.json["code"] == 11


def test_status_with_the_agent_down_is_not_available(node):
    """STATUS asks whether an ADD can be served now: with no agent it cannot, which the CNI
    spec has STATUS say with 50; the shims answered 11, which STATUS does not define."""
    absent = {**netconf(node, version="1.1.0"), "agent_socket": node.socket + ".absent"}
    down = node.plugin("percale", "STATUS", absent)
    assert down.code == 1 and down.json["code"] == 50, down.out
    assert "cannot reach percale-node" in down.json["msg"]


def test_mtu_from_config_or_the_underlay_minus_the_tunnel(node, etcd_server):
    netns = node.new_pod_netns()
    fixed = node.plugin("percale", "ADD", netconf(node, mtu=1400), container_id="c-mtu1", netns=netns,
                        args=k8s("default", "mtu1"))
    assert fixed.code == 0
    assert "mtu 1400" in in_pod(netns, "ip", "link", "show", "eth0").stdout
    # No tunnel in use: the uplink's 1500. A VXLAN pool takes 50 bytes for its header.
    netns2 = node.new_pod_netns()
    plain = node.plugin("percale", "ADD", netconf(node), container_id="c-mtu2", netns=netns2,
                        args=k8s("default", "mtu2"))
    assert plain.code == 0 and "mtu 1500" in in_pod(netns2, "ip", "link", "show", "eth0").stdout
    node.wait_for_view(lambda: with_store(etcd_server.endpoint,
                                          lambda s: add_pool(s, "tunnelled", "10.245.0.0/16", vxlanMode="Always")))
    try:
        netns3 = node.new_pod_netns()
        vxlan = node.plugin("percale", "ADD", netconf(node), container_id="c-mtu3", netns=netns3,
                            args=k8s("default", "mtu3"))
        assert vxlan.code == 0 and "mtu 1450" in in_pod(netns3, "ip", "link", "show", "eth0").stdout
    finally:
        with_store(etcd_server.endpoint, lambda s: IPAM(s).delete_pool("tunnelled"))


def test_an_ipv6_pod_below_ipv6s_minimum_mtu_is_refused_naming_it_and_nothing_is_taken(node, etcd_server):
    """IPv6 needs links of 1280 bytes (RFC 8200); the kernel refuses an IPv6 address on a
    smaller veth, which used to fail the ADD half-way with "No such file or directory:
    .../proxy_ndp". Now it is refused before anything is taken, naming the MTU: the config's,
    or the one derived from percale-node's host MTU."""
    dual = {"type": "percale-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
    node.wait_for_view(lambda: with_store(etcd_server.endpoint,
                                          lambda s: add_pool(s, "pods6", "fd00:61::/48")))
    small = CNINode(etcd_server.unix_endpoint, shim=node.shim).start(mtu=1250)
    try:
        refusals = [(node, netconf(node, mtu=1200, ipam=dual), "mtu 1200 is below 1280"),
                    (small, netconf(small, ipam=dual),
                     "the pod MTU 1250 (percale-node's host MTU 1250, less encapsulation) is below 1280")]
        for at, conf, said in refusals:
            netns = at.new_pod_netns()
            refused = at.plugin("percale", "ADD", conf, container_id="c-mtu6", netns=netns,
                                args=k8s("default", "mtu6"))
            assert refused.code == 1 and refused.json["code"] == 7, refused.out
            assert said in refused.json["msg"] and "ipam.assign_ipv6" in refused.json["msg"]
            assert "eth0" not in in_pod(netns, "ip", "link").stdout
            # The runtime's DEL after a failed ADD, under the same configuration, succeeds.
            assert at.plugin("percale", "DEL", conf, container_id="c-mtu6", netns=netns,
                             args=k8s("default", "mtu6")).code == 0
        handles = [kv.key.name for kv in with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle")).items]
        assert "k8s-pod-network.c-mtu6" not in handles
        # An IPv4-only pod at that MTU is wired as before.
        netns = small.new_pod_netns()
        plain = small.plugin("percale", "ADD", netconf(small), container_id="c-mtu4", netns=netns,
                             args=k8s("default", "mtu4"))
        assert plain.code == 0 and "mtu 1250" in in_pod(netns, "ip", "link", "show", "eth0").stdout
        assert small.plugin("percale", "DEL", netconf(small), container_id="c-mtu4", netns=netns,
                            args=k8s("default", "mtu4")).code == 0
    finally:
        small.stop()
        with_store(etcd_server.endpoint, lambda s: IPAM(s).delete_pool("pods6"))


def test_del_of_an_older_container_leaves_the_newer_one_alone(node, etcd_server):
    """A pod's sandbox replaced: the new container's ADD comes before the old one's DEL."""
    old_netns, new_netns = node.new_pod_netns(), node.new_pod_netns()
    old = node.plugin("percale", "ADD", netconf(node), container_id="c-old", netns=old_netns, args=k8s("default", "redo"))
    new = node.plugin("percale", "ADD", netconf(node), container_id="c-new", netns=new_netns, args=k8s("default", "redo"))
    assert old.code == 0 and new.code == 0
    deleted = node.plugin("percale", "DEL", netconf(node), container_id="c-old", netns=old_netns, args=k8s("default", "redo"))
    assert deleted.code == 0
    wep_name = workload_endpoint_name(node.name, "k8s", "redo", "eth0")
    wep = with_store(etcd_server.endpoint, lambda s: s.get(Key("WorkloadEndpoint", wep_name, "default"))).value
    assert wep.spec.container_id == "c-new"
    assert node.exec("ping", "-c1", "-W2", pod_ip(new.json), check=False).returncode == 0
    handles = [kv.key.name for kv in with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle")).items]
    assert "k8s-pod-network.c-new" in handles and "k8s-pod-network.c-old" not in handles


def test_an_agent_without_its_datastore_says_try_again(etcd_server):
    from tests.helpers.cni_node import CNINode
    from tests.helpers.etcd_server import free_port

    cut_off = CNINode(f"http://127.0.0.1:{free_port()}").start()
    try:
        netns = cut_off.new_pod_netns()
        status = cut_off.plugin("percale", "STATUS", netconf(cut_off, version="1.1.0"))
        assert status.code == 1 and status.json["code"] == 50
        add = cut_off.plugin("percale", "ADD", netconf(cut_off), container_id="c-x", netns=netns, args=k8s("default", "x"))
        assert add.json["code"] == 11 and "etcd" in add.json["msg"]
        assert "eth0" not in in_pod(netns, "ip", "link").stdout
    finally:
        cut_off.stop()


def test_socket_is_for_root_only_and_older_result_versions_are_served(node):
    assert os.stat(node.socket).st_mode & 0o777 == 0o600
    netns = node.new_pod_netns()
    old = node.plugin("percale", "ADD", netconf(node, version="0.4.0"), container_id="c-v04", netns=netns,
                      args=k8s("default", "v04"))
    assert old.code == 0
    assert old.json["cniVersion"] == "0.4.0" and old.json["ips"][0]["version"] == "4"


def test_add_after_another_plugin_keeps_its_result(node):
    netns = node.new_pod_netns()
    earlier = {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": f"/var/run/netns/{netns}"}],
               "ips": [{"address": "192.168.50.2/24", "interface": 0}], "routes": [], "dns": {"nameservers": ["10.96.0.10"]}}
    added = node.plugin("percale", "ADD", {**netconf(node), "prevResult": earlier}, container_id="c-prev",
                        netns=netns, args=k8s("default", "prev"))
    assert added.code == 0, added.out
    out = added.json
    assert out["interfaces"][0] == earlier["interfaces"][0] and len(out["interfaces"]) == 3
    assert out["ips"][0] == earlier["ips"][0] and out["ips"][1]["interface"] == 2
    assert out["dns"] == earlier["dns"]
    # CHECK with the chain's final result compares only what percale made: the other plugin's
    # address, on its own interface, failed it ("192.168.50.2 is not allocated to ...").
    checked = node.plugin("percale", "CHECK", {**netconf(node), "prevResult": out},
                          container_id="c-prev", netns=netns, args=k8s("default", "prev"))
    assert checked.code == 0, checked.out
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-prev", netns=netns,
                       args=k8s("default", "prev")).code == 0


def test_a_failed_add_undoes_every_step(node, etcd_server):
    """The kernel refuses the host route (the address is already routed, as a /32 block's
    blackhole would be): the veth goes, the address goes back, no endpoint is left (it is
    written while the pod is configured, so it was stored and is deleted again), and the policy
    table holds no chains for the pod."""
    for i in range(4):
        node.exec("ip", "route", "add", "blackhole", f"10.246.0.{i}/32")
    node.wait_for_view(lambda: with_store(etcd_server.endpoint,
                                          lambda s: add_pool(s, "tiny", "10.246.0.0/30", blockSize=30)))
    try:
        netns = node.new_pod_netns()
        failed = node.plugin("percale", "ADD", netconf(node, ipam={"type": "percale-ipam", "ipv4_pools": ["tiny"]}),
                             container_id="c-fail", netns=netns, args=k8s("default", "fail"))
        assert failed.code == 1 and failed.json["code"] == 103, failed.out
        assert "already routed" in failed.json["msg"]
        assert "eth0" not in in_pod(netns, "ip", "link").stdout
        handles = [kv.key.name for kv in with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle")).items]
        assert "k8s-pod-network.c-fail" not in handles
        weps = with_store(etcd_server.endpoint, lambda s: s.list("WorkloadEndpoint", "default"))
        assert all(kv.value.spec.container_id != "c-fail" for kv in weps.items)
        veth = pod_network.host_veth_name("default", "fail")
        deadline = time.monotonic() + 5
        while veth in node.exec("nft", "list", "table", "inet", "percale").stdout:
            assert time.monotonic() < deadline, f"the policy table still has chains for {veth}"
            time.sleep(0.05)
    finally:
        for i in range(4):
            node.exec("ip", "route", "del", "blackhole", f"10.246.0.{i}/32", check=False)
        with_store(etcd_server.endpoint, lambda s: IPAM(s).delete_pool("tiny"))


def test_ctrl_c_stops_the_agent_which_wires_pods_without_helper_processes(etcd_server):
    """Pods are wired by threads of the agent (dataplane/workers.py): no worker process to
    weigh on the node or to outlive it. Ctrl-C stops it cleanly, and it leaves nothing
    behind."""
    async def ensure_pool(store):
        if not (await store.list("IPPool")).items:
            await add_pool(store, "pods", "10.244.0.0/16")

    with_store(etcd_server.endpoint, ensure_pool)
    node = CNINode(etcd_server.unix_endpoint).start()
    try:
        added = node.plugin("percale", "ADD", netconf(node), container_id="c-sigint",
                            netns=node.new_pod_netns(), args=k8s("default", "sigint"))
        assert added.code == 0, added.out
        children = [cmdline(pid) for pid in descendants(node.agent.pid)]
        assert not [c for c in children if "multiprocessing" in c or "forkserver" in c], children
        os.kill(node.agent.pid, signal.SIGINT)
        try:
            code = node.agent.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(node.agent.pid, signal.SIGQUIT)  # its threads' stacks into its log
            time.sleep(1)
            log = (node.workdir / "agent.log").read_text(errors="replace")
            raise AssertionError("the agent did not stop within 15 s of SIGINT; its log ends:\n"
                                 + "\n".join(log.splitlines()[-80:])) from None
        assert code == 0
        assert not Path(node.socket).exists()
    finally:
        node.stop()


def test_hostile_requests_get_a_cni_error_and_leave_nothing_behind(node, etcd_server, tmp_path):
    """Each refused with the code that tells a runtime what to do (4: fix the environment, 6/7:
    fix the config), naming what is wrong; no address, endpoint or veth is left, the agent logs
    no traceback (none is a bug), and it serves the next pod as before."""
    netns = node.new_pod_netns()
    log_before = (node.workdir / "agent.log").stat().st_size
    not_a_namespace = tmp_path / "netns-file"
    not_a_namespace.write_text("")
    fifo = tmp_path / "netns-fifo"  # opening it would wait for a writer, and the agent with it
    os.mkfifo(fifo)
    conf = netconf(node)

    def run(config=None, *, raw: bytes | None = None, **how):
        how.setdefault("container_id", "c-hostile")
        how.setdefault("netns", netns)
        how.setdefault("args", k8s("default", "hostile"))
        if raw is None:
            return node.plugin("percale", "ADD", config or conf, **how)
        environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c-hostile", "CNI_IFNAME": "eth0",
                   "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_ARGS": "", "CNI_PATH": str(node.bin_dir),
                   "PERCALE_CNI_SOCKET": node.socket, "PATH": "/usr/bin:/bin"}
        done = subprocess.run(["ip", "netns", "exec", node.name, str(node.bin_dir / "percale")],
                              input=raw, env=environ, capture_output=True, timeout=60)
        return PluginResult(done.returncode, done.stdout.decode(), done.stderr.decode())

    cases = [
        # (what, result, code, words the message must hold)
        ("huge stdin", run({**conf, "padding": "x" * (2 << 20)}), 7, "bytes"),
        ("binary stdin", run(raw=b"\xff\xfe\x00\x01binary\x80" * 100), 6, "JSON"),
        ("type not a string", run({**conf, "type": 5}), 7, "type"),
        ("name with a slash", run({**conf, "name": "k8s/pod-network"}), 7, "name"),
        ("interface name too long", run(ifname="eth0123456789012"), 4, "CNI_IFNAME"),
        ("interface name with /", run(ifname="eth/0"), 4, "CNI_IFNAME"),
        ("netns missing", run(env={"CNI_NETNS": "/var/run/netns/no-such-pod"}), 4, "CNI_NETNS"),
        ("netns a plain file", run(env={"CNI_NETNS": str(not_a_namespace)}), 4, "CNI_NETNS"),
        ("netns of another kind", run(env={"CNI_NETNS": "/proc/self/ns/uts"}), 4, "network namespace"),
        ("netns a FIFO", run(env={"CNI_NETNS": str(fifo)}), 4, "is not a namespace"),
        ("netns the node's own", run(env={"CNI_NETNS": f"/var/run/netns/{node.name}"}), 4,
         "is the node's own network namespace"),
        ("container ID with a newline", run(container_id="c-\nhostile"), 4, "CNI_CONTAINERID"),
        ("container ID with a control character", run(container_id="c-\x01x"), 4, "CNI_CONTAINERID"),
        ("pod name with /", run(args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=a/b"), 4, "K8S_POD_NAME"),
        # Kubernetes' rules, which the pod's endpoint needs (they were a 999 after the address
        # was taken and the veth made, both undone).
        ("pod name with a space", run(args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=has space"), 4,
         "K8S_POD_NAME: 'has space' is not a valid pod name: lower-case letters"),
        ("pod name in upper case", run(args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=Upper"), 4,
         "K8S_POD_NAME: 'Upper' is not a valid pod name"),
        ("namespace with _", run(args="K8S_POD_NAMESPACE=Bad_NS;K8S_POD_NAME=hostile"), 4,
         "K8S_POD_NAMESPACE: namespace 'Bad_NS' is not a valid namespace"),
        ("interface name in upper case", run(ifname="Eth0"), 4, "CNI_IFNAME 'Eth0'"),
        ("pod name too long for the endpoint's name",
         run(args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + "h-" * 100 + "x"), 4, "K8S_POD_NAME is too long"),
        # percale's plugin runs no IPAM plugin: a config that names one is not served from percale's pools.
        ("another IPAM plugin", run({**conf, "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}}), 7,
         "ipam.type: 'host-local' is not supported"),
        ("an IPAM plugin that does not exist", run({**conf, "ipam": {"type": "nosuch-ipam"}}), 7,
         "ipam.type: 'nosuch-ipam' is not supported"),
        ("cniVersion a number", run({**conf, "cniVersion": 1}), 7, "cniVersion must be a string"),
        # The pod's labels and named ports for policy (args.cni.labels, args.percale.namedPorts).
        ("label not key/value", run({**conf, "args": {"cni": {"labels": [{"key": "app"}]}}}), 7,
         "args.cni.labels"),
        ("label value invalid", run({**conf, "args": {"cni": {"labels": [{"key": "app", "value": "a b"}]}}}),
         7, "args.cni.labels: label value 'a b' is not valid"),
        ("named port too long", run({**conf, "args": {"percale": {"namedPorts": [
            {"name": "a-port-name-over-fifteen", "protocol": "TCP", "port": 80}]}}}), 7,
         "args.percale.namedPorts[0].name: 'a-port-name-over-fifteen' is not a port name"),
        ("named port not a number", run({**conf, "args": {"percale": {"namedPorts": [
            {"name": "http", "protocol": "TCP", "port": "eighty"}]}}}), 7,
         "args.percale.namedPorts[0].port: must be a whole number, not 'eighty'"),
    ]
    for what, result, code, words in cases:
        assert result.code == 1, (what, result.out, result.err)
        error = json.loads(result.out)
        assert (error["code"], words in error["msg"]) == (code, True), (what, error)
        assert "\n" not in error["msg"], what

    async def leftovers(store):
        handles = [kv.key.name for kv in (await store.list("IPAMHandle")).items if "hostile" in kv.key.name]
        endpoints = [kv.key.name for kv in (await store.list("WorkloadEndpoint")).items if "hostile" in kv.key.name]
        return handles, endpoints

    assert with_store(etcd_server.endpoint, leftovers) == ([], [])
    links = node.exec("ip", "link").stdout
    assert [pod for pod in ("hostile", "has space", "Upper") if pod_network.host_veth_name("default", pod) in links] == []
    assert pod_network.host_veth_name("Bad_NS", "hostile") not in links
    with open(node.workdir / "agent.log", "rb") as log:
        log.seek(log_before)
        assert b"Traceback" not in log.read()
    assert in_pod(netns, "ip", "-o", "link").stdout.count("\n") == 1  # lo only
    added = node.plugin("percale", "ADD", conf, container_id="c-after", netns=netns, args=k8s("default", "after"))
    assert added.code == 0, added.out
    assert node.plugin("percale", "DEL", conf, container_id="c-after", netns=netns,
                       args=k8s("default", "after")).code == 0


def test_a_second_network_on_the_same_pod_is_refused_and_the_first_stays(node, etcd_server):
    """Multus adds net1 from a second network: its host veth was named from the pod alone, so
    the second ADD took eth0's host veth for a stale one and deleted it (eth0 went from the pod,
    its address and endpoint stayed, and the ADD answered 0). percale wires one interface per
    pod: the second is refused, undone, and the first left as it was."""
    netns = node.new_pod_netns()
    first = node.plugin("percale", "ADD", netconf(node), container_id="c-multi", netns=netns,
                        args=k8s("default", "multi"))
    assert first.code == 0, first.out
    second = node.plugin("percale", "ADD", {**netconf(node), "name": "net-b"}, container_id="c-multi",
                         netns=netns, ifname="net1", args=k8s("default", "multi"))
    assert second.code == 1 and second.json["code"] == 103, second.out
    assert "percale wires one interface per pod" in second.json["msg"]
    assert "eth0@" in in_pod(netns, "ip", "-o", "link").stdout
    assert "net1" not in in_pod(netns, "ip", "-o", "link").stdout
    eth0 = pod_network.host_veth_name("default", "multi")
    links = node.exec("ip", "link").stdout
    assert eth0 in links and pod_network.host_veth_name("default", "multi", "net1") not in links
    handles = [kv.key.name for kv in with_store(etcd_server.endpoint, lambda s: s.list("IPAMHandle")).items]
    assert "k8s-pod-network.c-multi" in handles and "net-b.c-multi" not in handles
    address = ipaddress.ip_interface(first.json["ips"][0]["address"]).ip
    assert f"{address} dev {eth0}" in node.exec("ip", "route").stdout
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-multi", netns=netns,
                       args=k8s("default", "multi")).code == 0


def test_the_del_after_a_refused_second_interface_keeps_the_first(node, etcd_server):
    """CNI spec: an attachment is (CNI_CONTAINERID, CNI_IFNAME), a runtime runs DEL after a
    failed ADD, and the DEL of one attachment must not undo another. net2 of the same network is
    refused (percale wires one interface per pod); the DEL for it released the handle
    "<network>.<container ID>" that eth0's address is under too, and the next pod got it."""
    netns, args = node.new_pod_netns(), k8s("default", "second-if")
    first = node.plugin("percale", "ADD", netconf(node), container_id="c-second-if", netns=netns,
                        args=args)
    assert first.code == 0, first.out
    address, host_veth = pod_ip(first.json), first.json["interfaces"][0]["name"]
    second = node.plugin("percale", "ADD", netconf(node), container_id="c-second-if", netns=netns,
                         ifname="net2", args=args)
    assert second.code == 1 and second.json["code"] == 102, second.out
    message = second.json["msg"]
    assert all(w in message for w in ("percale wires one interface per pod", "eth0", address,
                                      host_veth)), message
    assert "net2" not in in_pod(netns, "ip", "-o", "link").stdout
    deleted = node.plugin("percale", "DEL", netconf(node), container_id="c-second-if",
                          netns=netns, ifname="net2", args=args)
    assert deleted.code == 0, deleted.out

    held = with_store(etcd_server.endpoint,
                      lambda s: IPAM(s).ips_by_handle("k8s-pod-network.c-second-if"))
    assert held == [address]
    wep_name = workload_endpoint_name(node.name, "k8s", "second-if", "eth0")
    wep = with_store(etcd_server.endpoint,
                     lambda s: s.get(Key("WorkloadEndpoint", wep_name, "default"))).value
    assert wep.spec.container_id == "c-second-if"
    checked = node.plugin("percale", "CHECK", {**netconf(node), "prevResult": first.json},
                          container_id="c-second-if", netns=netns, args=args)
    assert checked.code == 0, checked.out
    assert node.exec("ping", "-c1", "-W2", address, check=False).returncode == 0
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-second-if", netns=netns,
                       args=args).code == 0
    assert "k8s-pod-network.c-second-if" not in handle_names(etcd_server)


def test_percale_ipam_attaches_one_container_to_a_network_on_two_interfaces(node, etcd_server):
    """CNI spec: one container may be attached to one network more than once, under different
    CNI_IFNAMEs (host-local serves it). Under the reference bridge plugin, percale-ipam refused
    net2 while net1 held an address, and its DEL for net2 freed net1's. Each interface gets its
    own address now; CHECK and DEL of one concern its own only."""
    netns, args = node.new_pod_netns(), "IgnoreUnknown=1;" + k8s("default", "twice-if")
    conf = {"cniVersion": "1.0.0", "name": "bridged", "type": "bridge", "bridge": "pclbr-twice",
            "agent_socket": node.socket, "nodename": node.name, "ipam": {"type": "percale-ipam"}}
    added = {}
    for ifname in ("net1", "net2"):
        added[ifname] = node.plugin("bridge", "ADD", conf, container_id="c-twice-if",
                                    netns=netns, ifname=ifname, args=args)
        assert added[ifname].code == 0, added[ifname].out + added[ifname].err
    net1, net2 = pod_ip(added["net1"].json), pod_ip(added["net2"].json)
    assert net1 != net2
    def held() -> list[str]:
        return with_store(etcd_server.endpoint,
                          lambda s: IPAM(s).ips_by_handle("bridged.c-twice-if"))

    assert sorted(held()) == sorted([net1, net2])
    for ifname, address in (("net1", net1), ("net2", net2)):
        assert f"inet {address}/" in in_pod(netns, "ip", "-o", "addr", "show", ifname).stdout
        checked = node.plugin("percale-ipam", "CHECK", {**conf, "prevResult": added[ifname].json},
                              container_id="c-twice-if", netns=netns, ifname=ifname, args=args)
        assert checked.code == 0, (ifname, checked.out)
    # The same attachment twice is still refused (bridge refuses it itself before asking IPAM).
    again = node.plugin("percale-ipam", "ADD", conf, container_id="c-twice-if", netns=netns,
                        ifname="net1", args=args)
    assert again.code != 0 and again.json["code"] == 102, again.out
    assert sorted(held()) == sorted([net1, net2])

    deleted = node.plugin("bridge", "DEL", conf, container_id="c-twice-if", netns=netns,
                          ifname="net2", args=args)
    assert deleted.code == 0, deleted.out + deleted.err
    assert held() == [net1]
    assert f"inet {net1}/" in in_pod(netns, "ip", "-o", "addr", "show", "net1").stdout
    assert node.plugin("bridge", "DEL", conf, container_id="c-twice-if", netns=netns,
                       ifname="net1", args=args).code == 0
    assert "bridged.c-twice-if" not in handle_names(etcd_server)


def test_pods_whose_names_and_interfaces_spell_alike_keep_their_own_host_veths(node, etcd_server):
    """Pod names may hold dots. The host veth of an interface other than eth0 was named from
    "<namespace>.<pod>.<ifname>": pod web's net1 and pod web.net1's eth0 had the same one, and
    the second ADD took the first pod's veth for a stale one of its own and deleted it."""
    first_netns, second_netns = node.new_pod_netns(), node.new_pod_netns()
    first = node.plugin("percale", "ADD", netconf(node), container_id="c-web", netns=first_netns,
                        ifname="net1", args=k8s("shop", "web"))
    assert first.code == 0, first.out
    second = node.plugin("percale", "ADD", netconf(node), container_id="c-web-net1",
                         netns=second_netns, args=k8s("shop", "web.net1"))
    assert second.code == 0, second.out
    veths = [r.json["interfaces"][0]["name"] for r in (first, second)]
    assert veths[0] != veths[1]
    links = node.exec("ip", "link").stdout
    assert all(veth in links for veth in veths), links
    assert "net1@" in in_pod(first_netns, "ip", "-o", "link").stdout
    for result in (first, second):
        assert node.exec("ping", "-c1", "-W2", pod_ip(result.json), check=False).returncode == 0
    checked = node.plugin("percale", "CHECK", {**netconf(node), "prevResult": first.json},
                          container_id="c-web", netns=first_netns, ifname="net1",
                          args=k8s("shop", "web"))
    assert checked.code == 0, checked.out
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-web-net1",
                       netns=second_netns, args=k8s("shop", "web.net1")).code == 0
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-web", netns=first_netns,
                       ifname="net1", args=k8s("shop", "web")).code == 0


def test_status_is_50_while_the_pools_an_add_may_take_from_are_full(node, etcd_server):
    """CNI spec 1.1: STATUS returns 50 ("cannot service ADD") when the plugin's resources are
    exhausted. It answered 0 with every address of the pool taken, and each ADD failed (100)."""
    node.wait_for_view(lambda: with_store(etcd_server.endpoint, lambda s: add_pool(
        s, "full", "10.247.0.0/30", blockSize=30, assignmentMode="Manual")))
    conf = netconf(node, version="1.1.0", ipam={"type": "percale-ipam", "ipv4_pools": ["full"]})
    added = []
    try:
        assert node.plugin("percale", "STATUS", conf).code == 0
        for i in range(4):
            netns = node.new_pod_netns()
            result = node.plugin("percale", "ADD", conf, container_id=f"c-full-{i}", netns=netns,
                                 args=k8s("default", f"full-{i}"))
            assert result.code == 0, result.out
            added.append((i, netns))
        status = node.plugin("percale", "STATUS", conf)
        assert status.code == 1 and status.json["code"] == 50, status.out
        assert "full 4 of 4 in use" in status.json["msg"]
        # The same node, under a configuration whose pools have room, can serve ADD.
        assert node.plugin("percale", "STATUS", netconf(node, version="1.1.0")).code == 0
        i, netns = added.pop()
        assert node.plugin("percale", "DEL", conf, container_id=f"c-full-{i}", netns=netns,
                           args=k8s("default", f"full-{i}")).code == 0
        assert node.plugin("percale", "STATUS", conf).code == 0
    finally:
        for i, netns in added:
            node.plugin("percale", "DEL", conf, container_id=f"c-full-{i}", netns=netns,
                        args=k8s("default", f"full-{i}"))
        with_store(etcd_server.endpoint, lambda s: IPAM(s).delete_pool("full"))


def test_del_naming_the_nodes_own_namespace_deletes_nothing_of_the_node(node, etcd_server):
    """DEL removes CNI_IFNAME from CNI_NETNS: pointed at the node's namespace, it deleted the
    node's interfaces by name (another pod's host veth here; eth0 would be the uplink)."""
    netns = node.new_pod_netns()
    added = node.plugin("percale", "ADD", netconf(node), container_id="c-victim", netns=netns,
                        args=k8s("default", "victim"))
    assert added.code == 0, added.out
    victim = pod_network.host_veth_name("default", "victim")
    deleted = node.plugin("percale", "DEL", netconf(node), container_id="c-other", ifname=victim,
                          args=k8s("default", "other"),
                          env={"CNI_NETNS": f"/var/run/netns/{node.name}"})
    assert deleted.code == 1 and deleted.json["code"] == 4, deleted.out
    assert "is the node's own network namespace" in deleted.json["msg"]
    assert victim in node.exec("ip", "link").stdout
    address = ipaddress.ip_interface(added.json["ips"][0]["address"]).ip
    assert f"{address} dev {victim}" in node.exec("ip", "route").stdout
    assert node.plugin("percale", "DEL", netconf(node), container_id="c-victim", netns=netns,
                       args=k8s("default", "victim")).code == 0

def test_a_configuration_the_shim_passes_on_fits_the_agent_however_it_is_escaped(node):
    """Just under the shim's 1 MiB of UTF-8, every character escaped to six bytes on its way to
    the agent: it was refused as "over 1048576 bytes" by the agent, against the protocol."""
    netns = node.new_pod_netns()
    conf = json.dumps({**netconf(node), "padding": "\u00e9" * 500_000}, ensure_ascii=False)
    assert len(conf.encode()) < 1 << 20
    added = node.plugin("percale", "ADD", conf, container_id="c-wide", netns=netns,
                        args=k8s("default", "wide"))
    assert added.code == 0, added.out[:300]
    assert node.plugin("percale", "DEL", conf, container_id="c-wide", netns=netns,
                       args=k8s("default", "wide")).code == 0

def test_the_agent_answers_a_request_too_long_for_it_and_keeps_serving(node):
    """Past the shim's own check (another client of the socket): the agent reads the whole
    over-long line, answers code 7, and the next request is served."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(node.socket)
        client.sendall(b'{"padding": "' + b"y" * (9 << 20) + b'"}\n')
        answer = json.loads(client.makefile("rb").readline())
    assert answer["code"] == 7 and json.loads(answer["stdout"])["code"] == 7
    status = node.plugin("percale", "VERSION", netconf(node))
    assert status.code == 0
    netns = node.new_pod_netns()
    added = node.plugin("percale", "ADD", netconf(node), container_id="c-long", netns=netns,
                        args=k8s("default", "long"))
    assert added.code == 0, added.out
