"""The web front end: the viewer page, its WebSocket, metrics and health.

Each page is a :class:`WebViewer` in the broadcast. Its send window is counted
in frames the page has not yet acknowledged as decoded, so a page on a slow
link (or a slow decoder) simply stops being offered frames until it catches
up, and never builds a queue.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, ClassVar

from aiohttp import WSMsgType, web

from ..broadcast import Broadcast, Stream
from ..display import Button, Cursor, Display
from ..encoders.base import Packet
from ..keys import scancode_for
from ..ratecontrol import RateEstimator
from .auth import WebAuth
from .protocol import MAX_TEXT_MESSAGE, ProtocolError, pack_video

log = logging.getLogger("saffron.web")

WINDOW_FRAMES = 3
"""Frames sent but not yet decoded by the page. Three cover a LAN round trip at
60 fps; more would only let a queue (latency) build up on a slow link."""

WINDOW_BYTES = 4 << 20
"""Bytes waiting in the socket's buffer beyond which the page counts as behind,
whatever it has acknowledged: a guard against a page that acks but cannot read."""

STATS_INTERVAL = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebViewer:
    """One browser page: a Viewer for the broadcast and the page's input."""

    def __init__(
        self, server: WebServer, ws: web.WebSocketResponse, request: web.Request, view_only: bool
    ) -> None:
        self.server = server
        self.view_only = view_only or server.view_only
        self.ws = ws
        self.transport = request.transport
        self.label = f"web viewer {request.remote}"
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
                    break
        except ProtocolError as exc:
            log.warning("closing %s: %s", self.label, exc)
            await self.ws.close(code=1008, message=str(exc)[:120].encode())
        finally:
            self.closed = True
            sender.cancel()
            ticker.cancel()
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
            await self.ws.send_str(json.dumps(obj))

    def notify(self, obj: dict[str, Any]) -> None:
        """Queue a JSON message from a synchronous context on the loop."""
        if not self.closed:
            task = asyncio.ensure_future(self._send_json(obj))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        self.codec = codec
        self.stream = self.server.broadcast.join(self, codec)
        self._next, self._acked = 0, -1
        self._sent.clear()
        log.info("%s watches %s", self.label, codec)

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


