"""Waiting on a condition in tests: poll it, and fail the test if it does not come in time."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """condition()'s first truthy value, polled every interval seconds; after timeout seconds, a failed
    test saying what was awaited (e.g. "a child holding a file")."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
