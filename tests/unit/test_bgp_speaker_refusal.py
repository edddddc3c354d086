"""A configuration ExaBGP refuses (bgpd/speaker.py): its reload used to be confirmed by
"performing reload" alone, so a refused one (two neighbours at one address: "duplicate peer
definition") passed for applied, nothing was logged, and the refused file stayed for the next
ExaBGP to start with, which then exited 1 again and again with every session of the node down.
Now the refusal is logged as an error with ExaBGP's reason, and the file goes back to the
configuration ExaBGP runs."""

from __future__ import annotations

import logging

import pytest

from percale.bgpd.speaker import ExaBGP, refusal_reason

pytestmark = pytest.mark.unit

# ExaBGP 5.0.15's log of a refused reload (its reason is one multi-line message).
REFUSED = b"""\
00:16:56 13936  configuration   performing reload of exabgp 5.0.15
00:16:56 13936  configuration   could not load/reload configuration
00:16:56 13936  configuration   
00:16:56 13936  configuration   syntax error in section neighbor
00:16:56 13936  configuration   line 53: }
00:16:56 13936  configuration   
00:16:56 13936  configuration   duplicate peer definition 10.0.0.9
00:16:57 13936  reactor         connected to peer-1 with outgoing-1 10.0.0.1-10.0.0.2
"""
TAKEN = b"""\
00:17:56 13936  configuration   performing reload of exabgp 5.0.15
00:17:56 13936  reactor         loaded new configuration successfully
"""


def test_the_reason_is_read_from_exabgps_configuration_lines():
    assert refusal_reason(REFUSED) == (
        "syntax error in section neighbor; line 53: }; duplicate peer definition 10.0.0.9")
    assert refusal_reason(TAKEN) is None
    assert refusal_reason(b"") is None


async def test_a_refused_reload_is_logged_and_the_file_keeps_what_exabgp_runs(tmp_path, caplog):
    speaker = ExaBGP(tmp_path, lambda line: None, bridge=["true"])
    speaker._accepted_config = "accepted\n"
    speaker._write_config("refused\n")
    speaker.log_path.write_bytes(TAKEN)
    mark = speaker._log_size()
    with open(speaker.log_path, "ab") as log_file:
        log_file.write(REFUSED)
    reason = await speaker._reload_outcome(mark)
    assert reason and "duplicate peer definition 10.0.0.9" in reason
    with caplog.at_level(logging.ERROR, logger="percale.bgpd.speaker"):
        speaker._refused("refused\n", reason)
    assert "refused the new BGP configuration" in caplog.text
    assert "duplicate peer definition 10.0.0.9" in caplog.text
    # An ExaBGP started again (after a crash) comes up with what ran, not with what it refused.
    assert speaker.config_path.read_text() == "accepted\n"


async def test_a_taken_reload_and_one_not_performed_are_told_apart(tmp_path):
    speaker = ExaBGP(tmp_path, lambda line: None, bridge=["true"])
    speaker.log_path.write_bytes(b"")
    assert await speaker._reload_outcome(0) is None  # not performed: signalled again
    speaker.log_path.write_bytes(TAKEN)
    assert await speaker._reload_outcome(0) == ""
