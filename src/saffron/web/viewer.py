"""One browser page as a viewer of the broadcast: its frames out, its input and acks in.

Its send window is counted in frames the page has not yet acknowledged as decoded,
so a page on a slow link (or a slow decoder) simply stops being offered frames
until it catches up, and never builds a queue. It knows the page's wire format
(web/protocol.py) and what it needs of its server (:class:`PageServer`), not HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from aiohttp import WSMsgType, web

from ..broadcast import Broadcast, Stream
from ..display import Button, Display
from ..encoders.base import Packet
from ..net.limits import host_of, peer_label
from ..net.ratelimit import TokenBucket, TooManyMessages, message_cost
from ..ratecontrol import RateEstimator
from .keys import scancode_for
from .protocol import MAX_TEXT_MESSAGE, ProtocolError, pack_video

log = logging.getLogger("saffron.web")

WINDOW_FRAMES = 3
"""Frames sent but not yet decoded by the page. Three cover a LAN round trip at
60 fps; more would only let a queue (latency) build up on a slow link."""

WINDOW_BYTES = 4 << 20
"""Bytes waiting in the socket's buffer beyond which the page counts as behind,
whatever it has acknowledged: a guard against a page that acks but cannot read."""

STATS_INTERVAL = 1.0

MAX_PENDING_MESSAGES = 256
"""JSON messages queued for a page that is not reading them (pongs it asked for,
cursor shapes): past this the page is closed rather than let memory grow."""


class PageServer(Protocol):
    """What a page's viewer uses of the web server."""

    display: Display
    broadcast: Broadcast
    view_only: bool

    @property
    def codecs(self) -> list[str]: ...

    def hello(self, viewer: WebViewer | None = None) -> dict[str, Any]: ...


