"""The aiohttp WebSocket both front ends serve on the web port (the page's ``/ws`` and
spice-html5's ``/spice``), and the answer to its handshake.

It owns how such a socket ends: cut off ``CLOSE_GRACE_S`` after it starts to close
(through the connection's :class:`~saffron.net.admission.AdmittedConnection`), or ended by
Saffron with a reason the page shows. Who may open one and what a session is are
the web front end's business: it hears of each opened socket through
:data:`WEBSOCKET_OPENED`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractStreamWriter

from .admission import AdmittedConnection, peer_of

log = logging.getLogger("saffron.web")

ENDED_BY_SERVER = 4001
"""Close code when Saffron ends a socket for a reason of its own (the session it was
opened under ended: sign-out, expiry, new token links): the page reloads, and so
shows the login form, instead of reconnecting in a loop."""


class WebSocket(web.WebSocketResponse):
    """aiohttp's WebSocketResponse, cut off ``CLOSE_GRACE_S`` after it starts to close.

    close() is called however a WebSocket ends (by a handler; by aiohttp when the
    peer closes it, or after the handler returns), and waits for the peer to take
    what is queued: a peer that stopped reading would keep the connection, and its
    slot, forever.
    """

    _guard: AdmittedConnection | None = None
    _ending: asyncio.Task[bool] | None = None
    ended = ""
    """Why Saffron ended it, if it did."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_close: list[Callable[[WebSocket], None]] = []
        """Called once it closes (e.g. its session forgets it)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter:
        transport = request.transport
        guard = transport.get_protocol() if transport is not None else None
        if isinstance(guard, AdmittedConnection):
            self._guard = guard
        writer = await super().prepare(request)
        if isinstance(request, web.Request):
            opened = request.app.get(WEBSOCKET_OPENED)
            if opened is not None:
                opened(self, request)
        return writer

    @property
    def address(self) -> str:
        """The client's IP address (what guesses and connections are counted by)."""
        return self._guard.address if self._guard is not None else "unknown"

    def authenticated(self) -> None:
        """The client authenticated over this WebSocket (SPICE's link): see saffron.net.limits."""
        if self._guard is not None:
            self._guard.authenticated()

    def end(self, reason: str) -> None:
        """Close it with ``reason``, which the page shows (its session ended)."""
        if self._ending is None and not self.closed:
            self.ended = reason
            peer = self._guard.peer if self._guard is not None else "a web client"
            log.info("closing the WebSocket of %s: %s", peer, reason)
            message = reason.encode()[:120]  # a close frame holds 123 bytes
            self._ending = asyncio.ensure_future(self.close(code=ENDED_BY_SERVER, message=message))

    def closing(self) -> None:
        """The connection is to end: cut it off unless it has closed within CLOSE_GRACE_S."""
        if self._guard is not None:
            self._guard.closing()

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        self.closing()
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            callback(self)
        return await super().close(code=code, message=message, drain=drain)


OnOpened = Callable[[WebSocket, web.Request], None]
WEBSOCKET_OPENED: web.AppKey[OnOpened] = web.AppKey("saffron.websocket_opened")
"""Set by the web front end: told of every WebSocket its app opens."""


async def open_websocket(
    ws: web.WebSocketResponse, request: web.Request, what: str
) -> web.StreamResponse | None:
    """Answer a WebSocket handshake: None once it is open, else the response to return
    instead (the refusal is logged, naming the peer)."""
    peer = peer_of(request.transport)[1]
    try:
        await ws.prepare(request)
    except web.HTTPException as exc:
        log.warning("refused a %s from %s: %s", what, peer, (exc.text or exc.reason).strip())
        raise
    except ValueError:
        # aiohttp fails on handshake headers that are not ASCII (it decodes the key, or
        # quotes the header in its 400), which would be logged as a server error.
        log.warning("refused a %s from %s: its handshake headers are not text", what, peer)
        response = web.Response(status=400, text="bad WebSocket handshake\n")
        response.force_close()
        return response
    except ConnectionError as exc:
        log.debug("%s from %s went away while it opened: %s", what, peer, exc)
        # A fresh response, not the half-opened ws: aiohttp finds the socket closed
        # and lets it be, where finishing the ws would make it log an error.
        return web.Response(status=400, text="closed during the WebSocket handshake\n")
    return None
