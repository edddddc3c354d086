"""A BGPPeer's password, read from the node's mounted secrets: one that cannot be read, or that
ExaBGP's configuration cannot hold, costs that session its password and nothing else. It
used to raise, which kept every session of the node, mesh included, from being configured."""

from __future__ import annotations

import pytest

from percale.bgpd.agent import read_secret
from percale.bgpd.peering import SecretRef

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
