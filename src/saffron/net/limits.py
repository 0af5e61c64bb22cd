"""How many connections Saffron takes, from whom, and how long a handshake may last.

One Saffron serves one display to a handful of people, so it needs few
sockets; a script that opens thousands must not use up the process's file
descriptors (then nobody could connect, and the producer could not open a
dma-buf). Every TCP connection, web or SPICE, takes a slot from one shared
:class:`ConnectionLimits` when it is accepted and gives it back when it
closes. Refusals are logged, but a flood of them is summed up rather than
written line by line, so the log cannot be flooded instead.

Connections that have not authenticated yet cost an attacker nothing (no
password needed to hold one), so they have a smaller share of the slots
(``UNAUTHENTICATED_SHARE``) and ``AUTH_TIMEOUT_S`` to authenticate; the rest of
the slots stay for people who have. A connection is *authenticated*:

- SPICE (either port, or SPICE over WebSocket on the web port): once its link
  is established, i.e. its ticket was right or no password is set;
- web: once a request is answered that came with a valid session cookie, or
  whose answer gives one (a right password or token link), or, with no password
  set, once any request has been answered. An open WebSocket came from such a
  request (``/ws`` needs a session); SPICE's ``/spice`` follows the SPICE rule.

When the unauthenticated share is full, a new connection still gets in: the
oldest unauthenticated connection of the address holding the most of them is
closed to make room. Refusing the new one instead would let a flood of
half-sent requests keep everyone out for as long as it is renewed; dropping
the oldest of the busiest address keeps a visitor from another address, who
has a connection or two, able to sign in, while the flood only displaces itself.
When every slot is taken, a new connection is refused as before: people who
signed in then hold at least half of them.

This module only counts: the front ends decide what a refusal looks like on
their wire (an HTTP 503, or a closed SPICE socket).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("saffron.limits")

DEFAULT_MAX_CONNECTIONS = 400
"""Connections open at once, all front ends together. A browser page uses its
WebSocket and up to six HTTP connections, a SPICE client four channels, so this
is fifty viewers with room to spare, and stays well below the usual limit of
1024 open files, which the encoders, QEMU's dma-bufs and the log also need."""

DEFAULT_MAX_PER_ADDRESS = 100
"""Connections open at once from one IP address: a dozen people behind one NAT,
or a 50-viewer benchmark from one machine, while one host cannot take every slot.
An IPv6 /64 counts as one address: one host usually has a whole /64 to pick from."""

UNAUTHENTICATED_SHARE = 0.5
"""Of ``--max-connections``, the share that may be open before authenticating: half
(200 of the default 400). The other half is always there for people who signed in
(25 browser pages or 50 SPICE clients at the default), while 200 is more than a
room full of viewers all connecting at once ever holds before signing in."""

AUTH_TIMEOUT_S = 10.0
"""Seconds a connection has, from its accept, to authenticate (see above), TLS
handshake included; then it is closed. A browser that shows the login page and
waits for its user simply opens a new connection to send the password; a SPICE
client links in well under a second. A third of ``HANDSHAKE_TIMEOUT_S``, so a
slot held without a password is held for a short while only."""

HANDSHAKE_TIMEOUT_S = 30.0
"""Seconds a web connection has to finish each HTTP request, or to open its
WebSocket: a client that sends half a request and waits (slowloris) is then
closed. 30 s is what spice-html5 waits for a connection before giving up."""

CLOSE_GRACE_S = 5.0
"""Seconds a closed connection may take to hand over the bytes still queued for it
before it is cut off (a peer that stops reading would otherwise hold it forever)."""

REFUSAL_LOG_INTERVAL_S = 10.0
"""Refusals after the first are summed up in one line at most this often."""

REFUSAL_LOG_ADDRESSES = 10
"""Addresses named in one summing-up; refusals of any others are counted in one
more line, so a flood from many addresses is a few lines too."""


def abort_later(transport: asyncio.Transport) -> asyncio.TimerHandle:
    """Abort ``transport`` in ``CLOSE_GRACE_S`` unless the caller cancels the timer once the
    connection is lost. Call it when a connection starts to close: a close waits for the
    peer to take the bytes still queued, and a peer that stopped reading would keep the
    socket, and its slot, forever."""
    return asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)


