"""A pytest plugin that makes the test process slow to wake: every time.sleep lasts at least 0.2 s.

    PYTHONPATH=tests pytest -p slow_wake tests/test_resume.py

A test that polls for a file and then signals a run races the run; this plugin makes the test side of
such a race lose every time (issue 25). The kdrun subprocesses are not affected. Tests that are
deterministic pass with it.
"""

from __future__ import annotations

import time

_sleep = time.sleep


def _slow_sleep(seconds: float) -> None:
    _sleep(max(seconds, 0.2))


def pytest_configure(config) -> None:
    time.sleep = _slow_sleep
