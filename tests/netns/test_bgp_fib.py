"""The BGP FIB (percale.dataplane.fib) against the real kernel: each test makes its own network
namespace and runs the FIB inside it through tests/helpers/fib_worker.py, then reads the kernel
back with `ip -json route show proto 202`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from percale.dataplane.route_owners import RouteProtocol
from tests.helpers.fib_worker import REPO, FibNamespace

pytestmark = pytest.mark.netns

BGP = RouteProtocol.BGP
POD_PROTOCOL = RouteProtocol.POD


@pytest.fixture
def ns():
    with FibNamespace() as namespace:
        yield namespace


@pytest.fixture
def fib(ns):
    with ns.worker() as worker:
        worker.call("open")
        yield worker


def table(ns: FibNamespace, family: int = 4, proto: int | str = BGP,
          name: str = "main") -> dict[str, object]:
    """dst → gateway, or the sorted gateways of a multipath route."""
    out = {}
    for route in ns.routes(proto, family, name):
        dst = route["dst"]
        if "/" not in dst:
            dst += "/32" if family == 4 else "/128"
        if "nexthops" in route:
            out[dst] = sorted(hop["gateway"] for hop in route["nexthops"])
        else:
            out[dst] = route.get("gateway", route.get("type", route.get("dev")))
    return out


def counts(answer: dict) -> tuple[int, int, int]:
    outcome = answer["outcome"]
    return outcome["added"], outcome["replaced"], outcome["deleted"]


def add_pod_route(ns: FibNamespace, address: str) -> None:
    """A pod host route as percale.dataplane.pod_network makes it: dev <veth>, scope link, proto 201."""
    if ns.ip("link", "show", "pclpod", check=False).returncode != 0:
        ns.ip("link", "add", "pclpod", "type", "veth", "peer", "name", "eth0pod")
        ns.ip("link", "set", "pclpod", "up")
        ns.ip("link", "set", "eth0pod", "up")
    family = "-6" if ":" in address else "-4"
    ns.ip(family, "route", "add", address, "dev", "pclpod", "scope", "link",
          "proto", str(POD_PROTOCOL))


class RouteMonitor:
    """`ip monitor route` in the namespace, between two marker routes: every route the kernel
    added, replaced or deleted while it watched, as `ip` prints them."""

    markers = iter(range(1, 255))

    def __init__(self, ns: FibNamespace) -> None:
        self.ns = ns
        self.lines: list[str] = []
        self.proc = subprocess.Popen(["ip", "-n", ns.name, "monitor", "route"],
                                     stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.start, self.end = (f"198.51.100.{next(self.markers)}" for _ in range(2))
        self._mark(self.start)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _mark(self, dst: str) -> None:
        # `ip monitor` may not have subscribed yet when it is first marked (a busy machine):
        # mark again until it shows, for up to 5 s.
        deadline = time.monotonic() + 5
        while True:
            self.ns.ip("route", "replace", dst, "dev", "uplink", "proto", "static")
            retry = time.monotonic() + 0.5
            while time.monotonic() < retry:
                if any(line.startswith(dst + " ") for line in self.lines):
                    return
                time.sleep(0.02)
            assert time.monotonic() < deadline, "ip monitor printed nothing"
            self.ns.ip("route", "del", dst, "dev", "uplink")

    def stop(self) -> list[str]:
        """The events between the markers (a multipath route's nexthop lines included)."""
        self._mark(self.end)
        self.proc.terminate()
        self.proc.wait()
        self.reader.join(5)
        start = next(i for i, line in enumerate(self.lines) if line.startswith(self.start + " "))
        end = next(i for i, line in enumerate(self.lines) if line.startswith(self.end + " "))
        return self.lines[start + 1:end]


def test_one_route(ns, fib):
    answer = fib.call("apply", changes={"11.0.0.0/26": ["10.0.0.2"]})
    assert counts(answer) == (1, 0, 0) and answer["outcome"]["failed"] == {}
    [route] = ns.routes(BGP)
    assert route["dst"] == "11.0.0.0/26" and route["gateway"] == "10.0.0.2"
    assert route["dev"] == "uplink"


def test_thousand_routes(ns, fib):
    answer = fib.call("install", count=1000, base="11.0.0.0/8", prefixlen=26, via="10.0.0.2")
    assert counts(answer) == (1000, 0, 0)
    routes = table(ns)
    assert len(routes) == 1000 and set(routes.values()) == {"10.0.0.2"}
    assert "11.0.0.0/26" in routes and "11.0.62.64/26" in routes  # the first and the 1000th
    # Applying the same state again sends nothing: the kernel already holds it.
    again = fib.call("install", count=1000, base="11.0.0.0/8", prefixlen=26, via="10.0.0.2")
    assert counts(again) == (0, 0, 0)


def test_ecmp_and_next_hop_changes_never_remove_the_route(ns, fib):
    fib.call("apply", changes={"11.0.0.0/26": ["10.0.0.2"], "11.0.0.64/26": ["10.0.0.2"]})
    monitor = RouteMonitor(ns)
    steps = [["10.0.0.2", "10.0.0.3", "10.0.0.4"], ["10.0.0.3", "10.0.0.4"], ["10.0.0.5"]]
    for hops in steps:
        answer = fib.call("apply", changes={"11.0.0.0/26": hops})
        assert counts(answer) == (0, 1, 0)
        expected = hops if len(hops) > 1 else hops[0]
        assert table(ns) == {"11.0.0.0/26": expected, "11.0.0.64/26": "10.0.0.2"}
    events = monitor.stop()
    # Each change was one atomic replace: the kernel never deleted the route in between.
    assert not [line for line in events if line.startswith("Deleted")], events
    assert sum(line.startswith("11.0.0.0/26") for line in events) == 3, events


def test_withdraw(ns, fib):
    fib.call("apply", changes={"11.0.0.0/26": ["10.0.0.2"], "11.0.0.64/26": ["10.0.0.2"],
                               "11.0.0.128/26": ["10.0.0.2", "10.0.0.3"]})
    answer = fib.call("apply", changes={"11.0.0.0/26": None, "11.0.0.128/26": []})
    assert counts(answer) == (0, 0, 2)
    assert table(ns) == {"11.0.0.64/26": "10.0.0.2"}
    assert fib.call("desired")["desired"] == {"11.0.0.64/26": ["10.0.0.2"]}
    # Withdrawing what is not there is a no-op, not an error.
    assert counts(fib.call("apply", changes={"11.0.0.0/26": None, "12.0.0.0/8": None})) == (0, 0, 0)


def test_reconcile_repairs_its_own_routes_and_leaves_every_other_route_alone(ns, fib):
    fib.call("apply", changes={"11.0.0.0/26": ["10.0.0.2"], "11.0.0.64/26": ["10.0.0.2"],
                               "11.0.0.128/26": ["10.0.0.2", "10.0.0.3"],
                               "2001:db8:1::/64": ["2001:db8::2"]})
    # Others' routes, some for the very prefixes the FIB owns.
    add_pod_route(ns, "10.244.0.5/32")
    ns.ip("route", "add", "12.0.0.0/24", "via", "10.0.0.7", "proto", "static")
    ns.ip("route", "add", "11.0.0.64/26", "via", "10.0.0.8", "proto", "static", "metric", "10")
    ns.ip("route", "add", "13.0.0.0/24", "via", "10.0.0.2", "proto", str(BGP), "table", "100")
    others = (table(ns, 4, POD_PROTOCOL), table(ns, 4, "static"))
    other_table = table(ns, name="100")
    # Meddling with the FIB's own routes behind its back.
    ns.ip("route", "del", "11.0.0.0/26", "proto", str(BGP))
    ns.ip("route", "replace", "11.0.0.128/26", "via", "10.0.0.9", "proto", str(BGP))
    ns.ip("route", "add", "11.0.1.0/26", "via", "10.0.0.2", "proto", str(BGP))
    ns.ip("route", "add", "11.0.0.64/26", "via", "10.0.0.3", "proto", str(BGP), "metric", "50")
    ns.ip("-6", "route", "del", "2001:db8:1::/64", "proto", str(BGP))

    answer = fib.call("reconcile")
    # Restored 11.0.0.0/26 and the IPv6 route, fixed 11.0.0.128/26, deleted the extra route and
    # the second route of ours for 11.0.0.64/26 (another metric).
    assert counts(answer) == (2, 1, 2) and answer["outcome"]["failed"] == {}
    assert table(ns) == {"11.0.0.0/26": "10.0.0.2", "11.0.0.64/26": "10.0.0.2",
                         "11.0.0.128/26": ["10.0.0.2", "10.0.0.3"]}
    assert table(ns, 6) == {"2001:db8:1::/64": "2001:db8::2"}
    assert (table(ns, 4, POD_PROTOCOL), table(ns, 4, "static")) == others
    assert others == ({"10.244.0.5/32": "pclpod"},
                      {"12.0.0.0/24": "10.0.0.7", "11.0.0.64/26": "10.0.0.8"})
    assert table(ns, name="100") == other_table == {"13.0.0.0/24": "10.0.0.2"}
    assert counts(fib.call("reconcile")) == (0, 0, 0)


def test_a_pod_route_for_a_learned_prefix_is_never_touched(ns, fib):
    add_pod_route(ns, "10.244.0.5/32")
    add_pod_route(ns, "fd00:10:244::5/128")
    pods = (table(ns, 4, POD_PROTOCOL), table(ns, 6, POD_PROTOCOL))
    assert pods == ({"10.244.0.5/32": "pclpod"}, {"fd00:10:244::5/128": "pclpod"})
    answer = fib.call("apply", changes={"10.244.0.5/32": ["10.0.0.2"], "11.0.0.0/26": ["10.0.0.2"],
                                        "fd00:10:244::5/128": ["2001:db8::2"]})
    # The rest of the batch went in; the two pod prefixes were refused and reported.
    assert counts(answer) == (1, 0, 0)
    assert set(answer["outcome"]["failed"]) == {"10.244.0.5/32", "fd00:10:244::5/128"}
    assert "does not know as its own" in answer["outcome"]["failed"]["10.244.0.5/32"]
    assert (table(ns, 4, POD_PROTOCOL), table(ns, 6, POD_PROTOCOL)) == pods
    assert table(ns) == {"11.0.0.0/26": "10.0.0.2"} and table(ns, 6) == {}
    # The timer keeps trying, and keeps leaving the pod routes alone; a withdraw removes nothing.
    failed = fib.call("reconcile")["outcome"]["failed"]
    assert set(failed) == {"10.244.0.5/32", "fd00:10:244::5/128"}
    answer = fib.call("apply", changes={"10.244.0.5/32": None, "fd00:10:244::5/128": None})
    assert counts(answer) == (0, 0, 0)
    assert counts(fib.call("reconcile")) == (0, 0, 0)
    assert (table(ns, 4, POD_PROTOCOL), table(ns, 6, POD_PROTOCOL)) == pods


def test_a_withdraw_deletes_only_its_own_route_even_when_another_took_the_prefix(ns, fib):
    fib.call("apply", changes={"10.244.0.5/32": ["10.0.0.2"],
                               "fd00:10:244::5/128": ["2001:db8::2"]})
    # Behind the FIB's back its routes go and pod routes take their prefixes: the FIB still
    # believes it owns them, and its delete (rtm_protocol 202) must not hit the pod routes.
    ns.ip("route", "del", "10.244.0.5/32", "proto", str(BGP))
    ns.ip("-6", "route", "del", "fd00:10:244::5/128", "proto", str(BGP))
    add_pod_route(ns, "10.244.0.5/32")
    add_pod_route(ns, "fd00:10:244::5/128")
    answer = fib.call("apply", changes={"10.244.0.5/32": None, "fd00:10:244::5/128": None})
    assert counts(answer) == (0, 0, 2) and answer["outcome"]["failed"] == {}  # ESRCH: gone already
    assert table(ns, 4, POD_PROTOCOL) == {"10.244.0.5/32": "pclpod"}
    assert table(ns, 6, POD_PROTOCOL) == {"fd00:10:244::5/128": "pclpod"}


def test_a_restarted_fib_adopts_its_routes_without_touching_them(ns):
    routes = {f"11.0.{i // 4}.{(i % 4) * 64}/26": ["10.0.0.2"] for i in range(1000)}
    routes["11.1.0.0/26"] = ["10.0.0.2", "10.0.0.3"]
    routes["2001:db8:1::/64"] = ["2001:db8::2"]
    routes["2001:db8:2::/64"] = ["2001:db8::2", "2001:db8::3"]
    with ns.worker() as first:
        first.call("open")
        assert counts(first.call("apply", changes=routes)) == (1003, 0, 0)
    before = (ns.routes(BGP, 4), ns.routes(BGP, 6))
    assert len(before[0]) == 1001

    monitor = RouteMonitor(ns)
    with ns.worker() as second:
        assert second.call("open")["desired"] == 1003
        assert counts(second.call("reconcile")) == (0, 0, 0)
        # The RIB relearns the same routes: nothing to send.
        assert counts(second.call("apply", changes=routes)) == (0, 0, 0)
        assert (ns.routes(BGP, 4), ns.routes(BGP, 6)) == before
        assert monitor.stop() == []  # not one route deleted, added or replaced

        # End-of-RIB: what was not relearned goes, and only that.
        monitor = RouteMonitor(ns)
        relearned = {p: h for p, h in routes.items() if p not in ("11.0.0.0/26", "2001:db8:2::/64")}
        assert counts(second.call("replace_all", routes=relearned)) == (0, 0, 2)
        events = monitor.stop()
    deleted = [line for line in events if line.startswith("Deleted")]
    assert [line.split()[1] for line in deleted] == ["11.0.0.0/26", "2001:db8:2::/64"], events
    routes_added = [line for line in events if line[:1].strip() and not line.startswith("Deleted")]
    assert routes_added == [], events
    assert len(table(ns)) == 1000 and table(ns, 6) == {"2001:db8:1::/64": "2001:db8::2"}


def test_without_adoption_reconcile_removes_leftovers_only(ns):
    add_pod_route(ns, "10.244.0.5/32")
    with ns.worker() as first:
        first.call("open")
        first.call("apply", changes={"11.0.0.0/26": ["10.0.0.2"],
                                     "2001:db8:1::/64": ["2001:db8::2"]})
    with ns.worker() as second:
        assert second.call("open", adopt=False)["desired"] == 0
        assert counts(second.call("reconcile")) == (0, 0, 2)
    assert table(ns) == {} and table(ns, 6) == {}
    assert table(ns, 4, POD_PROTOCOL) == {"10.244.0.5/32": "pclpod"}


def test_ipv6(ns, fib):
    answer = fib.call("apply", changes={"2001:db8:1::/64": ["2001:db8::2"],
                                        "2001:db8:2::/64": ["2001:db8::2", "2001:db8::3"],
                                        "2001:db8:3::/64": ["2001:db8::3"]})
    assert counts(answer) == (3, 0, 0)
    assert table(ns, 6) == {"2001:db8:1::/64": "2001:db8::2",
                            "2001:db8:2::/64": ["2001:db8::2", "2001:db8::3"],
                            "2001:db8:3::/64": "2001:db8::3"}
    answer = fib.call("apply", changes={"2001:db8:1::/64": ["2001:db8::4", "2001:db8::5"],
                                        "2001:db8:2::/64": ["2001:db8::3"],
                                        "2001:db8:3::/64": None})
    assert counts(answer) == (0, 2, 1)
    assert table(ns, 6) == {"2001:db8:1::/64": ["2001:db8::4", "2001:db8::5"],
                            "2001:db8:2::/64": "2001:db8::3"}
    ns.ip("-6", "route", "del", "2001:db8:2::/64", "proto", str(BGP))
    ns.ip("-6", "route", "add", "2001:db8:9::/64", "via", "2001:db8::2", "proto", str(BGP))
    assert counts(fib.call("reconcile")) == (1, 0, 1)
    assert table(ns, 6) == {"2001:db8:1::/64": ["2001:db8::4", "2001:db8::5"],
                            "2001:db8:2::/64": "2001:db8::3"}


def test_onlink_and_a_refused_route_in_the_middle_of_a_batch(ns, fib):
    answer = fib.call("apply", changes={
        "11.0.0.0/26": ["10.0.0.2"],
        "11.0.0.64/26": ["192.168.77.1"],  # not on any connected subnet: the kernel refuses it
        "11.0.0.128/26": [{"gateway": "192.168.77.1", "dev": "uplink", "onlink": True}],
        "2001:db8:5::/64": [{"gateway": "2001:db9::1", "dev": "uplink", "onlink": True}],
    })
    assert counts(answer) == (3, 0, 0)
    assert list(answer["outcome"]["failed"]) == ["11.0.0.64/26"]
    assert "unreachable" in answer["outcome"]["failed"]["11.0.0.64/26"]
    onlink = {r["dst"]: r for r in ns.routes(BGP) + ns.routes(BGP, 6)}
    assert set(onlink) == {"11.0.0.0/26", "11.0.0.128/26", "2001:db8:5::/64"}
    assert "onlink" in onlink["11.0.0.128/26"]["flags"]
    assert "onlink" in onlink["2001:db8:5::/64"]["flags"]
    # Still desired, so the next reconcile tries again, and succeeds once the gateway is reachable.
    ns.ip("addr", "add", "192.168.77.2/24", "dev", "uplink")
    assert counts(fib.call("reconcile")) == (1, 0, 0)
    assert table(ns)["11.0.0.64/26"] == "192.168.77.1"


def test_invalid_input_changes_nothing(ns, fib):
    with pytest.raises(RuntimeError, match="InvalidRoute"):
        fib.call("apply", changes={"11.0.0.0/26": ["10.0.0.2"], "11.0.0.64/26": ["2001:db8::2"]})
    with pytest.raises(RuntimeError, match="InvalidRoute"):
        fib.call("apply", changes={"11.0.0.1/26": ["10.0.0.2"]})  # host bits set
    with pytest.raises(RuntimeError, match="InvalidRoute"):
        fib.call("apply", changes={"11.0.0.0/26": [{"gateway": "10.0.0.2", "onlink": True}]})
    assert table(ns) == {} and fib.call("desired")["desired"] == {}


def test_a_fib_owns_only_its_table(ns):
    ns.ip("route", "add", "11.0.0.0/26", "via", "10.0.0.2", "proto", str(BGP))
    with ns.worker() as fib:
        assert fib.call("open", table=100, adopt=False)["desired"] == 0
        assert counts(fib.call("apply", changes={"11.0.0.64/26": ["10.0.0.3"]})) == (1, 0, 0)
        assert counts(fib.call("reconcile")) == (0, 0, 0)
    assert table(ns) == {"11.0.0.0/26": "10.0.0.2"}
    assert table(ns, name="100") == {"11.0.0.64/26": "10.0.0.3"}


def test_every_refusal_is_reported_across_batches(ns, fib):
    # 6,000 routes fill several send() batches; refusals sit in the middle of batches and at the
    # very end (the message that carries the batch's ACK).
    prefixes = [f"11.{i // 1024}.{(i // 4) % 256}.{(i % 4) * 64}/26" for i in range(6000)]
    bad = {p for i, p in enumerate(prefixes) if i % 499 == 7 or i == len(prefixes) - 1}
    changes = {p: ["192.168.77.1" if p in bad else "10.0.0.2"] for p in prefixes}
    answer = fib.call("apply", changes=changes)
    assert counts(answer) == (6000 - len(bad), 0, 0)
    assert set(answer["outcome"]["failed"]) == bad and len(bad) == 14
    assert len(table(ns)) == 6000 - len(bad)
    # The same plan's size the other way: every batch of deletes goes through the sender thread
    # in order, and each route's outcome is still counted.
    gone = fib.call("apply", changes={p: None for p in prefixes})
    assert counts(gone) == (0, 0, 6000 - len(bad)) and gone["outcome"]["failed"] == {}
    assert table(ns) == {}


# -- recursive next hops: a next hop on no connected network goes through the route to it --------

@pytest.fixture
def routed_ns():
    """A namespace whose uplink also leads further: default routes via 10.0.0.254 and
    2001:db8::fe, as a node's default gateway is its rack's router."""
    with FibNamespace(prefix="pfr-") as namespace:
        namespace.ip("route", "add", "default", "via", "10.0.0.254")
        namespace.ip("-6", "route", "add", "default", "via", "2001:db8::fe")
        yield namespace


@pytest.fixture
def routed_fib(routed_ns):
    with routed_ns.worker() as worker:
        worker.call("open")
        yield worker


def test_a_next_hop_on_no_connected_network_goes_through_the_route_to_it(routed_ns, routed_fib):
    answer = routed_fib.call("apply", changes={
        "11.0.0.0/26": ["172.16.5.5"],  # a node in another subnet
        "11.0.0.64/26": ["10.0.0.2"],  # a node on this one
        "11.0.0.128/26": ["10.0.0.3", "172.16.5.5"],
        "2001:db8:1::/64": ["2001:db9::5"],
    })
    assert counts(answer) == (4, 0, 0) and answer["outcome"]["failed"] == {}
    assert table(routed_ns) == {"11.0.0.0/26": "10.0.0.254", "11.0.0.64/26": "10.0.0.2",
                                "11.0.0.128/26": ["10.0.0.254", "10.0.0.3"]}
    assert table(routed_ns, 6) == {"2001:db8:1::/64": "2001:db8::fe"}
    assert {r["dev"] for r in routed_ns.routes(BGP) + routed_ns.routes(BGP, 6)
            if "dev" in r} == {"uplink"}
    # The desired state keeps BGP's next hops; what went in is the kernel's business.
    assert routed_fib.call("desired")["desired"]["11.0.0.0/26"] == ["172.16.5.5"]
    # Known now: more routes through it go in at once, and nothing is sent again.
    answer = routed_fib.call("apply", changes={"11.0.1.0/26": ["172.16.5.5"],
                                               "11.0.0.0/26": ["172.16.5.5"]})
    assert counts(answer) == (1, 0, 0) and answer["outcome"]["failed"] == {}
    assert counts(routed_fib.call("reconcile")) == (0, 0, 0)


def test_the_timed_check_follows_the_route_to_the_next_hop(routed_ns, routed_fib):
    routed_fib.call("apply", changes={"11.0.0.0/26": ["172.16.5.5"],
                                      "2001:db8:1::/64": ["2001:db9::5"]})
    monitor = RouteMonitor(routed_ns)
    routed_ns.ip("route", "replace", "default", "via", "10.0.0.253")
    assert counts(routed_fib.call("reconcile")) == (0, 1, 0)
    assert table(routed_ns)["11.0.0.0/26"] == "10.0.0.253"
    # A more specific route, learned otherwise, wins as it does for the kernel.
    routed_ns.ip("route", "add", "172.16.0.0/16", "via", "10.0.0.9", "proto", "static")
    routed_ns.ip("-6", "route", "add", "2001:db9::/32", "via", "2001:db8::9", "proto", "static")
    assert counts(routed_fib.call("reconcile")) == (0, 2, 0)
    assert table(routed_ns)["11.0.0.0/26"] == "10.0.0.9"
    assert table(routed_ns, 6)["2001:db8:1::/64"] == "2001:db8::9"
    # The next hop's network becomes connected: the route goes to it, as any direct one.
    routed_ns.ip("addr", "add", "172.16.5.1/24", "dev", "uplink")
    assert counts(routed_fib.call("reconcile")) == (0, 1, 0)
    assert table(routed_ns)["11.0.0.0/26"] == "172.16.5.5"
    events = monitor.stop()
    # Every change was one replace: the route never left the kernel.
    assert not [line for line in events if line.startswith("Deleted 11.")], events


def test_an_unresolvable_next_hop_keeps_its_routes_out_and_no_other(routed_ns, routed_fib):
    routed_fib.call("apply", changes={"11.0.0.0/26": ["172.16.5.5"],
                                      "11.0.0.128/26": ["10.0.0.3", "172.16.5.5"],
                                      "2001:db8:1::/64": ["2001:db9::5"]})
    routed_ns.ip("route", "del", "default")
    routed_ns.ip("-6", "route", "del", "default")
    answer = routed_fib.call("reconcile")
    # Routes through it leave the kernel (it is unreachable now); a multipath route keeps the
    # path that still leads somewhere.
    assert counts(answer) == (0, 1, 2)
    assert set(answer["outcome"]["failed"]) == {"11.0.0.0/26", "2001:db8:1::/64"}
    assert "172.16.5.5 unreachable" in answer["outcome"]["failed"]["11.0.0.0/26"]
    assert table(routed_ns) == {"11.0.0.128/26": "10.0.0.3"} and table(routed_ns, 6) == {}
    # New routes through it fail alone, without a message to the kernel; the others go in.
    answer = routed_fib.call("apply", changes={"11.0.1.0/26": ["172.16.5.5"],
                                               "11.0.2.0/26": ["10.0.0.2"]})
    assert counts(answer) == (1, 0, 0) and list(answer["outcome"]["failed"]) == ["11.0.1.0/26"]
    # Still desired: they come back with a route to the next hop.
    routed_ns.ip("route", "add", "default", "via", "10.0.0.254")
    routed_ns.ip("-6", "route", "add", "default", "via", "2001:db8::fe")
    answer = routed_fib.call("reconcile")
    assert counts(answer) == (3, 1, 0) and answer["outcome"]["failed"] == {}
    assert table(routed_ns) == {"11.0.0.0/26": "10.0.0.254", "11.0.1.0/26": "10.0.0.254",
                                "11.0.0.128/26": ["10.0.0.254", "10.0.0.3"],
                                "11.0.2.0/26": "10.0.0.2"}
    assert table(routed_ns, 6) == {"2001:db8:1::/64": "2001:db8::fe"}


def test_a_next_hop_that_never_resolved_fails_with_the_kernels_reason(ns, fib):
    # No route leads to it at all (this namespace has no default route).
    answer = fib.call("apply", changes={"11.0.0.0/26": ["172.16.5.5"],
                                        "2001:db8:1::/64": ["2001:db9::5"]})
    assert counts(answer) == (0, 0, 0)
    failed = answer["outcome"]["failed"]
    assert "Nexthop has invalid gateway" in failed["11.0.0.0/26"]
    assert "No route to host" in failed["2001:db8:1::/64"]
    assert table(ns) == {} and table(ns, 6) == {}


def test_never_through_its_own_routes_nor_vxlans(routed_ns, routed_fib):
    # BGP's own route to the next hop's network, a VXLAN route to it, and a route whose
    # prefix holds its own next hop (installing it through itself would loop).
    routed_ns.ip("route", "add", "172.16.5.0/28", "via", "10.0.0.8", "proto",
                 str(RouteProtocol.VXLAN))
    answer = routed_fib.call("apply", changes={"172.16.5.0/24": ["10.0.0.7"],
                                               "172.16.0.0/12": ["172.16.5.5"],
                                               "11.0.0.0/26": ["172.16.5.5"],
                                               "2001:db9::/32": ["2001:db9::5"]})
    assert counts(answer) == (4, 0, 0) and answer["outcome"]["failed"] == {}
    assert table(routed_ns) == {"172.16.5.0/24": "10.0.0.7", "172.16.0.0/12": "10.0.0.254",
                                "11.0.0.0/26": "10.0.0.254"}
    assert table(routed_ns, 6) == {"2001:db9::/32": "2001:db8::fe"}
    routed_ns.ip("route", "replace", "default", "via", "10.0.0.253")
    assert counts(routed_fib.call("reconcile")) == (0, 2, 0)
    assert table(routed_ns)["11.0.0.0/26"] == "10.0.0.253"


def test_a_restarted_fib_keeps_its_resolved_routes_untouched(routed_ns):
    routes = {"11.0.0.0/26": ["172.16.5.5"], "2001:db8:1::/64": ["2001:db9::5"],
              "11.0.0.64/26": ["10.0.0.2"]}
    with routed_ns.worker() as first:
        first.call("open")
        assert counts(first.call("apply", changes=routes)) == (3, 0, 0)
    before = (routed_ns.routes(BGP, 4), routed_ns.routes(BGP, 6))
    monitor = RouteMonitor(routed_ns)
    with routed_ns.worker() as second:
        second.call("open")
        # The RIB relearns the same routes: refused as they are, resolved, found in place.
        answer = second.call("apply", changes=routes)
        assert counts(answer) == (0, 0, 0) and answer["outcome"]["failed"] == {}
        assert counts(second.call("replace_all", routes=routes)) == (0, 0, 0)
        assert monitor.stop() == []
    assert (routed_ns.routes(BGP, 4), routed_ns.routes(BGP, 6)) == before


# The FIB in the namespace, driven by a script: it follows route notifications, which the JSON
# worker has no command for. Each step changes the namespace's routes and prints what
# follow_underlay() did once the FIB's socket said so, and the routes of protocol 202.
FOLLOWING = r"""
import ipaddress, json, select, subprocess, sys
from percale.dataplane.fib import FIB, NextHop

def step(command):
    if command:
        subprocess.run(["ip", *command.split()], check=True)
    readable = select.select([fib.underlay_events], [], [], 1.0)[0]
    outcome = fib.follow_underlay() if readable else None
    routes = subprocess.run(["ip", "-j", "route", "show", "proto", "202"], check=True,
                            capture_output=True, text=True).stdout
    print(json.dumps({
        "woken": bool(readable),
        "counts": outcome and [outcome.added, outcome.replaced, outcome.deleted],
        "failed": outcome and sorted(map(str, outcome.failed)),
        "routes": {r["dst"]: r.get("gateway") or sorted(h["gateway"] for h in r["nexthops"])
                   for r in json.loads(routes)}}), flush=True)

fib = FIB()
direct = {ipaddress.ip_network(f"11.1.{i // 4}.{i % 4 * 64}/26"): [NextHop("10.0.0.2")]
          for i in range(1000)}
fib.apply(direct)
step("")  # nothing resolved yet: the FIB does not listen
fib.apply({ipaddress.ip_network("11.0.0.0/26"): [NextHop("172.16.5.5")]})
step("")  # its own route, written while it listens, wakes nothing
fib.apply({p: None for p in direct})
step("")  # nor do 1,000 of them withdrawn
for command in sys.argv[1:]:
    step(command)
"""


def settle(ns: FibNamespace) -> None:
    """Until the namespace's links have their IPv6 link-local addresses (duplicate address
    detection, ~2 s after a link comes up, notifies address and route changes of its own)."""
    deadline = time.monotonic() + 10
    while ns.ip("-6", "addr", "show", "tentative").stdout.strip():
        assert time.monotonic() < deadline, "IPv6 addresses still tentative after 10 s"
        time.sleep(0.1)
    time.sleep(0.3)


def test_a_change_of_the_route_to_the_next_hop_is_followed_at_once(routed_ns):
    settle(routed_ns)
    steps = ["route replace default via 10.0.0.253",
             "route add 172.16.0.0/16 via 10.0.0.9 proto static",
             "route add 172.16.5.0/24 via 10.0.0.8 proto 204",  # VXLAN's: not even woken
             "addr add 172.16.5.1/24 dev uplink",
             "addr del 172.16.5.1/24 dev uplink",
             "route del 172.16.0.0/16",
             "route del default",
             "route add default via 10.0.0.254"]
    run = subprocess.run(["ip", "netns", "exec", routed_ns.name, sys.executable, "-c", FOLLOWING,
                          *steps], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr
    seen = [json.loads(line) for line in run.stdout.splitlines()]
    quiet = [(s["woken"], len(s["routes"])) for s in seen[:3]]
    assert quiet == [(False, 1000), (False, 1001), (False, 1)]
    followed = [(s["woken"], s["counts"], s["routes"].get("11.0.0.0/26")) for s in seen[3:]]
    assert followed == [
        (True, [0, 1, 0], "10.0.0.253"),
        (True, [0, 1, 0], "10.0.0.9"),
        (False, None, "10.0.0.9"),
        (True, [0, 1, 0], "172.16.5.5"),
        (True, [0, 1, 0], "10.0.0.9"),
        (True, [0, 1, 0], "10.0.0.253"),
        (True, [0, 0, 1], None),
        (True, [1, 0, 0], "10.0.0.254"),
    ], run.stdout
    assert seen[-2]["failed"] == ["11.0.0.0/26"]
