"""percale's ExaBGP speaker against a real GoBGP peer: sessions come up, percale's routes reach
the peer, the peer's routes reach percale, and ExaBGP's configuration validates."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from percale.bgpd.exabgp_config import Neighbor, render
from percale.bgpd.speaker import ExaBGP, SpeakerError
from tests.helpers.bgp_lab import Lab, wait_for

pytestmark = pytest.mark.interop

EXABGP = str(Path(sys.executable).parent / "exabgp")


def test_rendered_configuration_validates(tmp_path):
    neighbors = [
        Neighbor("Mesh_10_0_0_2", 4, "10.0.0.2", 179, 64512, 64512, "10.0.0.1", passive=False),
        Neighbor("Mesh_10_0_0_3", 4, "10.0.0.3", 179, 64512, 64512, "10.0.0.1", passive=True),
        Neighbor("Node_192_0_2_1_port_1179", 4, "192.0.2.1", 1179, 64600, 64512, "10.0.0.1",
                 passive=False, password="s3cr3t", ttl_security=1, restart_time=300),
        Neighbor("Global_fd00__1", 6, "fd00::1", 179, 64512, 64512, "fd00::2", passive=False),
    ]
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render("10.0.0.1", neighbors, f"{sys.executable} -m percale.bgpd.bridge /tmp/x.sock"))
    done = subprocess.run([EXABGP, "validate", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = conf.read_text()
    assert "manual-eor true;" in text and "md5-password \"s3cr3t\";" in text
    assert "incoming-ttl 255;" in text and "connect 1179;" in text
    assert "passive true;\n    listen 179;" in text
    assert text.count("listen 179;") == 4  # every session with a local address accepts connections


def test_the_widest_password_percale_passes_on_is_one_exabgp_takes(tmp_path):
    """80 characters, the most the kernel holds, with every character ExaBGP's configuration
    gives a meaning to outside quotes (password_problem refuses those it cannot quote)."""
    password = ("#;{}[], =" * 9)[:80]
    neighbor = Neighbor("Global_10_0_0_2", 4, "10.0.0.2", 179, 64512, 64512, "10.0.0.1",
                        passive=False, password=password)
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render("10.0.0.1", [neighbor], f"{sys.executable} -m percale.bgpd.bridge /tmp/x.sock"))
    done = subprocess.run([EXABGP, "validate", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'md5-password "{password}";' in conf.read_text()

def test_times_beyond_what_bgp_carries_are_sent_as_the_longest_it_can(tmp_path):
    """A restart time over graceful restart's 12 bits (ExaBGP would send 5000 s as 904 s), a
    keepalive whose hold time passes the OPEN's 16 bits (ExaBGP refuses the whole file)."""
    long = Neighbor("Global_10_0_0_2", 4, "10.0.0.2", 179, 64512, 64512, "10.0.0.1",
                    passive=False, restart_time=5000, keepalive_time=30000)
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render("10.0.0.1", [long], f"{sys.executable} -m percale.bgpd.bridge /tmp/x.sock"))
    done = subprocess.run([EXABGP, "validate", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = conf.read_text()
    assert "graceful-restart 4095;" in text and "hold-time 65535;" in text


async def speaker_with_gobgp(lab: Lab, events: list[dict]) -> tuple[ExaBGP, str]:
    """percale's ExaBGP in the lab's node, its session with the lab's GoBGP Established; the
    events it reports are appended to `events`. Returns the speaker and its configuration."""
    speaker = ExaBGP(lab.workdir / "percale", lambda line: events.append(json.loads(line)),
                     netns=lab.a)
    neighbor = Neighbor("Global_10_99_0_3", 4, "10.99.0.3", 179, 64512, 64512, "10.99.0.1",
                        passive=False)
    config = speaker.render("10.99.0.1", [neighbor])
    await speaker.start(config)
    await speaker.wait_connected()
    for _ in range(300):
        if any(e.get("type") == "state" and e["neighbor"].get("state") == "up" for e in events):
            return speaker, config
        await asyncio.sleep(0.1)
    await speaker.stop()
    raise AssertionError(f"the session never came up: {events[-3:]}")


def test_routes_flow_both_ways_with_gobgp():
    lab = Lab().up()
    events: list[dict] = []
    try:
        lab.gobgp([("10.99.0.1", 64512)])

        async def scenario():
            speaker, _ = await speaker_with_gobgp(lab, events)
            supervisor = asyncio.create_task(speaker.supervise())
            try:
                await speaker.send("announce route 10.244.1.0/26 next-hop self")
                await speaker.send("announce eor ipv4 unicast")
                with pytest.raises(SpeakerError):
                    await speaker.send("announce route 10.244.9.0/26 next-hop self bogus-keyword 1")
                assert await asyncio.to_thread(
                    wait_for, lambda: "10.244.1.0/26" in lab.gobgp_rib(), 10)
                path = lab.gobgp_rib()["10.244.1.0/26"][0]
                assert any(a.get("nexthop") == "10.99.0.1" for a in path["attrs"])

                lab.exec(lab.b, "gobgp", "global", "rib", "add", "-a", "ipv4", "10.244.2.0/26",
                         "nexthop", "10.99.0.3")
                for _ in range(100):
                    learned = [e for e in events if e.get("type") == "update"
                               and "announce" in e["neighbor"]["message"].get("update", {})]
                    if learned:
                        break
                    await asyncio.sleep(0.1)
                announce = learned[0]["neighbor"]["message"]["update"]["announce"]["ipv4 unicast"]
                # NLRIs as bare strings: percale runs ExaBGP with api.compact (exabgp_config.environment)
                assert announce == {"10.99.0.3": ["10.244.2.0/26"]}
            finally:
                await speaker.stop()
                supervisor.cancel()

        asyncio.run(scenario())
    finally:
        lab.down()


def _wakeups(pid: int) -> int:
    """How often ExaBGP's main thread has gone to sleep and been woken (voluntary switches)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_an_idle_exabgp_sleeps_and_still_serves_its_session():
    """bgpd/exabgp_pace.py: once every session is established and nothing is pending, the
    reactor stops waking on its 50 ms beat; a reload signal, an API command and the peer's
    routes still reach it at once."""
    lab = Lab().up()
    events: list[dict] = []
    try:
        lab.gobgp([("10.99.0.1", 64512)])

        async def scenario():
            speaker, config = await speaker_with_gobgp(lab, events)
            try:
                cmdline = Path(f"/proc/{speaker.process.pid}/cmdline").read_bytes()
                assert b"exabgp_pace.py" in cmdline, cmdline
                await asyncio.sleep(1.5)
                before = _wakeups(speaker.process.pid)
                await asyncio.sleep(3)
                woke = _wakeups(speaker.process.pid) - before
                # The 50 ms beat would be 60 wake-ups; idle it is one a second.
                assert woke <= 12, woke
                await speaker.reload(config)  # confirmed in ExaBGP's log
                await speaker.send("announce route 10.244.1.0/26 next-hop self")
                assert await asyncio.to_thread(wait_for, lambda: "10.244.1.0/26" in lab.gobgp_rib(), 10)
            finally:
                await speaker.stop()

        asyncio.run(scenario())
    finally:
        lab.down()
