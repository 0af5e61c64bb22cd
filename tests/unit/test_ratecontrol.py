"""Rate control against a simulated link: settles near the link rate, backs off, recovers."""

from __future__ import annotations

from saffron.ratecontrol import (
    BACKOFF,
    INTERVAL,
    MIN_KBPS,
    RateEstimator,
    choose_bitrate,
    significant,
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


WINDOW = 5  # frames in flight, as the web viewer's window plus the pipeline allows


def simulate(
    est: RateEstimator,
    clock: Clock,
    link_kbps: float,
    seconds: float,
    fps: int = 60,
    base_ms: float = 5.0,
) -> list[float]:
    """A link with a queue: frames of the current target's size, acked when they get through.

    As in the server, a frame is only sent while fewer than WINDOW are unacknowledged.
    """
    targets = []
    free_at = clock.t  # when the link has sent everything queued so far
    acks: list[tuple[float, float, int]] = []  # (ack time, rtt ms, size)
    start = clock.t
    for i in range(int(seconds * fps)):
        clock.t = start + (i + 1) / fps
        while acks and acks[0][0] <= clock.t:
            _, rtt, size = acks.pop(0)
            est.on_ack(rtt, size)
        targets.append(est.target_kbps)
        if len(acks) >= WINDOW:
            continue
        size = int(est.target_kbps * 1000 / 8 / fps)
        free_at = max(free_at, clock.t) + size * 8 / (link_kbps * 1000)
        done = free_at + base_ms / 1000
        acks.append((done, (done - clock.t) * 1000, size))
    return targets


def test_settles_near_the_link_rate_within_five_seconds() -> None:
    clock = Clock()
    est = RateEstimator(20000, clock)
    targets = simulate(est, clock, 4000, 20)
    settled = targets[5 * 60 :]
    assert max(settled) < 4000 * 1.2, "it must not keep sending more than the link carries"
    assert sum(settled) / len(settled) > 4000 * 0.7, "it must use most of the link"
    swing = (max(settled) - min(settled)) / (sum(settled) / len(settled))
    assert swing < 0.45  # within about +-20% of its mean


def test_follows_the_link_down_and_back_up() -> None:
    clock = Clock()
    est = RateEstimator(10000, clock)
    simulate(est, clock, 8000, 10)
    after_drop = simulate(est, clock, 2000, 10)
    assert after_drop[-1] < 2000 * 1.2
    after_rise = simulate(est, clock, 8000, 15)
    assert after_rise[-1] > 8000 * 0.7


def test_clear_link_climbs_to_the_maximum_and_stays() -> None:
    clock = Clock()
    est = RateEstimator(3000, clock)
    est.target_kbps = MIN_KBPS
    targets = simulate(est, clock, 100000, 30)
    assert targets[-1] == 3000


def test_a_link_that_carries_almost_nothing_gets_the_floor() -> None:
    clock = Clock()
    est = RateEstimator(5000, clock)
    rtt = 1.0
    for _ in range(40):
        clock.t += INTERVAL
        rtt *= 1.5  # a queue that only grows
        est.on_ack(rtt, 10)
    assert est.target_kbps == MIN_KBPS
    assert BACKOFF < 1


def test_stream_bitrate_choice() -> None:
    assert choose_bitrate([], 8000) == 8000
    assert choose_bitrate([1000.0, 3000.0], 8000) == 3000
    assert choose_bitrate([90000.0], 8000) == 8000
    assert significant(1000, 1200) and not significant(1000, 1100)


def test_a_pause_is_not_read_as_a_slow_link() -> None:
    """A still picture sends nothing for seconds; the refresh after it queues briefly.
    The rate measured across the pause (a few bytes over seconds) must not become the
    target: it stays near what the link carried before."""
    clock = Clock()
    est = RateEstimator(20000, clock)
    simulate(est, clock, 4000, 20)
    settled = est.target_kbps
    clock.t += 5.0  # nothing to send (within BASE_RTT_WINDOW: the base RTT is still known)
    for i in range(3):  # the refresh: a large frame, queued
        clock.t += 0.05
        est.on_ack(150.0 + i * 20, 60_000)
    assert est.target_kbps >= settled * BACKOFF, (settled, est.target_kbps)
    targets = simulate(est, clock, 4000, 5)
    assert min(targets) >= 4000 * 0.5, min(targets)


def test_a_stream_that_sends_little_is_not_cut_to_what_it_sent() -> None:
    """A still picture's page: a keyframe, then a few small frames of a drag whose acks
    wait behind the page's decoder starting up (AV1 in Chromium). A queue, but the link
    was idle part of the interval (the keyframe went straight through): the few bytes
    delivered are not the link's rate, and cutting to them left the page at the floor,
    its sharp refresh paced at 150 kbit/s for seconds."""
    clock = Clock()
    est = RateEstimator(8000, clock)
    start = est.target_kbps
    for at, rtt, size in [
        (0.10, 26.0, 20_000),
        (0.40, 63.0, 2_000),
        (0.48, 68.0, 2_000),
        (0.55, 73.0, 2_000),
    ]:
        clock.t = at
        est.on_ack(rtt, size)
    assert est.queue_ms > 40, "the rule under test is the one for a queue"
    assert est.target_kbps >= start * BACKOFF, est.target_kbps