class WebViewer:
    """One browser page: a Viewer for the broadcast and the page's input."""

    def __init__(
        self, server: PageServer, ws: web.WebSocketResponse, request: web.Request, view_only: bool
    ) -> None:
        self.server = server
        self.view_only = view_only or server.view_only
        self.ws = ws
        self.transport = request.transport
        peername = self.transport.get_extra_info("peername") if self.transport else request.remote
        self.label = f"web viewer {peer_label(peername)}"
        self.host = host_of(peername)
        self.port = peername[1] if isinstance(peername, tuple) and len(peername) > 1 else "?"
        self.codec = ""
        self.stream: Stream | None = None
        self.closed = False
        self._next = 0
        self._acked = -1
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._sent: dict[int, tuple[int, float, int]] = {}
        """Frame number -> (capture time, send time, size), until acknowledged."""
        self.rate = RateEstimator(server.broadcast.bitrate_kbps)
        self.latency_ms = 0.0
        self.frames_acked = 0
        self.page_stats: dict[str, Any] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._messages = TokenBucket()
        """What the page may still send (see net.ratelimit): past it, it is closed."""
        self.end = ""
        """Why the server closed this page's socket, if it did."""

    # -- Viewer ---------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._next - 1 - self._acked

    def writable(self) -> bool:
        if self.closed or self.in_flight >= WINDOW_FRAMES:
            return False
        transport = self.transport
        return transport is None or transport.get_write_buffer_size() < WINDOW_BYTES

    def rate_kbps(self) -> float | None:
        return self.rate.target_kbps

    def send_packet(self, packet: Packet) -> None:
        n = self._next
        self._next += 1
        self._sent[n] = (packet.capture_us, time.monotonic(), len(packet.data))
        self._queue.put_nowait(pack_video(packet, n))

    # -- the connection -------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        ticker = asyncio.create_task(self._stats_loop())
        try:
            await self._send_json(self.server.hello(self))
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self._handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    raise ProtocolError("the page sent binary data; it only sends JSON")
                elif msg.type == WSMsgType.ERROR:
                    self.end = f"broken WebSocket: {self.ws.exception() or msg.data}"
                    log.warning("closing %s: %s", self.label, self.end)
                    break
        except (ProtocolError, TooManyMessages) as exc:
            self.end = str(exc)
            log.warning("closing %s: %s", self.label, exc)
            if isinstance(exc, TooManyMessages) and self.transport is not None:
                # Nothing more of a flood is read, not even while the close handshake
                # waits (until CLOSE_GRACE_S): here it stops costing the other viewers.
                self.transport.pause_reading()
            await self.ws.close(code=1008, message=str(exc)[:120].encode())
        finally:
            self.closed = True
            sender.cancel()
            ticker.cancel()
            for task in list(self._tasks):
                task.cancel()
            self.server.broadcast.leave(self)

    async def _send_loop(self) -> None:
        while True:
            data = await self._queue.get()
            try:
                await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                self.closed = True
                return

    async def _send_json(self, obj: dict[str, Any]) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_str(json.dumps(obj))
            except (ConnectionError, RuntimeError):
                self.closed = True  # the page went away meanwhile; run() ends it

    def notify(self, obj: dict[str, Any]) -> None:
        """Queue a JSON message from a synchronous context on the loop."""
        if self.closed:
            return
        if len(self._tasks) >= MAX_PENDING_MESSAGES:
            self.closed = True
            self.end = f"it does not read what it is sent ({len(self._tasks)} messages waiting)"
            log.warning("closing %s: %s", self.label, self.end)
            task = asyncio.ensure_future(self._close(1008, "not reading"))
        else:
            task = asyncio.ensure_future(self._send_json(obj))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            stream = self.stream
            if stream is None:
                continue
            seat = stream.seats.get(self)
            encoded = max(stream.frames_encoded, 1)
            await self._send_json(
                {
                    "type": "stats",
                    "dropped": seat.dropped if seat else 0,
                    "backend": stream.backend,
                    "targetKbps": stream.bitrate_kbps,
                    "encodeMs": round(stream.encode_ms_total / encoded, 2),
                    "serverLatencyMs": round(self.latency_ms, 1),
                }
            )

    # -- messages from the page -----------------------------------------------

    def _handle(self, text: str) -> None:
        if len(text) > MAX_TEXT_MESSAGE:
            raise ProtocolError(f"message of {len(text)} characters is too long")
        if not self._messages.take(message_cost(len(text))):
            raise TooManyMessages(self._messages.exceeded())
        try:
            msg = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"message is not JSON: {exc}") from None
        if not isinstance(msg, dict):
            raise ProtocolError("message is not a JSON object")
        kind = msg.get("type")
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise ProtocolError(f"unknown message type {kind!r}")
        try:
            handler(self, msg)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad {kind} message: {exc!r}") from None

    def _on_start(self, msg: dict[str, Any]) -> None:
        codec = str(msg["codec"])
        if codec not in self.server.codecs:
            raise ProtocolError(f"codec {codec!r} is not offered here ({self.server.codecs})")
        if codec == self.codec and self.server.broadcast.stream_of(self) is not None:
            return  # already watching it: a repeated start must not cost everyone a keyframe
        self.codec = codec
        self.stream = self.server.broadcast.join(self, codec)
        self._next, self._acked = 0, -1
        self._sent.clear()
        log.info("web viewer %s watches %s (port %s)", self.host, codec, self.port)

    def _on_ack(self, msg: dict[str, Any]) -> None:
        frame = int(msg["frame"])
        if not self._acked < frame < self._next:
            return  # a stale ack from before a codec switch
        was_full = not self.writable()
        now = time.monotonic()
        for n in range(self._acked + 1, frame + 1):
            sent = self._sent.pop(n, None)
            if sent is None:
                continue
            capture, sent_at, size = sent
            self.rate.on_ack((now - sent_at) * 1000, size)
            if n == frame:
                self.latency_ms = (time.time_ns() // 1000 - capture) / 1000
        self.frames_acked += frame - self._acked
        self._acked = frame
        if was_full and self.writable():
            self.server.broadcast.viewer_ready(self)

    def _on_ping(self, msg: dict[str, Any]) -> None:
        self.notify({"type": "pong", "t0": float(msg["t0"]), "server": time.time() * 1000})

    def _on_page_stats(self, msg: dict[str, Any]) -> None:
        self.page_stats = {k: v for k, v in msg.items() if isinstance(v, int | float | str)}

    def _input_allowed(self) -> bool:
        return not self.view_only

    def _on_key(self, msg: dict[str, Any]) -> None:
        scancode = scancode_for(str(msg["code"]))
        if scancode is not None and self._input_allowed():
            self.server.display.input.key(scancode, bool(msg["down"]))

    def _on_pointer(self, msg: dict[str, Any]) -> None:
        if self._input_allowed():
            d = self.server.display
            x = min(max(int(msg["x"]), 0), max(d.width - 1, 0))
            y = min(max(int(msg["y"]), 0), max(d.height - 1, 0))
            d.input.pointer(x, y)

    def _on_button(self, msg: dict[str, Any]) -> None:
        if self._input_allowed():
            self.server.display.input.button(Button(int(msg["button"])), bool(msg["down"]))

    def _on_wheel(self, msg: dict[str, Any]) -> None:
        if self._input_allowed():
            button = Button.WHEEL_DOWN if float(msg["dy"]) > 0 else Button.WHEEL_UP
            self.server.display.input.button(button, True)
            self.server.display.input.button(button, False)

    _HANDLERS: ClassVar[dict[str, Callable[[WebViewer, dict[str, Any]], None]]] = {
        "start": _on_start,
        "ack": _on_ack,
        "ping": _on_ping,
        "stats": _on_page_stats,
        "key": _on_key,
        "pointer": _on_pointer,
        "button": _on_button,
        "wheel": _on_wheel,
    }
