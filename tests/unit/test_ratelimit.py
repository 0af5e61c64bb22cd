"""The per-connection message bucket: real viewers pass, floods do not."""

from __future__ import annotations

from saffron.net.ratelimit import (
    MESSAGE_BURST,
    MESSAGE_FIRST,
    MESSAGE_RATE,
    TokenBucket,
    message_cost,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_heaviest_real_input_passes() -> None:
    """A gaming mouse at 1000 Hz, an ack per frame at 240 fps, wheel and keys, for a minute."""
    clock = Clock()
    bucket = TokenBucket(clock=clock)
    per_ms = [1] * 1000  # pointer moves
    for ms in range(0, 1000, 4):
        per_ms[ms] += 1  # acks at 240 fps (250 a second, rounded up)
    for ms in range(0, 1000, 20):
        per_ms[ms] += 2  # wheel and keys, 50 a second each
    for second in range(60):
        for ms, count in enumerate(per_ms):
            clock.now = second + ms / 1000
            for _ in range(count):
                assert bucket.take(message_cost(120)), f"refused at {clock.now:.3f} s"


def test_a_new_connection_starts_small_then_saves_up_a_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(clock=clock)
    assert all(bucket.take() for _ in range(int(MESSAGE_FIRST)))
    assert not bucket.take(), "reconnecting does not buy a whole burst"
    clock.now = 10.0
    assert all(bucket.take() for _ in range(int(MESSAGE_BURST)))
    assert not bucket.take(), "the burst is used up"
    clock.now = 11.0
    assert all(bucket.take() for _ in range(int(MESSAGE_RATE)))
    assert not bucket.take()
    assert "2000 messages a second" in bucket.exceeded()


def test_big_messages_cost_more() -> None:
    assert message_cost(0) == message_cost(200) == message_cost(512) == 1
    assert message_cost(513) == 2 and message_cost(4096) == 8
    clock = Clock()
    bucket = TokenBucket(clock=clock)
    taken = 0
    while bucket.take(message_cost(4096)):
        taken += 1
    assert taken == MESSAGE_FIRST // 8