class WebServer:
    """The aiohttp application and its viewers."""

    def __init__(
        self,
        display: Display,
        broadcast: Broadcast,
        *,
        codecs: list[str],
        default_codec: str,
        view_only: bool = False,
        extra_routes: dict[str, Handler] | None = None,
        producer: object | None = None,
        auth: WebAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.display = display
        self.broadcast = broadcast
        self.codecs = codecs
        self.default_codec = default_codec
        self.view_only = view_only
        self.viewers: set[WebViewer] = set()
        self.producer = producer
        self.loop = broadcast.loop
        self.auth = auth or WebAuth(None, secure=ssl_context is not None)
        self.ssl_context = ssl_context
        self.app = web.Application(middlewares=[self.auth.middleware])
        self.app.router.add_route("*", "/login", self.auth.login)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/ws", self._websocket)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/favicon.ico", self._no_content)
        self.app.router.add_get("/static/{name}", self._static)
        for path, handler in (extra_routes or {}).items():
            self.app.router.add_get(path, handler)
        self._runner: web.AppRunner | None = None
        display.add_listener(self)
        broadcast.failure_listeners.append(self._stream_failed)

    def hello(self, viewer: WebViewer | None = None) -> dict[str, Any]:
        d = self.display
        return {
            "type": "hello",
            "name": d.info.name,
            "codecs": self.codecs,
            "default": self.default_codec,
            "width": d.width,
            "height": d.height,
            "fps": self.broadcast.fps,
            "enabled": d.enabled,
            "viewOnly": viewer.view_only if viewer is not None else self.view_only,
        }

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context)
        await site.start()

    async def close(self) -> None:
        for viewer in list(self.viewers):
            await viewer.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- routes ---------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        page = _static_text("index.html").replace("{{title}}", _html(self.display.info.name))
        return web.Response(text=page, content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {".js": "text/javascript", ".css": "text/css"}
        ext = name[name.rfind(".") :] if "." in name else ""
        if ext not in types or "/" in name:
            raise web.HTTPNotFound()
        try:
            return web.Response(text=_static_text(name), content_type=types[ext])
        except FileNotFoundError:
            raise web.HTTPNotFound() from None

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_TEXT_MESSAGE * 4, heartbeat=30)
        await ws.prepare(request)
        session = self.auth.session(request)
        viewer = WebViewer(self, ws, request, view_only=session is None or session.view_only)
        self.viewers.add(viewer)
        log.info("%s connected", viewer.label)
        try:
            await viewer.run()
        finally:
            self.viewers.discard(viewer)
            log.info("%s left", viewer.label)
        return ws

    async def _no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "producer": self.display.enabled})

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = [
            "# HELP saffron_viewers Viewers connected, by front end.",
            "# TYPE saffron_viewers gauge",
            f'saffron_viewers{{frontend="web"}} {len(self.viewers)}',
            "# HELP saffron_producer_frames_total Frames the producer made or skipped.",
            "# TYPE saffron_producer_frames_total counter",
            f"saffron_producer_frames_total {getattr(self.producer, 'frames', 0)}",
            "# HELP saffron_frames_encoded_total Frames encoded, by codec.",
            "# TYPE saffron_frames_encoded_total counter",
        ]
        streams = self.broadcast.streams.values()
        lines += [
            f'saffron_frames_encoded_total{{codec="{s.codec}"}} {s.frames_encoded}' for s in streams
        ]
        lines += [
            "# HELP saffron_bytes_encoded_total Encoded bytes, by codec.",
            "# TYPE saffron_bytes_encoded_total counter",
        ]
        lines += [
            f'saffron_bytes_encoded_total{{codec="{s.codec}"}} {s.bytes_encoded}' for s in streams
        ]
        lines += [
            "# HELP saffron_frames_skipped_total Frames replaced before encoding.",
            "# TYPE saffron_frames_skipped_total counter",
        ]
        lines += [
            f'saffron_frames_skipped_total{{codec="{s.codec}"}} {s.slot.replaced}' for s in streams
        ]
        lines += [
            "# HELP saffron_frames_dropped_total Encoded frames a viewer missed.",
            "# TYPE saffron_frames_dropped_total counter",
        ]
        lines += [
            f'saffron_frames_dropped_total{{codec="{s.codec}"}} '
            f"{sum(seat.dropped for seat in s.seats.values())}"
            for s in streams
        ]
        lines += [
            "# HELP saffron_web_latency_ms Capture to acknowledged decode, per page.",
            "# TYPE saffron_web_latency_ms gauge",
        ]
        lines += [
            f'saffron_web_latency_ms{{viewer="{v.label}"}} {v.latency_ms:.1f}' for v in self.viewers
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # -- producer events (any thread) ------------------------------------------

    def _to_all(self, obj: dict[str, Any]) -> None:
        def send() -> None:
            for viewer in list(self.viewers):
                viewer.notify(obj)

        self.loop.call_soon_threadsafe(send)

    def on_resize(self, width: int, height: int) -> None:
        self._to_all({"type": "resize", "width": width, "height": height})

    def on_cursor(self, cursor: Cursor | None) -> None:
        if cursor is None:
            self._to_all({"type": "cursor", "hidden": True})
            return

        self._to_all(
            {
                "type": "cursor",
                "width": cursor.width,
                "height": cursor.height,
                "hotX": cursor.hot_x,
                "hotY": cursor.hot_y,
                "bgra": base64.b64encode(cursor.pixels).decode(),
            }
        )

    def on_cursor_move(self, x: int, y: int, visible: bool) -> None:
        pass  # the page draws the pointer where the user's mouse is

    def on_disable(self) -> None:
        self._to_all({"type": "status", "text": "waiting for the VM"})

    def _stream_failed(self, codec: str, reason: str) -> None:
        """A codec's every encoder broke: its pages move to the next codec and keep watching."""
        if codec in self.codecs:
            self.codecs = [c for c in self.codecs if c != codec]
        for viewer in list(self.viewers):
            if viewer.codec != codec:
                continue
            if self.codecs:
                log.warning("moving %s from %s to %s", viewer.label, codec, self.codecs[0])
                viewer.notify({"type": "switch", "codecs": self.codecs, "reason": reason})
            else:
                viewer.notify({"type": "error", "text": f"no encoder works any more: {reason}"})


def _static_text(name: str) -> str:
    return resources.files("saffron.web").joinpath("static", name).read_text("utf-8")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
