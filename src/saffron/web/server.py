"""The web front end: the viewer page, its WebSocket, metrics and health.

Each page is a :class:`WebViewer` in the broadcast. Its send window is counted
in frames the page has not yet acknowledged as decoded, so a page on a slow
link (or a slow decoder) simply stops being offered frames until it catches
up, and never builds a queue.

Every TCP connection passes through an :class:`_HttpGuard` before aiohttp sees
it: it takes a slot from the shared connection limits (or gets a 503) before
any TLS handshake, and is cut off when a request is not complete within
``HANDSHAKE_TIMEOUT_S``, which aiohttp alone does not do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, ClassVar

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from ..broadcast import Broadcast, Stream
from ..display import Button, Cursor, Display
from ..encoders.base import Packet
from ..net.admission import AdmittedConnection
from ..net.limits import (
    HANDSHAKE_TIMEOUT_S,
    ConnectionLimits,
    host_of,
    peer_label,
)
from ..net.origin import HostRule
from ..net.ratelimit import TokenBucket, TooManyMessages, message_cost
from ..net.websocket import WEBSOCKET_OPENED, WebSocket, open_websocket
from ..ratecontrol import RateEstimator
from .auth import COOKIE, WebAuth
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

HEARTBEAT_S = 30.0
"""A page's WebSocket is pinged this often; one that does not answer within half of
it is closed (a browser that vanished without closing its socket)."""

MAX_PENDING_MESSAGES = 256
"""JSON messages queued for a page that is not reading them (pongs it asked for,
cursor shapes): past this the page is closed rather than let memory grow."""

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

WEBSOCKET_PATHS = ("/ws", "/spice")
"""Where a browser opens a WebSocket: its ``Origin`` is checked even for a GET."""

SAFE_METHODS = ("GET", "HEAD")
"""Methods that change nothing; any other (the login and sign-out forms) has its Origin checked."""

FOREIGN_PAGES = "/spice-html5/"
"""Pages served here that are not Saffron's (spice-html5 has inline scripts): they get
only the framing rules, not Saffron's Content-Security-Policy."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'{sockets}; worker-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""For Saffron's own pages: no inline script (an injected one would not run), no
framing by other sites (clickjacking), connections only back to this server. The
page's mouse pointer is a ``data:`` image, hence ``img-src data:``; ``{sockets}``
names ws:// and wss:// on the page's host for browsers whose ``'self'`` does not
cover WebSockets."""

_PLAIN_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
"""A Host header fit to be written into the policy (nothing that could add a directive)."""

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
        limits: ConnectionLimits | None = None,
        host_rule: HostRule | None = None,
    ) -> None:
        self.display = display
        self.limits = limits if limits is not None else ConnectionLimits()
        self.handshakes: set[asyncio.Task[None]] = set()
        """TLS handshakes under way, cancelled on close (a socket waiting for one is not
        closed with the listener)."""
        self.broadcast = broadcast
        self.offered = codecs
        """The codecs offered, in the order of preference (see :attr:`codecs`)."""
        self.default_codec = default_codec
        self.view_only = view_only
        self.viewers: set[WebViewer] = set()
        self.producer = producer
        self.loop = broadcast.loop
        self.auth = auth or WebAuth(None, secure=ssl_context is not None)
        self.host_rule = host_rule or HostRule(password=self.auth.enabled)
        """Which Host and Origin requests may bring (DNS rebinding, other web sites)."""
        self.ssl_context = ssl_context
        self.app = web.Application(middlewares=[self._check_host, self.auth.middleware])
        self.app[WEBSOCKET_OPENED] = self._websocket_opened
        self.app.on_response_prepare.append(self._answered)
        self.app.on_response_prepare.append(_security_headers)
        self.app.router.add_route("*", "/login", self.auth.login)
        self.app.router.add_post("/logout", self.auth.logout)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/ws", self._websocket)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/favicon.ico", self._no_content)
        self.app.router.add_get("/static/{name}", self._static)
        for path, handler in (extra_routes or {}).items():
            self.app.router.add_get(path, handler)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        display.add_listener(self)
        broadcast.failure_listeners.append(self._stream_failed)

    def _websocket_opened(self, ws: WebSocket, request: web.Request) -> None:
        """Opened under a session (a cookie), a WebSocket is closed when that session ends."""
        session = self.auth.signed_in(request)
        if session is not None:
            session.sockets.add(ws)
            ws.on_close.append(session.sockets.discard)

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
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, logger=HTTP_LOG
        )
        await self._runner.setup()
        handler = self._runner.server
        assert handler is not None
        limits, loop = self.limits, asyncio.get_running_loop()
        tls, handshakes = self.ssl_context, self.handshakes
        self._listener = await loop.create_server(
            lambda: _HttpGuard(handler(), limits, loop, tls, handshakes), host, port
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the page listens (the real port when 0 was asked for)."""
        if self._listener is None:
            return []
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self._listener.sockets]

    async def close(self, reason: str = "Saffron stopped") -> None:
        """Stop listening and close every page, telling it ``reason`` (logged as why it left)."""
        if self._listener is not None:
            self._listener.close()
        for task in list(self.handshakes):
            task.cancel()
        closing = []
        for viewer in list(self.viewers):
            viewer.end = reason
            message = reason.encode()[:120]  # the page shows it; a close frame holds 123 bytes
            closing.append(viewer.ws.close(code=WSCloseCode.GOING_AWAY, message=message))
        await asyncio.gather(*closing, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    async def _answered(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp prepares a response: tell the connection's guard (on_response_prepare),
        and whether the client has authenticated (see saffron.net.limits): its request came
        with a valid session, or the answer gives one."""
        transport = request.transport
        guard = transport.get_protocol() if transport is not None else None
        if isinstance(guard, _HttpGuard):
            given = response.cookies.get(COOKIE)
            signed_in = self.auth.session(request) is not None or bool(given and given.value)
            guard.answered(isinstance(response, web.WebSocketResponse), signed_in)

    # -- routes ---------------------------------------------------------------

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse a Host Saffron does not answer to (DNS rebinding), and a foreign Origin on a
        WebSocket or a form post: another site's page would act with the user's cookie."""
        host = request.headers.get("Host")
        refusal = self.host_rule.host_refusal(host)
        if refusal is None and (
            request.path in WEBSOCKET_PATHS or request.method not in SAFE_METHODS
        ):
            refusal = self.host_rule.origin_refusal(request.headers.get("Origin"), host)
        if refusal is not None:
            transport = request.transport
            peer = peer_label(transport.get_extra_info("peername") if transport else None)
            log.warning("refused %s %s from %s: %s", request.method, request.path, peer, refusal)
            raise web.HTTPForbidden(text=f"refused: {refusal}\n")
        return await handler(request)

    async def _index(self, request: web.Request) -> web.Response:
        page = _static_text("index.html").replace("{{title}}", _html(self.display.info.name))
        page = page.replace("{{signout}}", SIGN_OUT if self.auth.enabled else "")
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

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = WebSocket(max_msg_size=MAX_TEXT_MESSAGE * 4, heartbeat=HEARTBEAT_S)
        refused = await open_websocket(ws, request, "WebSocket")
        if refused is not None:
            return refused
        session = self.auth.session(request)
        viewer = WebViewer(self, ws, request, view_only=session is None or session.view_only)
        self.viewers.add(viewer)
        log.info("%s connected", viewer.label)
        try:
            await viewer.run()
        finally:
            self.viewers.discard(viewer)
            log.info("%s left (%s)", viewer.label, viewer.end or ws.ended or _close_reason(ws))
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

    @property
    def codecs(self) -> list[str]:
        """The offered codecs whose encoder still works, best first."""
        return self.broadcast.working(self.offered)

    def _to_all(self, obj: dict[str, Any]) -> None:
        def send() -> None:
            for viewer in list(self.viewers):
                viewer.notify(obj)

        self.broadcast.call_soon(send)

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

    def _stream_failed(self, codec: str, reason: str, news: bool) -> None:
        """A codec's every encoder broke: its pages move to the next codec and keep watching."""
        for viewer in list(self.viewers):
            if viewer.codec != codec:
                continue
            if self.codecs:
                log.warning("moving %s from %s to %s", viewer.label, codec, self.codecs[0])
                viewer.notify({"type": "switch", "codecs": self.codecs, "reason": reason})
            else:
                viewer.notify({"type": "error", "text": f"no encoder works any more: {reason}"})


class _HttpGuard(AdmittedConnection):
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
    ) -> None:
        super().__init__(limits, tls, "web", handshakes)
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


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer: no framing by another site (clickjacking), no guessing of content
    types, no address (with its token) sent to another site as a Referer; Saffron's own
    pages also get the Content-Security-Policy (on_response_prepare)."""
    headers = response.headers
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"  # "no-referrer" makes form posts' Origin null
    if request.path.startswith(FOREIGN_PAGES):
        headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        return
    host = request.headers.get("Host", "")
    sockets = f" ws://{host} wss://{host}" if _PLAIN_HOST.fullmatch(host) else ""
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(sockets=sockets)


SIGN_OUT = (
    '<form id="signout" method="post" action="/logout">'
    '<button type="submit" title="End this session">sign out</button></form>'
)
"""The page's sign-out button, when there is a password to sign in with again."""


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


def _close_reason(ws: web.WebSocketResponse) -> str:
    code = ws.close_code
    if code is None or code == 1006:
        return "the connection dropped"
    return f"the page closed it, code {code}"


def _static_text(name: str) -> str:
    return resources.files("saffron.web").joinpath("static", name).read_text("utf-8")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
