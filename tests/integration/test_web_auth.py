"""Web sign-in: password form, token links, cookies, Origin, view-only; HTTPS; CLI refusals."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar, WSServerHandshakeError

from saffron.app import Options, StartupError, check_exposure
from saffron.display import Display
from saffron.net.tls import self_signed
from saffron.web.auth import WebAuth
from saffron.web.client import COOKIE
from tests.support.harness import RecordingInput, web_site
from tests.support.process import run_saffron

PASSWORD = "correct horse"
Site = tuple[str, WebAuth, Display, RecordingInput]


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    auth = WebAuth(PASSWORD, secure=False)
    async with web_site(codecs=["mjpeg"], default_codec="mjpeg", auth=auth) as s:
        yield s.url, auth, s.display, s.input


async def test_password_form_and_session_cookie(
    site: tuple[str, WebAuth, Display, RecordingInput],
) -> None:
    url, *_ = site
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as s:
        async with s.get(url) as r:
            assert r.status == 200 and 'name="password"' in await r.text()
        async with s.get(url + "metrics") as r:
            assert r.status == 401
        with pytest.raises(WSServerHandshakeError) as refused:
            await s.ws_connect(url + "ws")
        assert refused.value.status == 401
        async with s.post(url + "login", data={"password": "wrong"}) as r:
            assert r.status == 403 and "Wrong password" in await r.text()
        assert not s.cookie_jar.filter_cookies(url)
        async with s.post(url + "login", data={"password": PASSWORD}, allow_redirects=False) as r:
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
            assert COOKIE in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert "Secure" not in cookie  # plain HTTP here; see the TLS test
        async with s.get(url) as r:
            assert "static/app.js" in await r.text()
        ws = await s.ws_connect(url + "ws")
        hello = json.loads((await ws.receive()).data)
        assert hello["viewOnly"] is False
        await ws.close()


async def test_token_links_full_and_view_only(
    site: tuple[str, WebAuth, Display, RecordingInput],
) -> None:
    url, auth, _, rec = site
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as s:
        async with s.get(url + f"?token={auth.view_token}") as r:
            assert r.status == 200 and str(r.url) == url  # the token left the address bar
        ws = await s.ws_connect(url + "ws")
        hello = json.loads((await ws.receive()).data)
        assert hello["viewOnly"] is True
        await ws.send_str(json.dumps({"type": "key", "code": "KeyA", "down": True}))
        await ws.send_str(json.dumps({"type": "start", "codec": "mjpeg"}))
        await asyncio.sleep(0.2)
        assert rec.events == [], "a view-only session must not type"
        await ws.close()
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as s:
        async with s.get(url + "?token=not-a-token") as r:
            assert r.status == 403
        async with s.get(url + f"?token={auth.full_token}") as r:
            assert r.status == 200
        ws = await s.ws_connect(url + "ws")
        assert json.loads((await ws.receive()).data)["viewOnly"] is False
        await ws.send_str(json.dumps({"type": "key", "code": "KeyA", "down": True}))
        for _ in range(50):
            if rec.events:
                break
            await asyncio.sleep(0.02)
        assert rec.events == [("key", 0x1E, True)]
        await ws.close()


async def test_cross_origin_websocket_refused(
    site: tuple[str, WebAuth, Display, RecordingInput],
) -> None:
    url, auth, *_ = site
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as s:
        await s.get(url + f"?token={auth.full_token}")
        with pytest.raises(WSServerHandshakeError) as refused:
            await s.ws_connect(url + "ws", headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        host = url.split("/")[2]
        ws = await s.ws_connect(url + "ws", headers={"Origin": f"http://{host}"})
        await ws.close()


def test_refuses_to_listen_beyond_loopback_without_a_password() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "saffron.cli", "serve", "--web", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "refusing to serve web on 0.0.0.0 without a password" in r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "saffron.cli", "serve", "--web", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2
    assert f"cannot listen for the web page on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3


def test_unknown_codec_is_refused_by_the_cli() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "saffron.cli", "serve", "--codec", "theora"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "invalid choice: 'theora'" in r.stderr


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--spice-secure-channels", "inputs"], "--spice-secure-channels needs a TLS port"),
        (["--spice-secure-channels", "main,sound"], "unknown channel sound: choose from"),
    ],
)
def test_secure_channels_are_checked_before_starting(flags: list[str], said: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "saffron.cli", "serve", "--spice", "127.0.0.1:0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and said in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    env_dir = tmp_path / "config"
    import os

    os.environ["XDG_CONFIG_HOME"] = str(env_dir)
    try:
        with run_saffron(
            "serve",
            "--source",
            "pattern",
            "--tls",
            "auto",
            "--password-file",
            str(_password_file(tmp_path)),
        ) as saffron:
            out = saffron.output()
            assert "https://127.0.0.1:" in out and "SHA-256" in out
            cert = env_dir / "saffron" / "cert.pem"
            ctx = ssl.create_default_context(cafile=str(cert))
            url = f"https://127.0.0.1:{saffron.web_port}/"
            with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
                assert 'name="password"' in r.read().decode()
            token = out.split("?token=")[1].split()[0]
            opener = urllib.request.build_opener(
                urllib.request.HTTPSHandler(context=ctx), _NoRedirect()
            )
            with pytest.raises(urllib.error.HTTPError) as seen:
                opener.open(url + f"?token={token}", timeout=10)
            assert seen.value.code == 303
            assert "; Secure" in seen.value.headers["Set-Cookie"]
            with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
                urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)
    finally:
        del os.environ["XDG_CONFIG_HOME"]


def test_self_signed_certificate_is_made_once(tmp_path: Path) -> None:
    a = self_signed(tmp_path)
    b = self_signed(tmp_path)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 95
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600


def _password_file(tmp_path: Path) -> Path:
    p = tmp_path / "password"
    p.write_text(PASSWORD + "\n")
    return p


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@pytest.mark.parametrize("host", ["127.attacker.example", "127.0.0.1.nip.invalid"])
def test_a_name_that_starts_with_127_is_not_loopback(host: str) -> None:
    """The address decides, not the spelling: such a name could point anywhere."""
    opts = Options(web=(host, 0), spice=None)
    with pytest.raises(StartupError, match="without a password"):
        check_exposure(opts)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "localhost"])
def test_loopback_addresses_need_no_password(host: str) -> None:
    check_exposure(Options(web=(host, 0), spice=(host, 0)))
