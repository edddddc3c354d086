"""bench/policy.py: network policy's costs, beside their floors, in one run.

    sudo .venv/bin/python bench/policy.py [--endpoints 1000] [--policies 200] [--rounds 3] [--megabytes 1000]

  apply       1,000 local endpoints in 10 namespaces and 200 policies (each selecting one app in one
              namespace, allowing two apps on two TCP ports, denying one app, egress to a CIDR):
              full program, then one policy changed, then one pod added. percale's whole path
              (compile, diff, the transaction through libnftables in-process, as percale-node
              applies it) against `nft -f` of the same text alone (the floor) and
              against `ipset restore` + `iptables-restore` of the equivalent iptables ruleset
              (Calico's iptables mode: ipsets for selectors, a linear dispatch, mark-and-return
              policy chains), each in a fresh network namespace.
  throughput  one TCP stream between two pods of one node (through both pods' chains) with no
              table, and with the 1,000-endpoint table plus a 1,000-rule policy in the pods' path
              (the connection's first packet walks it; the rest match conntrack first). Aim:
              ratio >= 0.9.
  agent       percale-node with 1,000 endpoints and 200 policies in etcd: the time from the last
              write to the table in the kernel, its CPU for that, and its RSS and PSS after.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import run_script  # noqa: E402
from bench.vxlan import transfer  # noqa: E402
from percale.api import GlobalNetworkPolicy, NetworkPolicy, parse  # noqa: E402
from percale.policy.compile import NamedPort, PolicyEndpoint, Ruleset, compile_ruleset, render  # noqa: E402
from percale.policy.nft import update_script  # noqa: E402

NAMESPACES, APPS = 10, 20


def endpoints(n: int) -> list[PolicyEndpoint]:
    found = []
    for i in range(n):
        namespace = f"ns{i % NAMESPACES}"
        address = str(ipaddress.IPv4Address("10.244.0.0") + i + 1)
        found.append(PolicyEndpoint(f"{namespace}/pod{i}", namespace, f"pcl{i:012x}", (address,),
                                    {"app": f"app{i % APPS}", "tier": "abc"[i % 3]},
                                    {"kubernetes.io/metadata.name": namespace},
                                    (NamedPort("http", "TCP", 8080),)))
    return found


def policies(n: int, ports: tuple[int, int] = (80, 8080)) -> list[NetworkPolicy | GlobalNetworkPolicy]:
    made = []
    for i in range(n):
        made.append(parse({
            "apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"p{i}", "namespace": f"ns{i % NAMESPACES}"},
            "spec": {"order": 100 + i, "selector": f"app == 'app{i % APPS}'", "types": ["Ingress", "Egress"],
                     "ingress": [
                         {"action": "Deny", "source": {"selector": f"app == 'app{(i + 3) % APPS}'"}},
                         {"action": "Allow", "protocol": "TCP", "source": {"selector": f"app == 'app{(i + 1) % APPS}'"},
                          "destination": {"ports": list(ports)}},
                         {"action": "Allow", "protocol": "TCP", "source": {"selector": f"app == 'app{(i + 2) % APPS}'",
                                                                           "namespaceSelector": "all()"},
                          "destination": {"ports": list(ports)}}],
                     "egress": [{"action": "Allow", "destination": {"nets": ["10.0.0.0/8"]}}]}}))
    return made


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def in_netns(name: str, argv: list[str], text: str) -> float:
    """Wall time of one command reading `text`, in network namespace `name`."""
    started = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", name, *argv], input=text, text=True, check=True,
                   capture_output=True)
    return time.perf_counter() - started


# Applies stdin with libnftables (what percale-node uses) inside the namespace; prints the seconds.
LIBRARY_APPLY = """
import sys, time
from percale.policy.nft import LibNftables
apply = LibNftables()
text = sys.stdin.read()
started = time.perf_counter()
apply(text)
print(time.perf_counter() - started)
"""


def library_apply(name: str, text: str) -> float:
    done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", LIBRARY_APPLY],
                          input=text, text=True, check=True, capture_output=True)
    return float(done.stdout)


class Netns:
    def __enter__(self) -> str:
        self.name = f"pbench{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        return self.name

    def __exit__(self, *_) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


# -- the equivalent iptables ruleset ------------------------------------------------------------

_TRANSLATIONS = [
    (r"meta l4proto (\w+)", lambda m: f"-p {m[1]}"),
    (r"ip (saddr|daddr) != @(\S+)", lambda m: f"-m set ! --match-set {m[2]} {'src' if m[1] == 'saddr' else 'dst'}"),
    (r"ip (saddr|daddr) @(\S+)", lambda m: f"-m set --match-set {m[2]} {'src' if m[1] == 'saddr' else 'dst'}"),
    (r"ip (saddr|daddr) \{ ([^}]+) \}", lambda m: f"{'-s' if m[1] == 'saddr' else '-d'} {m[2].replace(' ', '')}"),
    (r"th dport \{ ([^}]+) \}", lambda m: f"-m multiport --dports {m[1].replace(' ', '').replace('-', ':')}"),
    (r'comment "([^"]*)"', lambda m: f'-m comment --comment "{m[1][:200]}"'),
]


def iptables_rules(chain: str, rule: str) -> list[str] | None:
    """One nft rule of the ruleset as iptables rules (IPv4 only; None for an IPv6 rule)."""
    if "meta nfproto ipv6" in rule:
        return None
    rule = rule.replace("meta nfproto ipv4 ", "").replace(" counter", "").replace("counter ", "")
    verdicts = [
        ("meta mark set mark or 0x10000 return", ["-j MARK --set-xmark 0x10000/0x10000", "-j RETURN"]),
        ("meta mark set mark or 0x20000 return", ["-j MARK --set-xmark 0x20000/0x20000", "-j RETURN"]),
        ("meta mark and 0x10000 == 0x10000 return", ["-m mark --mark 0x10000/0x10000 -j RETURN"]),
        ("meta mark set mark and 0xfffcffff", ["-j MARK --set-xmark 0x0/0x30000"]),
        ("ct state established,related accept", ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]),
        ("ct state invalid drop", ["-m conntrack --ctstate INVALID -j DROP"]),
    ]
    for text, replacement in verdicts:
        if text in rule:
            head = rule.replace(text, "").strip()
            matches = _translate(head)
            return [f"-A {chain} {matches} {r}".replace("  ", " ") for r in replacement]
    if (found := re.search(r"meta mark and 0x20000 == 0x20000 goto (\S+)", rule)):
        return [f"-A {chain} -m mark --mark 0x20000/0x20000 -g {found[1]}"]
    for verb, flag in (("jump", "-j"), ("goto", "-g")):
        if (found := re.fullmatch(rf"{verb} (\S+)", rule.strip())):
            return [f"-A {chain} {flag} {found[1]}"]
    action = "-j DROP" if " drop" in f" {rule}" else "-j ACCEPT"
    head = re.sub(r"\b(drop|accept)\b", "", rule)
    return [f"-A {chain} {_translate(head)} {action}".replace("  ", " ")]


def _translate(text: str) -> str:
    out = []
    for pattern, make in _TRANSLATIONS:
        for match in re.finditer(pattern, text):
            out.append(make(match))
        text = re.sub(pattern, "", text)
    return " ".join(out)


def iptables_text(ruleset: Ruleset) -> tuple[str, str]:
    """(ipset restore input, iptables-restore input) for the IPv4 half of `ruleset`."""
    sets = []
    for name, declared in sorted(ruleset.sets.items()):
        if not name.startswith(("s4-", "n4-")):
            continue
        kind = "hash:ip" if name.startswith("s4-") else "hash:ip,port"
        sets.append(f"create {name} {kind}")
        for element in declared.elements:
            if kind == "hash:ip":
                sets.append(f"add {name} {element}")
            else:
                address, proto, port = _split(element)
                sets.append(f"add {name} {address},{proto}:{port}")
    lines = ["*filter"]
    chains = {**ruleset.chains, "from-endpoint-dispatch": [], "to-endpoint-dispatch": []}
    lines += [f":{name[:28]} - [0:0]" for name in sorted(chains)]
    lines.append("-A FORWARD -i pcl+ -j from-endpoint-dispatch")
    lines.append("-A FORWARD -o pcl+ -j to-endpoint-dispatch")
    for interface, chain in sorted(ruleset.from_endpoint.items()):
        lines.append(f"-A from-endpoint-dispatch -i {interface} -g {chain}")
    lines.append("-A from-endpoint-dispatch -i pcl+ -j DROP")
    for interface, chain in sorted(ruleset.to_endpoint.items()):
        lines.append(f"-A to-endpoint-dispatch -o {interface} -g {chain}")
    lines.append("-A to-endpoint-dispatch -o pcl+ -j DROP")
    for name, rules in sorted(ruleset.chains.items()):
        for rule in rules:
            lines += iptables_rules(name, rule) or []
    lines.append("COMMIT")
    return "\n".join(sets) + "\n", "\n".join(lines) + "\n"


def _split(element: str) -> tuple[str, str, str]:
    address, proto, port = [part.strip() for part in element.split(" . ")]
    return address, proto, port


# -- apply ----------------------------------------------------------------------------------------

def apply_times(n_endpoints: int, n_policies: int, rounds: int) -> dict[str, dict[str, float]]:
    everyone = endpoints(n_endpoints)
    base = policies(n_policies)
    changed = [base[0].model_copy(update={"spec": policies(1, (81, 8081))[0].spec}), *base[1:]]
    added = [*everyone, PolicyEndpoint("ns0/new", "ns0", "pclnew000000000", ("10.244.200.1",),
                                       {"app": "app0"}, {"kubernetes.io/metadata.name": "ns0"})]
    rows: dict[str, dict[str, list[float]]] = {}

    def note(step: str, what: str, seconds: float) -> None:
        rows.setdefault(step, {}).setdefault(what, []).append(seconds)

    for _ in range(rounds):
        with Netns() as ns:
            compiled = {}
            note("full", "compile", timed(lambda: compiled.setdefault("full", compile_ruleset(base, {}, everyone))))
            text = render(compiled["full"])
            # The whole path: compiling, rendering and loading (with libnftables, as the agent).
            note("full", "percale", rows["full"]["compile"][-1] + timed(lambda: render(compiled["full"]))
                 + library_apply(ns, text))
        with Netns() as ns:
            note("full", "nft -f (floor)", in_netns(ns, ["nft", "-f", "-"], text))
            ipsets, iptables = iptables_text(compiled["full"])
            note("full", "iptables", in_netns(ns, ["ipset", "restore"], ipsets)
                 + in_netns(ns, ["iptables-legacy-restore"], iptables))
            for step, world in (("one policy changed", (changed, everyone)), ("one pod added", (base, added))):
                started = time.perf_counter()
                after = compile_ruleset(world[0], {}, world[1])
                script = update_script(compiled["full"], after)
                prepare = time.perf_counter() - started
                # percale's change and the floor, each applied to the full table.
                subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)
                note(step, "percale", prepare + library_apply(ns, script))
                subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)
                note(step, "nft -f (floor)", in_netns(ns, ["nft", "-f", "-"], script))
                # iptables-restore rewrites its whole table for any change (Calico's iptables
                # mode writes only dirty chains with --noflush; the whole table is the ceiling).
                _, after_iptables = iptables_text(after)
                note(step, "iptables", in_netns(ns, ["iptables-legacy-restore"], after_iptables))
    return {step: {what: statistics.median(v) for what, v in found.items()} for step, found in rows.items()}


# -- throughput -------------------------------------------------------------------------------

def throughput(megabytes: int, rounds: int) -> tuple[float, float, float, int]:
    """Gbit/s with no table, with the table and no rule in the pods' path (their endpoints
    selected by no policy: conntrack and the profile), and with a long policy in the path; and
    how many rules that policy has."""
    node = f"pbench{uuid.uuid4().hex[:6]}"
    pods = [f"{node}a", f"{node}b"]
    names = ["pcl000000000000", "pcl000000000001"]
    addresses = ["10.244.0.1", "10.244.0.2"]
    subprocess.run(["ip", "netns", "add", node], check=True)
    try:
        for pod, host_if, address in zip(pods, names, addresses):
            subprocess.run(["ip", "netns", "add", pod], check=True)
            subprocess.run(["ip", "link", "add", host_if, "netns", node, "type", "veth", "peer", "name",
                            "eth0", "netns", pod], check=True)
            for command in (["ip", "addr", "add", f"{address}/32", "dev", "eth0"], ["ip", "link", "set", "lo", "up"],
                            ["ip", "link", "set", "eth0", "up"],
                            ["ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"],
                            ["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]):
                subprocess.run(["ip", "netns", "exec", pod, *command], check=True)
            for command in (["ip", "link", "set", host_if, "up"], ["ip", "route", "add", f"{address}/32", "dev", host_if]):
                subprocess.run(["ip", "netns", "exec", node, *command], check=True)
            mac = subprocess.run(["ip", "netns", "exec", node, "cat", f"/sys/class/net/{host_if}/address"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            # The gateway is the host end's MAC, as the CNI plugin sets it; and the pod's MAC
            # on the host side (the host has no address there to ask from).
            subprocess.run(["ip", "netns", "exec", pod, "ip", "neigh", "replace", "169.254.1.1", "lladdr", mac,
                            "dev", "eth0", "nud", "permanent"], check=True)
            pod_mac = subprocess.run(["ip", "netns", "exec", pod, "cat", "/sys/class/net/eth0/address"],
                                     capture_output=True, text=True, check=True).stdout.strip()
            subprocess.run(["ip", "netns", "exec", node, "ip", "neigh", "replace", address, "lladdr", pod_mac,
                            "dev", host_if, "nud", "permanent"], check=True)
        subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        everyone = endpoints(1000)
        everyone[0] = PolicyEndpoint("ns0/a", "ns0", names[0], (addresses[0],), {"app": "client"},
                                     {"kubernetes.io/metadata.name": "ns0"})
        everyone[1] = PolicyEndpoint("ns0/b", "ns0", names[1], (addresses[1],), {"app": "server"},
                                     {"kubernetes.io/metadata.name": "ns0"})
        # 999 rules that do not match the pods' flow, then the one that allows it.
        rules = [{"action": "Deny", "protocol": "TCP", "source": {"nets": [f"10.{i // 250}.{i % 250}.0/24"]}}
                 for i in range(999)]
        rules.append({"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'client'"}})
        walked = parse({"apiVersion": "percale.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": "long", "namespace": "ns0"},
                        "spec": {"selector": "app == 'server'", "ingress": rules}})
        tables = {"none": None, "no rules": render(compile_ruleset(policies(200), {}, everyone)),
                  "long": render(compile_ruleset([walked, *policies(200)], {}, everyone))}
        found: dict[str, list[float]] = {name: [] for name in tables}
        for _ in range(rounds):
            for name, table in tables.items():
                subprocess.run(["ip", "netns", "exec", node, "nft", "delete", "table", "inet", "percale"],
                               capture_output=True)
                if table:
                    subprocess.run(["ip", "netns", "exec", node, "nft", "-f", "-"], input=table, text=True,
                                   check=True)
                found[name].append(transfer(pods[1], pods[0], addresses[1], megabytes))
        return (*(statistics.median(found[name]) for name in tables), len(rules))
    finally:
        for name in (*pods, node):
            subprocess.run(["ip", "netns", "del", name], check=False)


# -- the agent --------------------------------------------------------------------------------

def agent(n_endpoints: int, n_policies: int) -> dict[str, float]:
    from percale.api import ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec
    from percale.api.workloadendpoint import workload_endpoint_name
    from tests.helpers.cni_node import CNINode
    from tests.helpers.etcd_server import EtcdServer
    from tests.helpers.store import with_store

    server = EtcdServer().start()
    node = CNINode(server.unix_endpoint)
    try:
        node.start()
        before = _cpu(node.agent.pid)

        async def write(store):
            for i, endpoint in enumerate(endpoints(n_endpoints)):
                namespace, pod = endpoint.key.split("/")
                await store.create(WorkloadEndpoint(
                    metadata=ObjectMeta(name=workload_endpoint_name(node.name, "k8s", pod, "eth0"),
                                        namespace=namespace, labels=dict(endpoint.labels)),
                    spec=WorkloadEndpointSpec.model_validate({
                        "orchestrator": "k8s", "node": node.name, "pod": pod, "endpoint": "eth0",
                        "ipNetworks": [f"{endpoint.addresses[0]}/32"], "interfaceName": endpoint.interface})))
            for policy in policies(n_policies):
                await store.create(policy)
        started = time.perf_counter()
        with_store(server.endpoint, write)
        written = time.perf_counter()

        def programmed() -> bool:
            out = node.exec("nft", "list", "map", "inet", "percale", "from-endpoint", check=False).stdout
            return out.count("goto fw-") >= n_endpoints and f"/p{n_policies - 1} " in node.exec(
                "nft", "list", "table", "inet", "percale", check=False).stdout
        while not programmed():
            if time.perf_counter() - written > 120:
                raise RuntimeError(f"the agent did not program {n_endpoints} endpoints in 2 minutes")
            time.sleep(0.1)
        done = time.perf_counter()
        cpu = _cpu(node.agent.pid) - before
        time.sleep(2)
        return {"writes": written - started, "programmed after last write": done - written,
                "agent cpu": cpu, "rss MB": _memory(node.agent.pid, "Rss"),
                "pss MB": _memory(node.agent.pid, "Pss")}
    finally:
        node.stop()
        server.stop()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(args: argparse.Namespace) -> None:
    print(f"apply: {args.endpoints} endpoints x {args.policies} policies, median of {args.rounds} (seconds)")
    times = apply_times(args.endpoints, args.policies, args.rounds)
    print(f"  {'step':<20} {'percale':>9} {'nft -f':>9} {'iptables':>9}  percale/nft  percale/iptables")
    for step, found in times.items():
        print(f"  {step:<20} {found['percale']:9.3f} {found['nft -f (floor)']:9.3f} {found['iptables']:9.3f}"
              f"  {found['percale'] / found['nft -f (floor)']:10.2f}  {found['percale'] / found['iptables']:15.2f}")
    print(f"  (of the full program, compiling took {times['full']['compile']:.3f} s)")
    without, no_rules, long, rules = throughput(args.megabytes, max(args.rounds, 5))
    print(f"throughput: {no_rules:.2f} Gbit/s with no rule in the pods' path, {long:.2f} with {rules}:"
          f" ratio {long / no_rules:.2f} (aim >= 0.9); {without:.2f} with no table at all"
          f" (conntrack off: ratio {no_rules / without:.2f})")
    figures = agent(args.endpoints, args.policies)
    print("agent: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=1000,
                        help="per transfer; smaller ones are mostly noise on 2 cores")
    args = parser.parse_args()
    return run_script("bench/policy.py", lambda: run(args), cleaned="its namespaces are removed")


if __name__ == "__main__":
    sys.exit(main())
