"""A viewer's window size on its way to the guest: clamped by the Display, debounced
before QEMU's SetUIInfo (a dragged window or a hostile page asks many times a second)."""

from __future__ import annotations

import pytest

from saffron.display import (
    MAX_GUEST_HEIGHT,
    MAX_GUEST_WIDTH,
    MIN_GUEST_HEIGHT,
    MIN_GUEST_WIDTH,
    Display,
    Resizable,
    SizeRequest,
)
from saffron.sources.qemu.uiinfo import MIN_INTERVAL_S, QUIET_S, SizeDebounce


def test_sizes_are_clamped_to_sane_limits() -> None:
    asked: list[SizeRequest] = []
    display = Display()
    display.resize_hook = asked.append
    display.request_size(SizeRequest(100_000, 1, 1 << 20, -5))
    display.request_size(SizeRequest(-3, 10**9))
    display.request_size(SizeRequest(1280, 720, 340, 190))
    assert asked == [
        SizeRequest(MAX_GUEST_WIDTH, MIN_GUEST_HEIGHT, 0xFFFF, 0),
        SizeRequest(MIN_GUEST_WIDTH, MAX_GUEST_HEIGHT),
        SizeRequest(1280, 720, 340, 190),
    ]


def test_a_producer_that_cannot_resize_says_so() -> None:
    display = Display()
    assert display.resizable is Resizable.UNKNOWN
    display.request_size(SizeRequest(800, 600))
    assert display.resizable is Resizable.NO


def test_the_newest_size_goes_once_it_stood_still() -> None:
    d = SizeDebounce()
    assert d.due_in(0.0) is None and d.take(0.0) is None
    d.want(SizeRequest(800, 600), 0.0)
    assert d.due_in(0.0) == QUIET_S
    d.want(SizeRequest(900, 600), 0.05)  # still being dragged: the quiet time starts again
    assert d.take(0.1) is None
    assert d.due_in(0.1) == pytest.approx(QUIET_S - 0.05)
    assert d.take(0.05 + QUIET_S) == SizeRequest(900, 600)
    assert d.due_in(1.0) is None  # sent: nothing more to do


def test_one_call_at_a_time_and_at_most_one_per_interval() -> None:
    d = SizeDebounce()
    d.want(SizeRequest(800, 600), 0.0)
    assert d.take(QUIET_S) == SizeRequest(800, 600)
    d.want(SizeRequest(1024, 768), QUIET_S)
    assert d.due_in(5.0) is None  # the first is not answered yet
    d.answered()
    sent_at = QUIET_S
    assert d.due_in(2 * QUIET_S) == pytest.approx(sent_at + MIN_INTERVAL_S - 2 * QUIET_S)
    assert d.take(sent_at + MIN_INTERVAL_S) == SizeRequest(1024, 768)


def test_a_flood_of_sizes_makes_few_calls() -> None:
    """A hostile page sending a new size every millisecond for ten seconds: while it
    keeps changing nothing goes; at most one call per MIN_INTERVAL_S in any case."""
    d = SizeDebounce()
    for ms in range(10_000):
        now = ms / 1000
        d.want(SizeRequest(800 + ms % 2, 600), now)
        if d.take(now) is not None:
            d.answered()
    assert d.calls == 0
    d2 = SizeDebounce()
    for ms in range(0, 10_000, 150):  # just slower than the quiet time: debounced by interval
        now = ms / 1000
        d2.want(SizeRequest(800 + ms, 600), now)
        if d2.take(now + QUIET_S) is not None:
            d2.answered()
    assert d2.calls <= 10 / MIN_INTERVAL_S + 1


def test_the_same_size_is_not_sent_again_but_is_after_a_new_attach() -> None:
    d = SizeDebounce()
    d.want(SizeRequest(800, 600), 0.0)
    assert d.take(1.0) is not None
    d.answered()
    d.want(SizeRequest(800, 600), 2.0)
    assert d.due_in(3.0) is None
    d.forget_sent()  # QEMU restarted: it gets the viewer's size too
    assert d.take(3.0) == SizeRequest(800, 600)
