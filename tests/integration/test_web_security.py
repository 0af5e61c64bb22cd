"""The web port against other web sites, token users and time: Host and Origin (DNS
rebinding), sessions that end (sign-out, new token links, expiry, too many view-only
sign-ins) and take their WebSockets with them, framing and inline script (CSP), and a
password comparison that does not show the password's length. Real clients on
loopback against the whole in-process Server (app.py's wiring included)."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import (
    ClientSession,
    ClientWebSocketResponse,
    CookieJar,
    DummyCookieJar,
    WSMsgType,
    WSServerHandshakeError,
)

from saffron.net.websocket import ENDED_BY_SERVER as SESSION_ENDED
from saffron.web import auth as web_auth
from tests.support.harness import RecordingInput, saffron_here
from tests.support.process import run_saffron
from tests.support.wait import wait_until

PASSWORD = "correct horse"
KEY_A = ("key", 0x1E, True)
VIEW_ONLY_SIGN_INS = 1025
"""The review's figure: one more than the sessions Saffron kept in all."""


def cookies() -> ClientSession:
    return ClientSession(cookie_jar=CookieJar(unsafe=True))


async def type_a_key(
    s: ClientSession, port: int, rec: RecordingInput, headers: dict[str, str] | None = None
) -> bool:
    """Open the page's WebSocket as a browser would, press A: did the key reach the VM?"""
    ws = await s.ws_connect(f"http://127.0.0.1:{port}/ws", headers=headers)
    assert json.loads((await ws.receive()).data)["type"] == "hello"
    await ws.send_str(json.dumps({"type": "key", "code": "KeyA", "down": True}))
    arrived = await asyncio.to_thread(wait_until, lambda: KEY_A in rec.events, 2.0)
    await ws.close()
    return arrived


