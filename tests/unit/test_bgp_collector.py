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


def test_a_pause_that_never_ends_still_collects_now_and_then(monkeypatch):
    monkeypatch.setattr(collector, "MAX_PAUSE_SECONDS", 0.0)
    collections = []
    callback = lambda phase, info: phase == "stop" and collections.append(info["generation"])
    gc.callbacks.append(callback)
    try:
        with collector.paused():
            with collector.paused():  # a burst that goes on: the young are collected
                assert collections and max(collections) <= 1
            assert not gc.isenabled()
    finally:
        gc.callbacks.remove(callback)
    assert gc.isenabled()
