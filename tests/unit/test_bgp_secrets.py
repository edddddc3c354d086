"""A BGPPeer's password, read from the node's mounted secrets: one that cannot be read, or that
ExaBGP's configuration cannot hold, costs that session its password and nothing else. It
used to raise, which kept every session of the node, mesh included, from being configured."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from percale.bgpd import agent as agent_module
from percale.bgpd.agent import BGPAgent
from percale.bgpd.secret_sources import read_secret, secret_version
from percale.bgpd.peering import SecretRef
from percale.datastore import MemoryDatastore
from percale.datastore.cache import Cache
from tests.helpers.bgp_lab import resource

pytestmark = pytest.mark.unit


def test_a_mounted_secret_is_read_without_its_line_break(tmp_path):
    (tmp_path / "bgp").mkdir()
    (tmp_path / "bgp" / "tor").write_text("s3cr3t\n")
    assert read_secret(tmp_path, SecretRef("bgp", "tor")) == "s3cr3t"
    assert read_secret(tmp_path, None) is None


@pytest.mark.parametrize("content, logged", [
    (None, "cannot read"),                      # no such secret mounted
    ("", "empty"),
    ('pass"word', "double quote"),
    ("line one\nline two", "line break"),
    ("it's", "single quote"),                   # ExaBGP's tokenizer switches quoting at it
    ("back\\slash", "backslash"),                # ... and unescapes at it
    ("pässwörd", "outside ASCII"),              # ExaBGP encodes it as ASCII and dies at start
    ("tab\there", "control character"),
    ("a" * 81, "at most 80 characters"),        # the kernel's TCP_MD5SIG key length
    (b"\xff\xfe", "cannot read"),
])
def test_a_password_that_cannot_be_used_leaves_the_session_without_one(tmp_path, caplog, content, logged):
    (tmp_path / "bgp").mkdir()
    if isinstance(content, bytes):
        (tmp_path / "bgp" / "tor").write_bytes(content)
    elif content is not None:
        (tmp_path / "bgp" / "tor").write_text(content)
    assert read_secret(tmp_path, SecretRef("bgp", "tor")) is None
    assert logged in caplog.text and "'bgp'" in caplog.text


def test_no_secrets_directory_is_logged_not_raised(caplog):
    assert read_secret(None, SecretRef("bgp", "tor")) is None
    assert "no secrets directory" in caplog.text


# -- a secret that changes while the agent runs ------------------------------------------------


def mount_secret(secrets_dir: Path, name: str, files: dict[str, str], version: int) -> None:
    """Write a secret as the kubelet mounts it, or update it as the kubelet does: the keys in a
    directory of their own, `..data` pointing at it (swapped by an atomic rename), and each key
    a symlink through `..data`. The key's path never changes; what it resolves to does."""
    secret = secrets_dir / name
    data = secret / f"..2026_{version:02d}"
    data.mkdir(parents=True)
    for key, value in files.items():
        (data / key).write_text(value)
    (secret / "..data_tmp").symlink_to(data.name)
    os.replace(secret / "..data_tmp", secret / "..data")
    for key in files:
        if not (secret / key).is_symlink():
            (secret / key).symlink_to(f"..data/{key}")


def test_a_secret_swapped_as_the_kubelet_does_is_seen_to_change(tmp_path):
    ref = SecretRef("bgp", "tor")
    assert secret_version(tmp_path, ref) is None  # not mounted (yet)
    mount_secret(tmp_path, "bgp", {"tor": "first-pw\n"}, 1)
    first = secret_version(tmp_path, ref)
    assert first is not None and first == secret_version(tmp_path, ref)
    mount_secret(tmp_path, "bgp", {"tor": "second-pw\n"}, 2)
    assert secret_version(tmp_path, ref) != first
    assert read_secret(tmp_path, ref) == "second-pw"


class RecordedSpeaker:
    """What the agent asks of ExaBGP, recorded: each configuration it starts or reloads with."""

    def __init__(self, speaker):
        self.configs: list[str] = []
        speaker.start = self.record
        speaker.reload = self.record
        speaker.wait_connected = self.nothing
        speaker.supervise = self.forever

    async def record(self, config: str) -> None:
        self.configs.append(config)

    async def nothing(self, *args) -> None:
        pass

    async def forever(self) -> None:
        await asyncio.Event().wait()

    def md5_lines(self) -> list[str]:
        return [line.strip() for line in self.configs[-1].splitlines() if "md5" in line]


async def test_a_rotated_or_late_secret_reaches_exabgps_configuration(tmp_path, monkeypatch):
    """A BGPPeer's password from a mounted secret: the agent read it only when the datastore
    changed, so a rotated secret, or one mounted after the BGPPeer was created, never reached
    ExaBGP until something unrelated changed. Calico's confd watches the secrets."""
    monkeypatch.setattr(agent_module, "SECRET_CHECK_SECONDS", 0.05)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    store = MemoryDatastore()
    await store.create(resource("Node", "a", {"bgp": {"ipv4Address": "10.0.0.1/24"}}))
    await store.create(resource("BGPPeer", "tor", {
        "peerIP": "10.0.0.9", "asNumber": 64600,
        "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}}}))
    cache = Cache(store, node="a")
    agent = BGPAgent(cache, "a", tmp_path / "bgp", secrets_dir=secrets)
    exabgp = RecordedSpeaker(agent.speaker)
    following = asyncio.ensure_future(cache.run())
    await cache.wait_synced()
    loops = [asyncio.ensure_future(loop) for loop in (agent._configuring(), agent._housekeeping())]
    agent._configure_due.set()

    async def configured_with(lines: list[str]) -> None:
        for _ in range(100):
            if exabgp.configs and exabgp.md5_lines() == lines:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"ExaBGP's md5 lines stayed {exabgp.md5_lines()}, not {lines}")

    try:
        await configured_with([])  # no such secret mounted yet: no password
        mount_secret(secrets, "bgp", {"tor": "first-pw\n"}, 1)
        await configured_with(['md5-password "first-pw";'])
        mount_secret(secrets, "bgp", {"tor": "second-pw\n"}, 2)
        await configured_with(['md5-password "second-pw";'])
        # Written in place too (a hostPath, say): the content is looked at, not only the path.
        (secrets / "bgp" / "..2026_02" / "tor").write_text("third-pw\n")
        await configured_with(['md5-password "third-pw";'])
        # Nothing changed: nothing configured again.
        count = len(exabgp.configs)
        await asyncio.sleep(0.3)
        assert len(exabgp.configs) == count
    finally:
        for task in (*loops, following):
            task.cancel()
        await asyncio.gather(*loops, following, return_exceptions=True)
