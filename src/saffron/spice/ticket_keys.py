"""Fresh ticket keys, made ahead of need by a worker thread.

SPICE clients encrypt their password with the RSA key the server sends in its
link reply. With one key per process, the 128 bytes of one client's ticket
link again when someone else sends them: a ticket seen once (the display
channel's crosses the plain port even with ``--spice-secure-channels``) was as
good as the password. spice-server makes a key per link, and so does Saffron.

Making an RSA-1024 key takes about 9 ms of CPU (p95 14 ms, measured on a 2-core
test machine), too long for the event loop at every connection. So a worker
thread keeps a few keys ready; OpenSSL lets go of the GIL while it searches
for primes, so the loop keeps running meanwhile. A key is handed out once and
never comes back. When none is ready, the connection waits for the worker
(:meth:`KeyPool.take_async`) instead of making one on the loop: a flood of
connections then costs the worker's one core, not the loop. The pool knows
keys and threads only, not the links or connections that take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque

from .protocol.link import TicketKey

log = logging.getLogger("saffron.spice")

KEY_POOL_SIZE = 8
"""Keys kept ready: a client opens up to four channels at once (main, then display,
inputs and cursor), so this covers two clients arriving together; more would spend
CPU on keys nobody may ask for."""


class KeyPool:
    """Ticket keys made by one worker thread, each handed out once.

    :meth:`take` (on the loop) returns a ready key or None; :meth:`take_async`
    then gives a future the worker fills before it refills the pool. The thread
    starts with :meth:`start` and stops with :meth:`close`; both may be called
    again.
    """

    def __init__(self, size: int = KEY_POOL_SIZE) -> None:
        self.size = size
        self._keys: deque[TicketKey] = deque()
        self._waiting: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[TicketKey]]] = deque()
        self._wake = threading.Condition()
        self._stop: threading.Event | None = None
        """The running worker's stop flag (each start makes a new one: an old worker
        still finishing a key after close() must not carry on beside a new one)."""

    @property
    def _running(self) -> bool:
        return self._stop is not None and not self._stop.is_set()

    def start(self) -> None:
        with self._wake:
            if self._running:
                return
            self._stop = threading.Event()
            threading.Thread(
                target=self._work, args=(self._stop,), name="spice-keys", daemon=True
            ).start()

    def close(self) -> None:
        """Stop the worker (it finishes the key it is making) and forget the keys."""
        with self._wake:
            if self._stop is not None:
                self._stop.set()
            self._keys.clear()
            waiting, self._waiting = self._waiting, deque()
            self._wake.notify_all()
        for loop, future in waiting:
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                loop.call_soon_threadsafe(future.cancel)

    def ready(self) -> int:
        """How many keys are ready now."""
        with self._wake:
            return len(self._keys)

    def take(self) -> TicketKey | None:
        """A ready key, never handed out before; None if the worker has none yet."""
        with self._wake:
            key = self._keys.popleft() if self._keys else None
            self._wake.notify_all()
        return key

    def take_async(self) -> asyncio.Future[TicketKey]:
        """A future (of the running loop) for the next key the worker makes.

        Cancel it if the key is no longer wanted; the worker then skips it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TicketKey] = loop.create_future()
        with self._wake:
            if not self._running:
                future.cancel()
                return future
            self._waiting.append((loop, future))
            self._wake.notify_all()
        return future

    def _wanted(self) -> bool:
        """Whether a key is wanted now (called with the lock held)."""
        while self._waiting and self._waiting[0][1].done():
            self._waiting.popleft()  # cancelled: that connection is gone
        return bool(self._waiting) or len(self._keys) < self.size

    def _work(self, stop: threading.Event) -> None:
        while True:
            with self._wake:
                while not stop.is_set() and not self._wanted():
                    self._wake.wait()
                if stop.is_set():
                    return
            try:
                key = TicketKey()
            except Exception:
                log.exception("SPICE: could not make a ticket key")
                with self._wake:
                    self._wake.wait(1.0)  # do not spin; the next take asks again
                continue
            with self._wake:
                if stop.is_set():
                    return
                if self._wanted() and self._waiting:
                    loop, future = self._waiting.popleft()
                else:
                    self._keys.append(key)
                    continue
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                loop.call_soon_threadsafe(_give, future, key)


def _give(future: asyncio.Future[TicketKey], key: TicketKey) -> None:
    if not future.done():  # a key not taken is dropped, never reused
        future.set_result(key)
