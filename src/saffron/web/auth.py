"""Who may watch and who may type: password login, token links, session cookies.

With a password set, every page and socket needs a session: one made by the
login form (full control), or by a token link printed at start (one for full
control, one for view only). Sessions live in memory and are lost on restart,
like the tokens. A session ends when its user signs out (``POST /logout``),
when it expires, when the token links are replaced (SIGHUP: sessions made from
the old links end, password sessions stay), or when too many sessions of its
kind were made after it; then every WebSocket opened under it is closed.
Which ``Host`` and ``Origin`` a request may bring is the web server's business
(:mod:`saffron.net.origin`), checked before this.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from ..net.guesses import GuessThrottle
from ..net.passwords import passwords_match
from .client import client_of

log = logging.getLogger("saffron.web")

MAX_SESSIONS = 1024
"""Full-control sessions kept at once; the oldest go first. Bounds memory whatever
logins cost. View-only sessions are counted apart (``MAX_VIEW_SESSIONS``), so a
view-only link used over and over never signs out someone with full control."""
MAX_VIEW_SESSIONS = 1024
"""View-only sessions kept at once; a new one past this ends the oldest view-only one."""
SESSION_SECONDS = 12 * 3600

OPEN_PATHS = ("/login", "/logout", "/healthz", "/favicon.ico", "/static/", "/spice")
"""Paths without a session: the login itself, signing out (without a session there is
nothing to end), health checks, the page's code (no secrets in it) and SPICE over
WebSocket, which has SPICE's own ticket check."""


class Socket(Protocol):
    """A WebSocket as a session sees it: something to end when the session ends."""

    def end(self, reason: str) -> None: ...


