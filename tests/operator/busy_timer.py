"""percale-operator's module with one more timer on the Installation, whose handler is still
running when the test deletes the Installation: a kopf module for tests/operator/
test_operator_deletion.py. It signals each start by touching the file PERCALE_TEST_MARK names."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import kopf

from percale.installation import model
from percale.installation.operator import *  # noqa: F401,F403  the real handlers and settings

BUSY = 3.0  # seconds each run of the timer takes


@kopf.timer(model.GROUP, model.VERSION, model.PLURAL, interval=BUSY + 1)
async def busy(**_: Any) -> None:
    Path(os.environ["PERCALE_TEST_MARK"]).touch()
    await asyncio.sleep(BUSY)
