"""Who may watch and who may type: password login, token links, session cookies.

With a password set, every page and socket needs a session: one made by the
login form (full control), or by a token link printed at start (one for full
control, one for view only). Sessions live in memory and are lost on restart,
like the tokens. The WebSocket also checks ``Origin`` against the page's own
address, password or not, so no other web site open in the user's browser can
drive the VM through it.
"""

from __future__ import annotations

import collections
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from ..limits import host_of, peer_label
from ..net.guesses import GuessThrottle

log = logging.getLogger("saffron.web")

COOKIE = "saffron_session"
MAX_SESSIONS = 1024
"""Sessions kept at once; the oldest go first. Bounds memory whatever logins cost."""
SESSION_SECONDS = 12 * 3600

OPEN_PATHS = ("/login", "/healthz", "/favicon.ico", "/static/", "/spice")
"""Paths without a session: the login itself, health checks, the page's code (no
secrets in it) and SPICE over WebSocket, which has SPICE's own ticket check."""


@dataclass(frozen=True)
class Session:
    view_only: bool
    expires: float


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebAuth:
    def __init__(
        self, password: str | None, *, secure: bool, guesses: GuessThrottle | None = None
    ) -> None:
        self.password = password
        self.secure = secure
        self.guesses = guesses if guesses is not None else GuessThrottle()
        """Wrong passwords and tokens by address; shared with SPICE in a full Saffron."""
        self.full_token = secrets.token_urlsafe(24)
        self.view_token = secrets.token_urlsafe(24)
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.password is not None

    def session(self, request: web.Request) -> Session | None:
        """The request's session; with no password everyone has full control."""
        if not self.enabled:
            return Session(False, float("inf"))
        key = request.cookies.get(COOKIE, "")
        found = self._sessions.get(key)
        if found is None or found.expires < time.time():
            return None
        return found

    def _new_session(self, response: web.StreamResponse, view_only: bool) -> None:
        key = secrets.token_urlsafe(32)
        self._sessions[key] = Session(view_only, time.time() + SESSION_SECONDS)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        response.set_cookie(
            COOKIE,
            key,
            httponly=True,
            samesite="Strict",
            secure=self.secure,
            max_age=SESSION_SECONDS,
            path="/",
        )

    def _token_kind(self, token: str) -> bool | None:
        """None: not a token; else whether it is the view-only one."""
        if hmac.compare_digest(token.encode(), self.full_token.encode()):
            return False
        if hmac.compare_digest(token.encode(), self.view_token.encode()):
            return True
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/ws" or request.path.startswith("/spice"):
            _check_origin(request)
        if not self.enabled or request.path.startswith(OPEN_PATHS):
            return await handler(request)
        token = request.query.get("token")
        if token is not None and request.path == "/":
            waiting = self._must_wait(request)
            if waiting is not None:
                return waiting
            kind = self._token_kind(token)
            address, peer = _who(request)
            if kind is None:
                self.guesses.failed(address, peer, "web", "wrong token link")
                return _login_page("That link is not valid (any more).", status=403)
            self.guesses.succeeded(address)
            response = _see_other("/")
            self._new_session(response, view_only=kind)
            log.info(
                "%s signed in with a %s link",
                request.remote,
                "view-only" if kind else "full-control",
            )
            return response
        if self.session(request) is None:
            if request.path == "/":
                return _login_page("")
            raise web.HTTPUnauthorized(text="sign in first\n")
        return await handler(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return _login_page("")
        form = await request.post()
        given = str(form.get("password", ""))
        waiting = self._must_wait(request)  # after the body: guesses sent at once wait too
        if waiting is not None:
            return waiting
        address, peer = _who(request)
        if self.password is None or hmac.compare_digest(given.encode(), self.password.encode()):
            self.guesses.succeeded(address)
            response = _see_other("/")
            self._new_session(response, view_only=False)
            log.info("%s signed in with the password", request.remote)
            return response
        self.guesses.failed(address, peer, "web")
        return _login_page("Wrong password.", status=403)

    def _must_wait(self, request: web.Request) -> web.Response | None:
        """A 429 if the client's address guessed wrong too often lately: its password (or
        token) is then not checked at all, so parallel requests cannot guess faster."""
        seconds = self.guesses.refuse(*_who(request), "web")
        if not seconds:
            return None
        text = f"Too many wrong passwords, try again in {seconds:.0f} s."
        response = _login_page(text, status=429)
        response.headers["Retry-After"] = f"{seconds:.0f}"
        return response


def _who(request: web.Request) -> tuple[str, str]:
    """The client's IP address (what guesses are counted by) and its label for the log."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    if peername is None:
        return request.remote or "unknown", request.remote or "unknown"
    return host_of(peername), peer_label(peername)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _check_origin(request: web.Request) -> None:
    """A WebSocket from another site's page is refused: it would act with the user's cookie."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser (spice-html5 pages send one; scripts and tools do not)
    parts = urlsplit(origin)
    if parts.netloc.lower() != request.host.lower():
        log.warning("refused a WebSocket from %s: its page came from %s", request.remote, origin)
        raise web.HTTPForbidden(text="cross-origin WebSocket refused\n")


def _login_page(error: str, status: int = 200) -> web.Response:
    body = LOGIN_PAGE.replace("{{error}}", error)
    return web.Response(text=body, content_type="text/html", status=status)


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · Saffron</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { background: #111; color: #ddd; font: 15px system-ui, sans-serif;
       display: flex; align-items: center; justify-content: center; height: 100vh; margin: 0; }
form { background: #1c1c1c; padding: 24px 28px; border-radius: 8px; }
input { font: inherit; padding: 6px 8px; margin: 8px 0; width: 16em; }
.error { color: #f77; min-height: 1.2em; }
</style></head>
<body><form method="post" action="/login">
<div>Password for this display</div>
<input type="password" name="password" autofocus autocomplete="current-password">
<div><button type="submit">Sign in</button></div>
<div class="error">{{error}}</div>
</form></body></html>
"""