@dataclass(eq=False)
class Session:
    view_only: bool
    expires: float
    from_token: bool = False
    """Made from a token link (not the password): ends when the links are replaced."""
    key: str = ""
    sockets: set[Socket] = field(default_factory=set)
    """WebSockets opened under this session, closed when it ends."""
    timer: asyncio.TimerHandle | None = None
    """Ends the session when it expires."""


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
        self._sessions: dict[bool, collections.OrderedDict[str, Session]] = {
            False: collections.OrderedDict(),
            True: collections.OrderedDict(),
        }
        """Full-control (False) and view-only (True) sessions by cookie, oldest first."""

    @property
    def enabled(self) -> bool:
        return self.password is not None

    def session(self, request: web.Request) -> Session | None:
        """The request's session; with no password everyone has full control."""
        if not self.enabled:
            return Session(False, float("inf"))
        return self.signed_in(request)

    def signed_in(self, request: web.Request) -> Session | None:
        """The session the request's cookie names, if it is valid (never one without a
        password: then there are no sessions to end)."""
        key = request.cookies.get(client_of(request).cookie, "")
        for sessions in self._sessions.values():
            found = sessions.get(key)
            if found is not None:
                return found if found.expires >= time.time() else None
        return None

    def _new_session(
        self, request: web.Request, response: web.StreamResponse, view_only: bool, from_token: bool
    ) -> None:
        key = secrets.token_urlsafe(32)
        expires = time.time() + SESSION_SECONDS
        session = Session(view_only, expires, from_token, key)
        session.timer = asyncio.get_running_loop().call_later(
            SESSION_SECONDS, self.end_session, session, "the session expired"
        )
        sessions = self._sessions[view_only]
        cap = MAX_VIEW_SESSIONS if view_only else MAX_SESSIONS
        if len(sessions) >= cap:
            self._drop_expired()
        while len(sessions) >= cap:
            oldest = next(iter(sessions.values()))
            self.end_session(oldest, "too many sessions were made after it")
        sessions[key] = session
        client = client_of(request)
        response.set_cookie(  # this Saffron's own (see web.client): its path, and its name
            client.cookie,
            key,
            httponly=True,
            samesite="Strict",
            secure=self.secure or client.secure,
            max_age=SESSION_SECONDS,
            path=client.prefix,
        )

    def _drop_expired(self) -> None:
        """Sessions past their time whose timer has not run yet (the clock jumped)."""
        now = time.time()
        for sessions in self._sessions.values():
            for session in [s for s in sessions.values() if s.expires < now]:
                self.end_session(session, "the session expired")

    def end_session(self, session: Session, reason: str) -> None:
        """Forget ``session`` and close every WebSocket opened under it, telling it ``reason``."""
        if self._sessions[session.view_only].pop(session.key, None) is None:
            return
        if session.timer is not None:
            session.timer.cancel()
        for socket in list(session.sockets):
            socket.end(reason)
        session.sockets.clear()

    def rotate_tokens(self) -> int:
        """New token links; the sessions made from the old ones end (password sessions stay).
        Returns how many sessions ended."""
        self.full_token = secrets.token_urlsafe(24)
        self.view_token = secrets.token_urlsafe(24)
        ended = [s for d in self._sessions.values() for s in d.values() if s.from_token]
        for session in ended:
            self.end_session(session, "the token links were replaced")
        log.info("made new token links; %d session(s) made from the old ones ended", len(ended))
        return len(ended)

    def _token_kind(self, token: str) -> bool | None:
        """None: not a token; else whether it is the view-only one."""
        if passwords_match(token.encode(), self.full_token):
            return False
        if passwords_match(token.encode(), self.view_token):
            return True
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = client_of(request).path or ""
        if not self.enabled or path.startswith(OPEN_PATHS):
            return await handler(request)
        token = request.query.get("token")
        if token is not None and path == "/":
            waiting = self._must_wait(request)
            if waiting is not None:
                return waiting
            kind = self._token_kind(token)
            address, peer = _who(request)
            if kind is None:
                return self._refuse_login(
                    request, "wrong token link", "That link is not valid (any more)."
                )
            self.guesses.succeeded(address)
            response = _see_other(PAGE)
            self._new_session(request, response, view_only=kind, from_token=True)
            log.info(
                "%s signed in with a %s link",
                peer,
                "view-only" if kind else "full-control",
            )
            return response
        if self.session(request) is None:
            if path == "/":
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
        if self.password is None or passwords_match(given.encode(), self.password):
            self.guesses.succeeded(address)
            response = _see_other(PAGE)
            self._new_session(request, response, view_only=False, from_token=False)
            log.info("%s signed in with the password", peer)
            return response
        return self._refuse_login(request, "wrong password", "Wrong password.")

    def _refuse_login(self, request: web.Request, what: str, text: str) -> web.Response:
        """Every failed sign-in (password or token link) comes here: counted, refused."""
        self.guesses.failed(*_who(request), "web", what)
        return _login_page(text, status=403)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """``POST /logout``: end this browser's session and its WebSockets, back to the login."""
        session = self.signed_in(request)
        if session is not None:
            self.end_session(session, "signed out")
            log.info("%s signed out", _who(request)[1])
        response = _see_other(PAGE)
        client = client_of(request)
        response.del_cookie(client.cookie, path=client.prefix)
        return response

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
    """The client's IP address (what guesses are counted by) and its label for the log:
    behind a trusted proxy, the proxy's client."""
    client = client_of(request)
    return client.address, client.peer


PAGE = "./"
"""Where a sign-in or sign-out sends the browser: the page, relative to the form's own
address, so that it stays under whatever path a proxy publishes Saffron at."""


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _login_page(error: str, status: int = 200) -> web.Response:
    body = LOGIN_PAGE.replace("{{error}}", error)
    return web.Response(text=body, content_type="text/html", status=status)


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · Saffron</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="static/login.css">
</head>
<body><form method="post" action="login">
<div>Password for this display</div>
<input type="password" name="password" autofocus autocomplete="current-password">
<div><button type="submit">Sign in</button></div>
<div class="error">{{error}}</div>
</form></body></html>
"""
