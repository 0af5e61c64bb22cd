"""The one way tests wait for a condition: poll it, and say whether it held in time
(callers assert on the answer with their own message: ``assert wait_until(...), "why"``);
and a clock the test moves by hand."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 30, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds; whether it did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class Clock:
    """A monotonic clock that stands still until the test moves ``now`` on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