def host_of(peername: object) -> str:
    """The IP address of a socket's peer, IPv4-mapped IPv6 written as IPv4."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0]).removeprefix("::ffff:")
    return str(peername or "unknown")


def peer_label(peername: object) -> str:
    """``host:port`` of a socket's peer, for log lines."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host = host_of(peername)
        return f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
    return host_of(peername)


def network_of(address: str) -> str:
    """What the per-address cap counts ``address`` as: itself (IPv4), or its IPv6 /64."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


@dataclass(eq=False)
class Slot:
    """One admitted connection; give it back with :meth:`ConnectionLimits.release`."""

    address: str
    """What the per-address cap counted it as (see :func:`network_of`)."""
    drop: Callable[[], None] | None = None
    """Closes the connection, when its slot goes to a newer one before it authenticated."""
    authenticated: bool = False
    released: bool = False
    capped: bool = True
    """Counted against the per-address cap: False while a trusted proxy's connection has
    not said yet whom it carries (see :meth:`ConnectionLimits.move`)."""


class Summary:
    """Warnings about connections (or sign-ins), by (address, reason): the first written
    at once, the rest summed up at most every ``REFUSAL_LOG_INTERVAL_S`` for a few
    addresses, then only counted, so a flood of them is a few lines, not one each."""

    def __init__(self, verb: str, noun: str = "connection", logger: logging.Logger = log) -> None:
        self.verb = verb
        """What was done to them, in the summing-up ("refused", "closed")."""
        self.noun = noun
        """What they are, in the summing-up ("connection", "sign-in")."""
        self.log = logger
        self.pending: dict[tuple[str, str], int] = {}
        self.others = 0
        self.last_logged = float("-inf")
        self.flush: asyncio.TimerHandle | None = None

    def add(self, address: str, reason: str, first: str) -> None:
        """One more; ``first`` is the line to write if it is written on its own."""
        now = time.monotonic()
        if (
            now - self.last_logged >= REFUSAL_LOG_INTERVAL_S
            and not self.pending
            and not self.others
        ):
            self.last_logged = now
            self.log.warning("%s", first)
            return
        key = (address, reason)
        if key in self.pending or len(self.pending) < REFUSAL_LOG_ADDRESSES:
            self.pending[key] = self.pending.get(key, 0) + 1
        else:
            self.others += 1
        if self.flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            delay = max(self.last_logged + REFUSAL_LOG_INTERVAL_S - now, 0.0)
            self.flush = loop.call_later(delay, self.write)

    def write(self) -> None:
        """Write what was summed up since the last line (and stop waiting to)."""
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
        if not self.pending and not self.others:
            return
        self.last_logged = time.monotonic()
        for (address, reason), count in self.pending.items():
            self.log.warning(
                "%s %d more %s%s from %s: %s",
                self.verb,
                count,
                self.noun,
                "" if count == 1 else "s",
                address,
                reason,
            )
        if self.others:
            self.log.warning(
                "%s %d more %s%s from other addresses",
                self.verb,
                self.others,
                self.noun,
                "" if self.others == 1 else "s",
            )
        self.pending.clear()
        self.others = 0


class ConnectionLimits:
    """A total and a per-address cap on open connections, shared by the front ends, and
    a smaller one on those not authenticated yet (see the module's docstring)."""

    def __init__(
        self,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
    ) -> None:
        if max_connections < 1 or max_per_address < 1:
            raise ValueError("connection limits must be at least 1")
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.max_unauthenticated = max(1, int(max_connections * UNAUTHENTICATED_SHARE))
        self.total = 0
        self.unauthenticated = 0
        """Connections open that have not authenticated yet."""
        self.refused = 0
        """Connections refused since start, for tests and metrics."""
        self.displaced = 0
        """Unauthenticated connections closed to make room for newer ones, since start."""
        self.peak = 0
        self._by_address: dict[str, int] = {}
        self._waiting: dict[str, dict[Slot, None]] = {}
        """Unauthenticated slots by address, oldest first."""
        self._refusals = Summary("refused")
        self._failures = Summary("closed")
        """Connections a guard closed: TLS handshakes that failed (a scanner probing the
        port makes many), connections that did not authenticate in time or made room."""

    def open_from(self, address: str) -> int:
        """Connections open from ``address`` (from its /64, for IPv6)."""
        return self._by_address.get(network_of(address), 0)

    def admit(
        self,
        address: str,
        what: str,
        drop: Callable[[], None] | None = None,
        *,
        proxied: bool = False,
    ) -> Slot | None:
        """A slot for a new connection from ``address``, or None (logged) if over a cap.

        ``what`` names the front end in the log ("web", "SPICE"). The slot counts as
        unauthenticated until :meth:`authenticated`; when those are too many, the
        oldest of the address with the most is released and its ``drop`` called.
        ``proxied``: ``address`` is a trusted proxy's, which carries many clients; the
        per-address cap applies once :meth:`move` says whose the connection is.
        """
        address = network_of(address)
        if self.total >= self.max_connections:
            self._refuse(
                address,
                what,
                f"{self.total} connections are open, the most allowed (--max-connections)",
            )
            return None
        if not proxied and self._over_cap(address, what):
            return None
        if self.unauthenticated >= self.max_unauthenticated:
            self._make_room()
        slot = Slot(address, drop, capped=not proxied)
        if not proxied:
            self._by_address[address] = self._by_address.get(address, 0) + 1
        self.total += 1
        self.peak = max(self.peak, self.total)
        self._waiting.setdefault(address, {})[slot] = None
        self.unauthenticated += 1
        return slot

    def _over_cap(self, address: str, what: str) -> bool:
        """Whether ``address`` (a network_of) has its most connections open (logged)."""
        count = self._by_address.get(address, 0)
        if count < self.max_per_address:
            return False
        self._refuse(
            address,
            what,
            f"{count} connections from that {'network' if '/' in address else 'address'} "
            "are open, the most allowed (--max-per-address)",
        )
        return True

    def move(self, slot: Slot | None, address: str, what: str) -> bool:
        """A trusted proxy's connection carries ``address``'s requests: count it there from
        now on. False (logged, and the slot left where it was) if that address has its
        most connections open already: the connection is to be refused."""
        if slot is None or slot.released:
            return True
        address = network_of(address)
        if slot.capped and slot.address == address:
            return True
        if self._over_cap(address, what):
            return False
        if slot.capped:
            self._uncount(slot.address)
        self._by_address[address] = self._by_address.get(address, 0) + 1
        if not slot.authenticated:
            self._stop_waiting(slot)
            self._waiting.setdefault(address, {})[slot] = None
            self.unauthenticated += 1
        slot.address, slot.capped = address, True
        return True

    def _uncount(self, address: str) -> None:
        left = self._by_address.get(address, 0) - 1
        if left > 0:
            self._by_address[address] = left
        else:
            self._by_address.pop(address, None)

    def _make_room(self) -> None:
        """Close the oldest unauthenticated connection of the address that has the most."""
        busiest = max(self._waiting.values(), key=lambda slots: len(slots))
        victim = next(iter(busiest))
        self.displaced += 1
        reason = "it had not authenticated, and a newer connection needed its slot"
        self._failures.add(
            victim.address, reason, f"closing a connection from {victim.address}: {reason}"
        )
        self.release(victim)
        if victim.drop is not None:
            victim.drop()

    def authenticated(self, slot: Slot | None) -> None:
        """The slot's connection authenticated: it no longer counts as waiting to."""
        if slot is None or slot.released or slot.authenticated:
            return
        slot.authenticated = True
        self._stop_waiting(slot)

    def _stop_waiting(self, slot: Slot) -> None:
        waiting = self._waiting.get(slot.address)
        if waiting is None or slot not in waiting:
            return
        del waiting[slot]
        self.unauthenticated -= 1
        if not waiting:
            del self._waiting[slot.address]

    def release(self, slot: Slot | None) -> None:
        """Give a slot back (again is harmless)."""
        if slot is None or slot.released:
            return
        slot.released = True
        if not slot.authenticated:
            self._stop_waiting(slot)
        self.total -= 1
        if slot.capped:
            self._uncount(slot.address)

    def closing(self, slot: Slot | None, peer: str, reason: str) -> None:
        """A guard closes a connection: its TLS handshake failed or timed out, or it did not
        authenticate in time (logged, summed up as refusals are)."""
        address = slot.address if slot is not None else peer
        self._failures.add(address, reason, f"closing {peer}: {reason}")

    def _refuse(self, address: str, what: str, reason: str) -> None:
        self.refused += 1
        self._refusals.add(address, reason, f"refused a {what} connection from {address}: {reason}")

    def flush_log(self) -> None:
        """Write the warnings summed up since the last line (and stop waiting to)."""
        self._refusals.write()
        self._failures.write()
