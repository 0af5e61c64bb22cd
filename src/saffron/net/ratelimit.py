"""How many messages one connection may send: a token bucket per connection.

Every message a viewer sends costs the server work on the event loop that also
feeds every other viewer: 35,000 messages of 4 KB in 5 s from one page raised
another page's median frame age from 2 to 29 ms. So each page's WebSocket and
each SPICE channel connection has its own bucket, and one that sends faster
than any real viewer does is closed with the reason logged. A new connection
starts with a small part of the burst, so that reconnecting does not buy a
flooder a fresh one.

Closed rather than thinned out: dropping messages would drop input too, and a
lost key-up or button-up leaves a key held down in the VM; a real page never
comes near the rate, so one that passes it is broken or hostile, and closing
it is the only way to stop paying for its messages (a page reconnects by itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable

MESSAGE_RATE = 2000.0
"""Messages a second one connection may send in the long run. The most a real
viewer sends: pointer moves at 1000 Hz (a gaming mouse; browsers send fewer, at
most one per displayed frame, as the page keeps only the last coalesced event),
wheel and key events (tens a second), an ack per frame (up to 240), a ping every
2 s and stats every second. spice-gtk's motion messages are bounded the same way
by the mouse; its display channel acks a window of messages at a time."""

MESSAGE_BURST = 4000.0
"""Messages a connection may send at once above the rate: two seconds of the
heaviest real input, which a page or a network that stalled for a moment hands
over in one go."""

MESSAGE_FIRST = 200.0
"""Messages a new connection may send at once, before its bucket fills up to the
burst at the rate: a page's first second is a start, a ping and some input, far
fewer; but a flooder that reconnects whenever it is closed gets only this much
per connection, not the whole burst."""

MESSAGE_COST_BYTES = 512
"""A message costs one token per started 512 bytes: everything a real viewer
sends is smaller, so it costs one, while a flood of 4 KB messages, which costs the
server about that much more to read and parse, is closed eight times sooner."""


def message_cost(size: int) -> float:
    """Tokens a message of ``size`` bytes (or characters) takes from its bucket."""
    return float(max(1, -(-size // MESSAGE_COST_BYTES)))


class TooManyMessages(Exception):
    """A connection sent more than its bucket allows; the text says so in plain words."""


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up, ``first`` to start with."""

    def __init__(
        self,
        rate: float = MESSAGE_RATE,
        burst: float = MESSAGE_BURST,
        first: float = MESSAGE_FIRST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = min(first, burst)
        self._at = clock()

    def take(self, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many; False (and nothing spent) if not."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True

    def exceeded(self) -> str:
        """Why a connection was closed, in plain words, for the log."""
        return (
            f"it sends more than {self.rate:.0f} messages a second "
            f"(after a burst of {self.burst:.0f})"
        )
