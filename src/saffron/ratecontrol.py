"""Bitrate that follows what a viewer's link carries, from its acknowledgements.

Each viewer reports when it has a frame (web acks after decoding, SPICE ACK
messages and stream reports). From those, every ``INTERVAL`` the estimator
sees two things:

- *queueing delay*: how much longer frames now take from send to
  acknowledgement than the fastest they have taken lately (the link's base
  round trip). A queue building up anywhere on the path shows here first.
- *delivery rate*: bytes acknowledged per second. While the link is the
  bottleneck this is what it carries.

The rule (delay-based, in the spirit of WebRTC's GCC, much simplified):

- queueing delay above ``CONGESTED_MS`` and not falling: the link is full.
  Drop the target to ``BACKOFF`` x the delivery rate (never above ``BACKOFF``
  x the current target), so the queue drains; only ``BACKOFF`` x the target if
  some frame of the interval did not wait (the link was not busy throughout, so
  what the stream delivered is not what the link carries). While the queue is draining,
  hold: backing off again before the last cut has shown its effect is how
  delay-based control collapses to a fraction of the link.
- queueing delay below ``CLEAR_MS``: the link has room. Raise the target by
  ``GROWTH`` per interval, up to the configured maximum.
- in between: hold.

It starts low (``START_KBPS``) rather than at the maximum, as TCP does: a first
keyframe at the maximum rate would take seconds on a slow link, and every frame
after it would wait behind it. Until the link first shows a queue, the target
doubles each interval, but never beyond twice what was delivered (a stream that
does not use its rate learns nothing about the link); on a fast link it reaches
the maximum within a few seconds.

Once settled the target saws between the backoff and the link rate, within
about +-10%, and averages above 80% of the link. Frame rate needs no rule of
its own: a viewer whose window is full is offered no frames, so its frame rate
falls to what its link carries at the current bitrate.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

INTERVAL = 0.5
CONGESTED_MS = 40.0
CLEAR_MS = 15.0
BACKOFF = 0.85
GROWTH = 1.08
MIN_KBPS = 150
START_KBPS = 1500
"""Where a new viewer's estimate starts (if the maximum is higher): a keyframe at
this rate is a fraction of a second even on a 2 Mbit/s link."""
IDLE_SPAN = 2 * INTERVAL
"""A gap between acknowledgements longer than this is a pause (a still picture sends
nothing), not a slow link: what arrives over it says nothing of the link's rate."""
BASE_RTT_WINDOW = 10.0
"""Seconds over which the smallest round trip counts as the link's base."""


@dataclass
class Sample:
    at: float
    rtt_ms: float
    size: int


class RateEstimator:
    """One viewer's sustainable bitrate, in kbit/s."""

    def __init__(self, max_kbps: int, clock: collections.abc.Callable[[], float] = time.monotonic):
        self.max_kbps = max_kbps
        self.target_kbps = float(min(max_kbps, START_KBPS))
        self.starting = True
        """Doubling until the first sign of a queue (see the module's docstring)."""
        self._clock = clock
        self._samples: collections.deque[Sample] = collections.deque()
        self._base: collections.deque[tuple[float, float]] = collections.deque()
        self._last_update = clock()
        self.queue_ms = 0.0
        self.delivered_kbps = 0.0

    def on_ack(self, rtt_ms: float, size: int) -> None:
        """A frame of ``size`` bytes was acknowledged ``rtt_ms`` after it was sent."""
        now = self._clock()
        self._samples.append(Sample(now, rtt_ms, size))
        while self._base and self._base[-1][1] >= rtt_ms:
            self._base.pop()  # a monotonic deque: the minimum sits at the left
        self._base.append((now, rtt_ms))
        while self._base[0][0] < now - BASE_RTT_WINDOW:
            self._base.popleft()
        if now - self._last_update >= INTERVAL:
            self._update(now)

    def _update(self, now: float) -> None:
        span = now - self._last_update
        self._last_update = now
        if span > IDLE_SPAN:
            # Measuring across the pause would read a few bytes over seconds as the
            # link's rate, and the first queue after it (a refresh) would cut the
            # target to the floor: start measuring again from here instead.
            self._samples.clear()
            return
        recent = [s for s in self._samples if s.at > now - span]
        self._samples.clear()
        if not recent:
            return
        base = self._base[0][1]
        rtts = sorted(s.rtt_ms for s in recent)
        previous, self.queue_ms = self.queue_ms, rtts[len(rtts) // 2] - base
        self.delivered_kbps = sum(s.size for s in recent) * 8 / 1000 / span
        if self.queue_ms > CONGESTED_MS and self.queue_ms >= previous * 0.9:
            # What was delivered is the link's rate only if the link was busy all along
            # (even the fastest frame waited); otherwise the stream sent less than the
            # link carries (a still picture, a few frames of a drag) and the queue was
            # a burst or the page's decoder: back off from the target instead.
            busy = rtts[0] - base > CLEAR_MS
            limit = self.delivered_kbps if busy else self.target_kbps
            self.target_kbps = min(self.target_kbps, limit) * BACKOFF
            self.starting = False
        elif self.starting and self.queue_ms < CLEAR_MS:
            grown = min(self.target_kbps * 2, self.delivered_kbps * 2)
            self.target_kbps = max(self.target_kbps, grown)
        elif self.queue_ms < CLEAR_MS:
            self.target_kbps *= GROWTH
        elif self.starting:
            self.starting = False  # a queue is building: from here on, the careful rules
        self.target_kbps = min(max(self.target_kbps, MIN_KBPS), self.max_kbps)


def choose_bitrate(estimates: list[float], max_kbps: int) -> int:
    """The stream's bitrate from its viewers' estimates.

    The fastest viewer sets it, so one slow viewer never lowers the picture
    quality of the others: the slow one gets fewer frames instead.
    """
    if not estimates:
        return max_kbps
    return int(min(max(estimates), max_kbps))


def significant(old: int, new: int) -> bool:
    """Changes smaller than this are noise, and not worth reopening an encoder for."""
    return abs(new - old) > 0.12 * old
