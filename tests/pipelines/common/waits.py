"""Deadline waits for the pipeline tests: a test that waits for another process (a Ray actor, a
job thread) polls a condition until a deadline and fails with what it waited for, instead of
sleeping a guessed time or spinning forever."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout: float = 120.0, poll: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy and return that.

    Raises:
        TimeoutError: ``condition`` stayed falsy for ``timeout`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(poll)
    return value
