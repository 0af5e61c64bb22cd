"""SPICE inside a WebSocket, for spice-html5 without websockify (wsproto does the framing).

spice-html5 opens ``new WebSocket(url, "binary")`` for every channel, on any
path, and treats the frames as one byte stream; the server must answer with
``Sec-WebSocket-Protocol: binary`` or Chromium drops the connection. This
module is sans-IO like the rest: bytes from the socket in, SPICE bytes out.

A browser lets any web page open a WebSocket to 127.0.0.1, so the upgrade is
checked against the same :class:`~saffron.net.origin.HostRule` as the web port
(``Host`` for DNS rebinding, ``Origin`` for other web sites) and refused with
403 before any SPICE byte is read. What runs inside (the link, then a channel)
is not this module's business; the connection feeds the unwrapped bytes on.
"""

from __future__ import annotations

import contextlib

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ...net.origin import HostRule
from .wire import ProtocolError

SUBPROTOCOL = "binary"


def looks_like_http(first: bytes) -> bool:
    """Whether a connection's first bytes are an HTTP GET rather than SPICE's REDQ."""
    return first[:4] == b"GET "


class WebSocketAdapter:
    """The server side of one WebSocket that carries a SPICE channel."""

    def __init__(self, rule: HostRule | None = None) -> None:
        self._ws = WSConnection(ConnectionType.SERVER)
        self.rule = rule
        """Which Host and Origin may open it; None lets every request in."""
        self._out = bytearray()
        self.target = ""
        """The request path (spice-html5 sends ``/websockify`` unless told otherwise)."""
        self.open = False
        self.closed = False

    def receive_data(self, data: bytes) -> bytes:
        """Feed socket bytes; returns the SPICE bytes they carried.

        Raises ProtocolError on a broken handshake or frame (a reply, if any,
        is queued in ``data_to_send`` first).
        """
        try:
            self._ws.receive_data(data)
            payload = bytearray()
            for event in self._ws.events():
                if isinstance(event, Request):
                    self.target = event.target
                    self._check(event)
                    subprotocol = SUBPROTOCOL if SUBPROTOCOL in event.subprotocols else None
                    self._out += self._ws.send(AcceptConnection(subprotocol=subprotocol))
                    self.open = True
                elif isinstance(event, BytesMessage):
                    payload += event.data
                elif isinstance(event, TextMessage):
                    raise ProtocolError("a text frame: SPICE over WebSocket is binary only")
                elif isinstance(event, Ping):
                    self._out += self._ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        self._out += self._ws.send(event.response())
                    self.closed = True
            return bytes(payload)
        except RemoteProtocolError as exc:
            if not self.open and isinstance(exc.event_hint, RejectConnection):
                with contextlib.suppress(LocalProtocolError):
                    self._out += self._ws.send(exc.event_hint)
            raise ProtocolError(f"WebSocket: {exc}") from exc

    def _check(self, request: Request) -> None:
        """Refuse (403, then ProtocolError) a request the Host and Origin rule says no to."""
        if self.rule is None:
            return
        origin = next(
            (value.decode("latin-1") for name, value in request.extra_headers if name == b"origin"),
            None,
        )
        refusal = self.rule.refusal(origin, request.host)
        if refusal is not None:
            self._out += self._ws.send(RejectConnection(status_code=403))
            raise ProtocolError(f"upgrade refused (403): {refusal}")

    def send(self, data: bytes) -> bytes:
        """SPICE bytes as one binary frame, ready for the socket."""
        if not self.open or self.closed or not data:
            return b""
        try:
            return self._ws.send(BytesMessage(data=data))
        except LocalProtocolError:
            self.closed = True
            return b""

    def close(self) -> bytes:
        """A close frame, if the connection is still open."""
        if self.open and not self.closed and self._ws.state is ConnectionState.OPEN:
            self.closed = True
            try:
                return self._ws.send(CloseConnection(code=1000))
            except LocalProtocolError:
                return b""
        return b""

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out