async def closed_with(ws: ClientWebSocketResponse) -> tuple[int | None, str]:
    """The close code and reason the server ended ``ws`` with."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type == WSMsgType.CLOSE:
            return int(msg.data), str(msg.extra or "")
        if msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING):
            return ws.close_code, ""


# -- Host and Origin (DNS rebinding) ------------------------------------------------------


async def test_rebinding_host_is_refused_without_a_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with saffron_here() as (_, port, rec), ClientSession() as s:
        evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        with pytest.raises(WSServerHandshakeError) as refused:
            await type_a_key(s, port, rec, evil)
        assert refused.value.status == 403
        for path in ("/", "/spice"):  # the page, and SPICE over WebSocket on the web port
            async with s.get(f"http://127.0.0.1:{port}{path}", headers=evil) as r:
                assert r.status == 403
        await asyncio.sleep(0.2)
        assert rec.events == [], "a rebinding page typed into the VM"
        said = caplog.text
        assert "refused GET /ws from 127.0.0.1:" in said and "'evil.example'" in said
        assert "DNS rebinding" in said
        mine = {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"}
        assert await type_a_key(s, port, rec, mine)


async def test_an_allowed_host_name_works() -> None:
    async with saffron_here(allowed_hosts=("vm.test",)) as (_, port, rec), ClientSession() as s:
        named = {"Host": f"vm.test:{port}", "Origin": f"http://vm.test:{port}"}
        assert await type_a_key(s, port, rec, named)
        other = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        with pytest.raises(WSServerHandshakeError):
            await type_a_key(s, port, rec, other)


async def test_with_a_password_the_origin_is_still_checked() -> None:
    async with saffron_here(password=PASSWORD) as (server, port, rec), cookies() as s:
        url = f"http://127.0.0.1:{port}/"
        async with s.post(
            url + "login", data={"password": PASSWORD}, headers={"Origin": "http://evil.example"}
        ) as r:
            assert r.status == 403, "a login form posted from another site"
        async with s.get(url + f"?token={server.auth.full_token}") as r:
            assert r.status == 200
        evil = {"Origin": f"http://evil.example:{port}"}
        for path in ("ws", "spice"):
            with pytest.raises(WSServerHandshakeError) as refused:
                await s.ws_connect(url + path, headers=evil)
            assert refused.value.status == 403
        assert rec.events == []
        # Any Host may sign in (a rebinding page has no cookie for its name).
        async with s.get(url, headers={"Host": f"vm.example.org:{port}"}) as r:
            assert r.status == 200
        assert await type_a_key(s, port, rec, {"Origin": f"http://127.0.0.1:{port}"})


# -- sessions -----------------------------------------------------------------------------


async def test_view_only_sign_ins_do_not_sign_out_full_control() -> None:
    async with saffron_here(password=PASSWORD) as (server, port, rec), cookies() as s:
        url = f"http://127.0.0.1:{port}/"
        async with s.get(url + f"?token={server.auth.full_token}") as r:
            assert r.status == 200
        async with ClientSession(cookie_jar=DummyCookieJar()) as flood:
            for _ in range(VIEW_ONLY_SIGN_INS):
                async with flood.get(
                    url + f"?token={server.auth.view_token}", allow_redirects=False
                ) as r:
                    assert r.status == 303
        async with s.get(url + "metrics") as r:
            assert r.status == 200, "the full-control session was dropped"
        assert await type_a_key(s, port, rec)
        assert web_auth.MAX_VIEW_SESSIONS < VIEW_ONLY_SIGN_INS, "the test no longer fills the cap"


async def test_sign_out_closes_the_page_and_its_spice_websocket() -> None:
    async with saffron_here(password=PASSWORD) as (_, port, _rec), cookies() as s:
        url = f"http://127.0.0.1:{port}/"
        async with s.post(url + "login", data={"password": PASSWORD}) as r:
            page = await r.text()
            assert 'action="logout"' in page
        ws = await s.ws_connect(url + "ws")
        spice = await s.ws_connect(url + "spice", protocols=("binary",))
        await ws.receive()  # hello
        async with s.post(url + "logout", headers={"Origin": url.rstrip("/")}) as r:
            assert r.status == 200 and 'name="password"' in await r.text()
        assert await closed_with(ws) == (SESSION_ENDED, "signed out")
        assert (await closed_with(spice))[0] == SESSION_ENDED
        with pytest.raises(WSServerHandshakeError) as refused:
            await s.ws_connect(url + "ws")
        assert refused.value.status == 401


async def test_new_token_links_end_the_old_links_sessions() -> None:
    async with saffron_here(password=PASSWORD) as (server, port, rec), cookies() as by_token:
        url = f"http://127.0.0.1:{port}/"
        old = server.auth.full_token
        await by_token.get(url + f"?token={old}")
        token_ws = await by_token.ws_connect(url + "ws")
        await token_ws.receive()
        async with cookies() as by_password:
            await by_password.post(url + "login", data={"password": PASSWORD})
            password_ws = await by_password.ws_connect(url + "ws")
            await password_ws.receive()

            assert server.auth.rotate_tokens() == 1
            code, reason = await closed_with(token_ws)
            assert (code, reason) == (SESSION_ENDED, "the token links were replaced")
            await password_ws.send_str(json.dumps({"type": "key", "code": "KeyA", "down": True}))
            assert await asyncio.to_thread(wait_until, lambda: KEY_A in rec.events, 2.0)
            await password_ws.close()
        async with cookies() as s:
            async with s.get(url + f"?token={old}") as r:
                assert r.status == 403
            async with s.get(url + f"?token={server.auth.full_token}") as r:
                assert r.status == 200 and "static/app.js" in await r.text()


async def test_an_expired_session_closes_its_websocket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_auth, "SESSION_SECONDS", 0.5)
    async with saffron_here(password=PASSWORD) as (_, port, _rec), cookies() as s:
        url = f"http://127.0.0.1:{port}/"
        await s.post(url + "login", data={"password": PASSWORD})
        ws = await s.ws_connect(url + "ws")
        await ws.receive()
        assert await closed_with(ws) == (SESSION_ENDED, "the session expired")


def test_sighup_makes_new_token_links(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    with run_saffron("serve", "--source", "pattern", "--password-file", str(password)) as proc:
        old = proc.output().split("?token=")[1].split()[0]
        proc.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "new links" in proc.output(), 10), proc.output()
        new = proc.output().split("new links")[1].split("?token=")[1].split()[0]
        assert new != old
        opener = urllib.request.build_opener(_NoRedirect())
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(proc.url + f"?token={old}", timeout=10)
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as taken:
            opener.open(proc.url + f"?token={new}", timeout=10)
        assert taken.value.code == 303  # signed in: on to the page
        assert proc.proc.poll() is None, "SIGHUP must not stop Saffron"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# -- framing and inline script ------------------------------------------------------------


async def test_pages_forbid_framing_and_inline_script() -> None:
    async with saffron_here(password=PASSWORD) as (_, port, _rec), cookies() as s:
        url = f"http://127.0.0.1:{port}/"
        async with s.get(url) as r:
            login = await r.text()
            assert 'name="password"' in login
            _assert_locked_down(r.headers, port)
        await s.post(url + "login", data={"password": PASSWORD})
        async with s.get(url) as r:
            page = await r.text()
            assert "static/app.js" in page
            _assert_locked_down(r.headers, port)
        async with s.get(url + "static/app.js") as r:
            assert r.headers["X-Frame-Options"] == "DENY"
        for html in (login, page):
            scripts = re.findall(r"<script\b[^>]*>", html, re.I)
            assert all(" src=" in tag for tag in scripts), scripts
            assert not re.search(r"<style\b|\son[a-z]+\s*=|\sstyle\s*=", html, re.I)


def _assert_locked_down(headers: Any, port: int) -> None:
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"  # no-referrer: form posts say Origin null
    csp = {d.split()[0]: d.split()[1:] for d in headers["Content-Security-Policy"].split("; ")}
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["default-src"] == ["'self'"]
    assert f"ws://127.0.0.1:{port}" in csp["connect-src"]


# -- the password's length ----------------------------------------------------------------


@pytest.mark.parametrize("given", ["x", "a much longer wrong password than the real one"])
async def test_the_password_comparison_does_not_show_its_length(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    async with saffron_here(password=PASSWORD) as (_, port, _rec), cookies() as s:
        url = f"http://127.0.0.1:{port}/"
        async with s.post(url + "login", data={"password": given}) as r:
            assert r.status == 403
        async with s.get(url + f"?token={given}") as r:
            assert r.status == 403
    assert compared and all(lengths == (32, 32) for lengths in compared), compared
