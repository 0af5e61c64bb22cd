"""The password-guess throttle's own rules (saffron.net.guesses): waits that double up to a
cap, a right password clears them, an IPv6 /64 is one address, quiet addresses are
forgotten, and many guessing addresses make a few log lines. Real clients guessing
over loopback: tests/integration/test_guessing.py."""

from __future__ import annotations

import logging

import pytest

from tests.support.wait import Clock


def test_waits_double_up_to_the_cap_and_a_right_password_clears_them() -> None:
    from saffron.net import guesses as g

    clock = Clock()
    throttle = g.GuessThrottle(clock)
    waits: list[float] = []
    for _ in range(g.FREE_GUESSES + 9):
        assert throttle.refuse("10.0.0.1", "10.0.0.1:1", "web") == 0, "checked: no wait left"
        throttle.failed("10.0.0.1", "10.0.0.1:1", "web")
        waits.append(throttle.wait("10.0.0.1"))
        clock.now += waits[-1]
    assert waits == [0.0] * g.FREE_GUESSES + [1, 2, 4, 8, 16, 32, 60, 60, 60]
    throttle.failed("10.0.0.1", "10.0.0.1:1", "web")
    assert throttle.refuse("10.0.0.1", "10.0.0.1:1", "web") == 60
    assert throttle.wait("10.0.0.2") == 0, "another address"
    clock.now += 60
    throttle.succeeded("10.0.0.1")
    for _ in range(g.FREE_GUESSES):
        throttle.failed("10.0.0.1", "10.0.0.1:1", "web")
    assert throttle.wait("10.0.0.1") == 0, "counted afresh"
    assert throttle.checked_wrong == g.FREE_GUESSES * 2 + 10 and throttle.refused == 1


def test_a_slash_64_is_one_address_and_quiet_ones_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from saffron.net import guesses as g

    clock = Clock()
    throttle = g.GuessThrottle(clock)
    for i in range(g.FREE_GUESSES + 1):
        throttle.failed(f"2001:db8:1:2::{i + 1:x}", "x", "SPICE")
    assert throttle.wait("2001:db8:1:2:ffff::1") == 1, "the same /64"
    assert throttle.wait("2001:db8:1:3::1") == 0, "another /64"
    clock.now += g.FORGET_AFTER_S
    throttle.failed("10.0.0.1", "x", "SPICE")
    assert list(throttle._records) == ["10.0.0.1"], "the quiet /64 is forgotten"

    monkeypatch.setattr(g, "MAX_TRACKED", 3)
    for i in range(10):
        throttle.failed(f"10.0.1.{i}", "x", "SPICE")
    assert list(throttle._records) == ["10.0.1.7", "10.0.1.8", "10.0.1.9"]


def test_many_addresses_guessing_are_a_few_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    from saffron.net import guesses as g

    caplog.set_level(logging.WARNING, "saffron.guesses")
    throttle = g.GuessThrottle()
    for i in range(3000):
        throttle.failed(f"10.1.{i // 250}.{i % 250}", "x", "SPICE")
    throttle.flush_log()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 12, lines
    counted = sum(1 if "refused a sign-in" in t else int(t.split()[1]) for t in lines)
    assert counted == 3000, lines
