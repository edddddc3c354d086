"""The BGP FIB (percale.dataplane.fib) against the real kernel: each test makes its own network
namespace and runs the FIB inside it through tests/helpers/fib_worker.py, then reads the kernel
back with `ip -json route show proto 202`."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from percale.dataplane.route_owners import RouteProtocol
from tests.helpers.fib_worker import FibNamespace

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
