"""The host MTU decided again while the agent runs (node/host_mtu.py): a change reaches whoever
sizes from it, once; a failed decision changes nothing and is said once per reason. What
decides it is percale-node's own start-up decision (tests/unit/test_node_flags.py); here it is a
stand-in returning what the test sets."""

from __future__ import annotations

import logging

import pytest

from percale.node.host_mtu import HostMTUFollower
from percale.vxlan.plan import MTUTooSmall

pytestmark = pytest.mark.unit


class Decision:
    def __init__(self, value: int) -> None:
        self.value: int | Exception = value

    async def __call__(self) -> int:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


async def test_a_changed_host_mtu_reaches_every_user_once(caplog):
    decision, told = Decision(1500), []
    follower = HostMTUFollower(decision, 1500, [told.append, lambda mtu: told.append(-mtu)])
    await follower.check()
    assert told == []
    decision.value = 1400  # the node's address moved to an interface of MTU 1400
    await follower.check()
    await follower.check()
    assert told == [1400, -1400] and follower.current == 1400
    assert "the host MTU changed from 1500 to 1400" in caplog.text


async def test_a_failed_decision_keeps_the_mtu_and_is_said_once(caplog):
    caplog.set_level(logging.WARNING, logger="percale.node")
    decision, told = Decision(1500), []
    follower = HostMTUFollower(decision, 1500, [told.append])
    decision.value = MTUTooSmall("eth1, which holds this node's address: host MTU 600 is below 646")
    await follower.check()
    await follower.check()
    assert told == [] and follower.current == 1500
    said = [r for r in caplog.records if "checking the host MTU again failed" in r.getMessage()]
    assert len(said) == 1 and "keeping 1500" in said[0].getMessage()
    decision.value = 1450
    await follower.check()
    assert told == [1450]
