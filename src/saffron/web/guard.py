"""Every TCP connection of the web port, before aiohttp sees it, and aiohttp's log.

:class:`HttpGuard` takes a slot from the shared connection limits (or answers 503)
before any TLS handshake, and cuts a connection whose request is not complete
within ``HANDSHAKE_TIMEOUT_S``, which aiohttp alone does not do. aiohttp's own
log lines about connections are turned into one line each that names the peer.
It knows HTTP connections, not the page or sign-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from ..net.admission import AdmittedConnection
from ..net.forwarded import ForwardedRule
from ..net.limits import HANDSHAKE_TIMEOUT_S, ConnectionLimits

log = logging.getLogger("saffron.web")

_BUSY = b"Saffron has too many connections; try again later.\n"
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 10\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_BUSY), _BUSY)
)
"""The answer to a connection over the limits, before reading its request."""

REFUSAL_LINGER_S = 1.0
"""Seconds a refused connection stays open after its 503, reading (and dropping)
what the client sends until it closes: closed with its request unread, the
socket would be reset, and the client might see "connection reset" instead of
the 503. Short, as refused sockets are outside the caps: a flood of them must
not hold file descriptors for long."""


class HttpGuard(AdmittedConnection):
    """One connection of the web port, in front of aiohttp's own protocol.

    It takes a slot from the limits (over them the client gets a 503, and the
    socket closes when the client does, or after ``REFUSAL_LINGER_S``; on an HTTPS
    port it is closed at once), then, on an HTTPS port, runs the TLS handshake
    (within ``HANDSHAKE_TIMEOUT_S``) before aiohttp sees the connection. It gives
    every HTTP request ``HANDSHAKE_TIMEOUT_S`` from the connection or the previous
    answer to arrive and be answered, and a WebSocket as long to open; then the
    socket is cut. Once a WebSocket is up, its own heartbeat (or SPICE's link
    timeout) takes over. A connection that is closing is cut off if it has not
    closed within ``CLOSE_GRACE_S``. Until a request from a signed-in client is
    answered (any request, without a password), the connection has
    ``AUTH_TIMEOUT_S`` in all, and its slot may go to a newer connection (see
    saffron.net.limits); one closed between requests is closed quietly.
    """

    def __init__(
        self,
        inner: asyncio.Protocol,
        limits: ConnectionLimits,
        loop: Loop,
        tls: ssl.SSLContext | None = None,
        handshakes: set[asyncio.Task[None]] | None = None,
        proxies: ForwardedRule | None = None,
    ) -> None:
        super().__init__(limits, tls, "web", handshakes, proxies)
        self.inner = inner
        self.loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._partial = False
        """Bytes of a request arrived that has not been answered yet."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self.admit(transport):
            if self.tls is not None:
                transport.abort()  # a 503 needs a TLS handshake first: not for a refusal
                return
            transport.write(TOO_MANY_CONNECTIONS)
            if transport.can_write_eof():  # then read until the client closes
                with contextlib.suppress(OSError):
                    transport.write_eof()
            else:
                transport.close()
            self._timer = self.loop.call_later(REFUSAL_LINGER_S, transport.abort)
            return
        self.start(transport, HANDSHAKE_TIMEOUT_S)

    def connected(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._arm()
        if isinstance(self.inner, RequestHandler):  # its log lines then name the peer
            self.inner.logger = _PeerLog(HTTP_LOG, {"peer": self.peer})  # type: ignore[assignment]
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.slot is None:
            return
        if self._timer is not None:
            self._partial = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.slot is None:
            return None
        keep_open = self.inner.eof_received()
        if not keep_open:  # asyncio closes the transport now
            self.closing()
        return keep_open

    def pause_writing(self) -> None:
        if self.slot is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.slot is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.release()
        if self.slot is None:
            return
        log.debug("web connection from %s closed%s", self.peer, f" ({exc})" if exc else "")
        if self.transport is not None:
            self.inner.connection_lost(exc)

    def answered(self, websocket: bool, authenticated: bool) -> None:
        """A response is on its way: the next request has its own time; a WebSocket none."""
        self._partial = False
        if authenticated:
            self.authenticated()
        if websocket:
            self._disarm()
        else:
            self._arm()

    def idle(self) -> bool:
        return self.transport is not None and not self._partial

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(HANDSHAKE_TIMEOUT_S, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing():
            # aiohttp closed it after an answer the peer has not taken all of yet.
            log.debug("cutting off web connection from %s: it stopped reading", self.peer)
        elif self._partial:
            log.warning(
                "closing web connection from %s: no complete request within %.0f s",
                self.peer,
                HANDSHAKE_TIMEOUT_S,
            )
        else:
            log.debug("closing idle web connection from %s", self.peer)
        transport.abort()


Loop = asyncio.AbstractEventLoop


class _PeerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's log for one connection, with the peer's address and port attached."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, {**kwargs, "extra": self.extra}

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(kwargs.get("exc_info"), BadHttpMethod):  # see _BadRequestsAreWarnings
            self.warning(msg, *args, **kwargs)
        else:
            super().debug(msg, *args, **kwargs)


class _BadRequestsAreWarnings(logging.Filter):
    """aiohttp logs a malformed request as an error with a traceback, though it is the
    client's doing and already answered with a 400: one warning line says it better.
    A first request that is not HTTP at all aiohttp logs at debug level, as internet
    noise; but it is as often a user's mistake (https:// to a plain port, a SPICE
    client given the web port), so it is a warning too, saying which. A client that
    hangs up while a handler reads its body is no error either."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            who = getattr(record, "peer", None)
            if who is None:
                who = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            message = exc.message or type(exc).__name__
            text = message.strip().splitlines()[0]
            text = text.split(": b'", 1)[0].split(': b"', 1)[0][:160].rstrip(": ")
            if isinstance(exc, BadHttpMethod) and f"b'{SPICE_MAGIC.decode()}" in message:
                text = "SPICE on the web port (give the SPICE client the SPICE port)"
            if record.levelno >= logging.ERROR:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "bad HTTP request from %s (answered %d): %s"
            record.args = (who, exc.code, text)
            record.exc_info, record.exc_text = None, None
        elif isinstance(exc, ConnectionError) or _closed_before_read(exc):
            # the client left (or was cut off) while a handler read or wrote
            who = getattr(record, "peer", "?")
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg, record.args = "web connection from %s went away mid-request: %s", (who, exc)
            record.exc_info, record.exc_text = None, None
        return True


SPICE_MAGIC = b"REDQ"
"""The first bytes of every SPICE link: a SPICE client given the web port by mistake."""


def _closed_before_read(exc: BaseException | None) -> bool:
    """What aiohttp raises when a handler starts to read a body from a connection closed
    meanwhile (one cut off to make room for a newer one, say): no error of the server."""
    return isinstance(exc, RuntimeError) and str(exc) == "Connection closed."


HTTP_LOG = logging.getLogger("saffron.web.http")
"""aiohttp's own messages about connections (bad requests, handler errors)."""
HTTP_LOG.addFilter(_BadRequestsAreWarnings())
