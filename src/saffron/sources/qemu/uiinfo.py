"""A viewer's window size on its way to QEMU's ``Console.SetUIInfo``, debounced.

A window being dragged, or a hostile page, asks for a new size many times a second;
each SetUIInfo makes the guest change mode (and the viewers' encoders start anew).
:class:`SizeDebounce` sends the newest size once it has stood for ``QUIET_S``, at most
once every ``MIN_INTERVAL_S``, one call at a time. It holds no clock and no thread: the
source's thread passes ``now`` and asks when to look again.
"""

from __future__ import annotations

import math

from ...display import SizeRequest

QUIET_S = 0.1
"""A size is sent once no newer one came for this long (a drag sends dozens)."""
MIN_INTERVAL_S = 0.5
"""At most two guest mode changes a second, whatever the viewers send."""

UNSUPPORTED_ERROR = "org.qemu.Display1.Error.Unsupported"
"""What QEMU (7.2 to 10.0) answers SetUIInfo on a console whose device cannot resize
(plain VGA, bochs-display without EDID...): "SetUIInfo is not supported"."""


class SizeDebounce:
    """The newest size wanted, and when to send it."""

    def __init__(self, quiet_s: float = QUIET_S, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.quiet_s = quiet_s
        self.min_interval_s = min_interval_s
        self.wanted: SizeRequest | None = None
        self.sent: SizeRequest | None = None
        self.in_flight = False
        """A call was sent and not answered yet: the next waits for its answer."""
        self.calls = 0
        self._changed_at = -math.inf
        self._sent_at = -math.inf

    def want(self, request: SizeRequest, now: float) -> None:
        if request != self.wanted:
            self.wanted = request
            self._changed_at = now

    def due_in(self, now: float) -> float | None:
        """Seconds until the wanted size should be sent (0: now); None: nothing to send."""
        if self.wanted is None or self.wanted == self.sent or self.in_flight:
            return None
        quiet = self._changed_at + self.quiet_s - now
        spaced = self._sent_at + self.min_interval_s - now
        return max(quiet, spaced, 0.0)

    def take(self, now: float) -> SizeRequest | None:
        """The size to send now (it then counts as in flight), or None."""
        if self.due_in(now) != 0.0:
            return None
        self.sent, self._sent_at, self.in_flight = self.wanted, now, True
        self.calls += 1
        return self.sent

    def answered(self) -> None:
        self.in_flight = False

    def forget_sent(self) -> None:
        """Another QEMU (a restart, a new attach): the wanted size goes to it again."""
        self.sent = None
        self.in_flight = False
