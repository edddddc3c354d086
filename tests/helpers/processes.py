"""Stopping a process a test started: asked to stop (SIGTERM), killed if it does not within the
timeout, and always waited for, so it leaves no zombie."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # Popen's own: no signal to a pid it has already reaped
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
