"""The web front end's server: the viewer page, its WebSocket, metrics and health.

Each page is a :class:`~.viewer.WebViewer` in the broadcast; every connection
passes through a :class:`~.guard.HttpGuard` first. This module holds the routes,
the Host and Origin check, the security headers and what producers tell every
page (resize, cursor, codec failures).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, web

from ..audio import AudioBroadcast
from ..broadcast import Broadcast
from ..clipboard import ClipboardBroadcast
from ..display import Cursor, Display, now_us
from ..mic import MicInput
from ..net.limits import ConnectionLimits
from ..net.origin import PLAIN_HOST, HostRule
from ..net.websocket import WEBSOCKET_OPENED, WebSocket, open_websocket
from ..still import TILE_H, TILE_W
from .auth import WebAuth
from .client import SITE, Site, client_of
from .guard import HTTP_LOG, HttpGuard
from .protocol import MAX_CLIPBOARD_MESSAGE
from .viewer import WebViewer

log = logging.getLogger("saffron.web")

HEARTBEAT_S = 30.0
"""A page's WebSocket is pinged this often; one that does not answer within half of
it is closed (a browser that vanished without closing its socket)."""


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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        site: Site | None = None,
        audio: AudioBroadcast | None = None,
        mic: MicInput | None = None,
        clipboard: ClipboardBroadcast | None = None,
        more_screens: Sequence[tuple[Display, Broadcast]] = (),
    ) -> None:
        self.display = display
        self.screens = [(display, broadcast), *more_screens]
        """The producer's screens: a page shows one (``?screen=N``, 0 by default)."""
        self.site = site if site is not None else Site()
        """Where the page is published (``--base-path``) and the proxies trusted."""
        self.audio = audio
        self.clipboard = clipboard
        """The producer's sound for pages that turn it on; None: no sound."""
        self.mic = mic
        """Where pages' microphones go (the guest's recording); None: nowhere."""
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
        self.app = web.Application(
            middlewares=[self._front, self._check_host, self.auth.middleware]
        )
        self.app[SITE] = self.site
        self.app[WEBSOCKET_OPENED] = self._websocket_opened
        self.app.on_response_prepare.append(self._answered)
        self.app.on_response_prepare.append(_security_headers)
        route = self.site.route
        self.app.router.add_route("*", route("/login"), self.auth.login)
        self.app.router.add_post(route("/logout"), self.auth.logout)
        self.app.router.add_get(route("/"), self._index)
        self.app.router.add_get(route("/ws"), self._websocket)
        self.app.router.add_get(route("/metrics"), self._metrics)
        self.app.router.add_get(route("/healthz"), self._healthz)
        self.app.router.add_get(route("/favicon.ico"), self._no_content)
        self.app.router.add_get(route("/static/{name}"), self._static)
        for path, handler in (extra_routes or {}).items():
            self.app.router.add_get(route(path), handler)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._listeners = [_ScreenEvents(self, k) for k in range(len(self.screens))]
        for (screen, frames), listener in zip(self.screens, self._listeners, strict=True):
            screen.add_listener(listener)
            frames.failure_listeners.append(self._stream_failed)

    def _websocket_opened(self, ws: WebSocket, request: web.Request) -> None:
        """Opened under a session (a cookie), a WebSocket is closed when that session ends."""
        session = self.auth.signed_in(request)
        if session is not None:
            session.sockets.add(ws)
            ws.on_close.append(session.sockets.discard)

    def screen(self, index: int) -> tuple[Display, Broadcast]:
        return self.screens[index]

    def hello(self, viewer: WebViewer | None = None) -> dict[str, Any]:
        index = viewer.screen if viewer is not None else 0
        d = self.screens[index][0]
        return {
            "type": "hello",
            "name": d.info.name,
            "codecs": self.codecs,
            "default": self.default_codec,
            "width": d.width,
            "height": d.height,
            "fps": self.broadcast.fps,
            "enabled": d.enabled,
            "now": now_us(),
            "viewOnly": viewer.view_only if viewer is not None else self.view_only,
            "tile": [TILE_W, TILE_H],
            "audio": self.audio is not None and self.audio.available,
            "mic": self.mic is not None and self.mic.available,
            "clipboard": self.clipboard is not None and self.clipboard.available,
            "screen": index,
            "screens": [{"width": s.width, "height": s.height} for s, _ in self.screens],
        }

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, logger=HTTP_LOG
        )
        await self._runner.setup()
        handler = self._runner.server
        assert handler is not None
        limits, loop = self.limits, asyncio.get_running_loop()
        tls, handshakes, proxies = self.ssl_context, self.handshakes, self.site.proxies
        self._listener = await loop.create_server(
            lambda: HttpGuard(handler(), limits, loop, tls, handshakes, proxies), host, port
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
        if isinstance(guard, HttpGuard):
            given = response.cookies.get(client_of(request).cookie)
            signed_in = self.auth.session(request) is not None or bool(given and given.value)
            guard.answered(isinstance(response, web.WebSocketResponse), signed_in)

    # -- routes ---------------------------------------------------------------

    @web.middleware
    async def _front(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Only paths under ``--base-path`` are Saffron's. Through a trusted proxy, the
        connection counts as its client's from now on (X-Forwarded-For): over that
        address's cap the request is answered 503 and the connection closed."""
        client = client_of(request)
        if client.path is None:
            base = self.site.base_path
            if request.path == base[:-1]:  # the page's relative links need the slash
                query = request.query_string
                raise web.HTTPFound(base + ("?" + query if query else ""))
            raise web.HTTPNotFound(text=f"not here: Saffron's page is at {base}\n")
        transport = request.transport
        guard = transport.get_protocol() if transport is not None else None
        if isinstance(guard, HttpGuard) and not guard.forwarded(client.address, client.peer):
            response = web.Response(
                status=503,
                text="Saffron has too many connections from your address; try again later.\n",
                headers={"Retry-After": "10"},
            )
            response.force_close()
            return response
        return await handler(request)

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse a Host Saffron does not answer to (DNS rebinding), and a foreign Origin on a
        WebSocket or a form post: another site's page would act with the user's cookie.
        Behind a trusted proxy the Host is the one the browser gave the proxy."""
        client = client_of(request)
        host = client.host or None
        refusal = self.host_rule.host_refusal(host)
        if refusal is None and (
            client.path in WEBSOCKET_PATHS or request.method not in SAFE_METHODS
        ):
            refusal = self.host_rule.origin_refusal(request.headers.get("Origin"), host)
        if refusal is not None:
            log.warning(
                "refused %s %s from %s: %s", request.method, request.path, client.peer, refusal
            )
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
        screen = self._screen_asked(request)
        ws = WebSocket(max_msg_size=MAX_CLIPBOARD_MESSAGE * 4, heartbeat=HEARTBEAT_S)
        refused = await open_websocket(ws, request, "WebSocket")
        if refused is not None:
            return refused
        session = self.auth.session(request)
        view_only = session is None or session.view_only
        viewer = WebViewer(self, ws, request, view_only=view_only, screen=screen)
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

    def _screen_asked(self, request: web.Request) -> int:
        """The page's ``?screen=N`` (0 when it names none); another answers 400."""
        text = request.query.get("screen", "0")
        if not text.isdigit() or int(text) >= len(self.screens):
            raise web.HTTPBadRequest(
                text=f"no screen {text[:20]!r} here: there are {len(self.screens)} (0 to "
                f"{len(self.screens) - 1})"
            )
        return int(text)

    def _to_all(self, obj: dict[str, Any], screen: int = 0) -> None:
        """Tell every page that shows ``screen`` (from any thread)."""

        def send() -> None:
            for viewer in list(self.viewers):
                if viewer.screen == screen:
                    viewer.notify(obj)

        self.screens[screen][1].call_soon(send)

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


class _ScreenEvents:
    """What one screen's display says, told to the pages that show it (a DisplayListener)."""

    def __init__(self, server: WebServer, index: int) -> None:
        self.server = server
        self.index = index

    def _to_all(self, obj: dict[str, Any]) -> None:
        self.server._to_all(obj, self.index)

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
        # "after": a frame captured before it (one still queued, or the last picture
        # encoded again for a keyframe) must not clear it.
        self._to_all({"type": "status", "text": "waiting for the VM", "after": now_us()})


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer: no framing by another site (clickjacking), no guessing of content
    types, no address (with its token) sent to another site as a Referer; Saffron's own
    pages also get the Content-Security-Policy (on_response_prepare)."""
    headers = response.headers
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"  # "no-referrer" makes form posts' Origin null
    client = client_of(request)
    if (client.path or "").startswith(FOREIGN_PAGES):
        headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        return
    host = client.host
    sockets = f" ws://{host} wss://{host}" if PLAIN_HOST.fullmatch(host) else ""
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(sockets=sockets)


SIGN_OUT = (
    '<form id="signout" method="post" action="logout">'
    '<button type="submit" title="End this session">sign out</button></form>'
)
"""The page's sign-out button, when there is a password to sign in with again."""


def _close_reason(ws: web.WebSocketResponse) -> str:
    code = ws.close_code
    if code is None or code == 1006:
        return "the connection dropped"
    return f"the page closed it, code {code}"


def _static_text(name: str) -> str:
    return resources.files("saffron.web").joinpath("static", name).read_text("utf-8")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
