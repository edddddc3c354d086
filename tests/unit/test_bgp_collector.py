"""bgpd/collector.py: pauses of the cyclic garbage collector, counted across callers and
threads; it comes back on only when the last is over, and only if it was on before."""

from __future__ import annotations

import gc
import threading

import pytest

from percale.bgpd import collector

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def collector_on():
    gc.enable()
    yield
    gc.enable()


def test_the_collector_is_off_while_any_pause_is_held():
    collector.pause()
    with collector.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the first pause still holds
    collector.resume()
    assert gc.isenabled()


def test_pauses_from_two_threads_overlap():
    entered, release = threading.Event(), threading.Event()

    def batch():
        with collector.paused():
            entered.set()
            release.wait(5)

    worker = threading.Thread(target=batch)
    worker.start()
    entered.wait(5)
    with collector.paused():
        pass
    assert not gc.isenabled()  # the worker's pause outlives this one
    release.set()
    worker.join(5)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with collector.paused():
        pass
    assert not gc.isenabled()
