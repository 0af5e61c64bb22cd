"""How often one address may guess the password, on the web and SPICE ports together.

Every wrong password, SPICE ticket or token link from an address (an IPv6 /64
counts as one, as for the connection caps) is counted in one shared
:class:`GuessThrottle`. The first ``FREE_GUESSES`` cost nothing (people mistype);
after each further one the address must wait ``FIRST_WAIT_S``, doubling up to
``MAX_WAIT_S``. While it waits, its attempts are refused without checking the
password, so the wait bounds the guesses per second however many connections
the address opens at once: one a minute at most, after a few dozen seconds.
A right password clears the count; an address that has not guessed wrong for
``FORGET_AFTER_S`` is forgotten.

Failures and refusals are logged as the connection caps' refusals are: the
first at once, the rest summed up in a few lines (:class:`~saffron.net.limits.Summary`).
This module only counts and logs; each front end refuses in its own wire (an
HTTP 429, a SPICE link answered PERMISSION_DENIED).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .limits import Summary, network_of

log = logging.getLogger("saffron.guesses")

FREE_GUESSES = 5
"""Wrong passwords in a row an address may give before it has to wait: enough for a
person who mistypes, or a client with an old password that retries a few times."""

FIRST_WAIT_S = 1.0
"""The wait after the first guess past the free ones; each further one doubles it."""

MAX_WAIT_S = 60.0
"""The longest wait: one guess a minute, per address, whatever it does; a person who
got the password wrong waits a minute at worst."""

FORGET_AFTER_S = 15 * 60.0
"""An address that has guessed nothing wrong for this long starts afresh. Well above
``MAX_WAIT_S``, so a guesser pacing itself to the longest wait stays slowed."""

MAX_TRACKED = 10_000
"""Addresses counted at once; past this the one that guessed wrong longest ago is
forgotten. Bounds memory (a few megabytes) against guesses from very many addresses,
which could each make their free guesses anyway."""


@dataclass(slots=True)
class _Record:
    failures: int
    last: float
    """When the last wrong guess came (monotonic)."""
    until: float
    """Guesses are refused until then (monotonic)."""


class GuessThrottle:
    """Wrong guesses by address, and how long each must wait before the next."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.checked_wrong = 0
        """Wrong guesses counted since start, for tests and metrics."""
        self.refused = 0
        """Attempts refused unchecked while their address waited, since start."""
        self._records: OrderedDict[str, _Record] = OrderedDict()
        """By address, the one that guessed wrong longest ago first."""
        self._summary = Summary("refused", "sign-in", log)

    def wait(self, address: str) -> float:
        """Seconds ``address`` must still wait before its password is checked; 0: go on."""
        record = self._records.get(network_of(address))
        if record is None:
            return 0.0
        return max(record.until - self.clock(), 0.0)

    def refuse(self, address: str, peer: str, what: str) -> float:
        """If ``address`` must wait, count and log a refusal and return the seconds left
        (rounded up, for Retry-After); else 0 and the caller checks the password.
        ``peer`` names the connection in the first log line; ``what`` the front end."""
        left = self.wait(address)
        if left <= 0:
            return 0.0
        self.refused += 1
        seconds = math.ceil(left)
        self._summary.add(
            network_of(address),
            f"too many wrong passwords ({what})",
            f"refused a sign-in from {peer}: too many wrong passwords ({what}), "
            f"the next is checked in {seconds} s",
        )
        return float(seconds)

    def failed(self, address: str, peer: str, what: str, reason: str = "wrong password") -> None:
        """``address`` guessed wrong: count it (logged, summed up), and make it wait."""
        now = self.clock()
        self._forget_old(now)
        key = network_of(address)
        record = self._records.pop(key, None) or _Record(0, now, now)
        record.failures += 1
        record.last = now
        past = record.failures - FREE_GUESSES
        if past > 0:
            record.until = now + min(FIRST_WAIT_S * 2 ** min(past - 1, 30), MAX_WAIT_S)
        self._records[key] = record
        while len(self._records) > MAX_TRACKED:
            self._records.popitem(last=False)
        self.checked_wrong += 1
        first = f"refused a sign-in from {peer}: {reason} ({what})"
        self._summary.add(key, f"{reason} ({what})", first)

    def succeeded(self, address: str) -> None:
        """``address`` gave the right password: its count starts afresh."""
        self._records.pop(network_of(address), None)

    def flush_log(self) -> None:
        """Write what was summed up since the last line (and stop waiting to)."""
        self._summary.write()

    def _forget_old(self, now: float) -> None:
        while self._records:
            oldest = next(iter(self._records.values()))
            if now - oldest.last < FORGET_AFTER_S:
                return
            self._records.popitem(last=False)
