"""Saffron behind a reverse proxy, with real HTTP clients on loopback standing in for it:
``--base-path``, and the X-Forwarded headers believed from ``--trusted-proxy`` peers only
(connection caps, sign-in throttle, Secure cookie, cookie path, Host and Origin).
Through Debian's real nginx: tests/e2e/test_nginx.py."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

import pytest

from saffron.app import SPICE_HTML5
from saffron.bench.clients import Tally, web_viewer
from saffron.net.guesses import FREE_GUESSES
from tests.support.harness import saffron
from tests.support.sockets import closed_by_server, open_many

PASSWORD = "correct horse"
TIMEOUT = 30.0


class Client:
    """One keep-alive HTTP connection from a chosen loopback address."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=TIMEOUT, source_address=(source, 0)
        )
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, str]:
        body = urlencode(form) if form is not None else None
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=sent)
        r = self.conn.getresponse()
        return r.status, r.headers, r.read().decode()

    def close(self) -> None:
        self.conn.close()


@contextmanager
def clients(port: int, count: int, source: str = "127.0.0.1") -> Iterator[list[Client]]:
    made = [Client(port, source) for _ in range(count)]
    try:
        yield made
    finally:
        for c in made:
            c.close()


def test_base_path_serves_everything_under_it() -> None:
    with saffron(web=("127.0.0.1", 0), password=PASSWORD, base_path="/vm/a/") as s:
        c = Client(s.web_port)
        try:
            status, _, page = c.request("GET", "/vm/a/")
            assert status == 200 and 'action="login"' in page and 'href="static/login.css"' in page
            status, _, _ = c.request("GET", "/vm/a/static/login.css")
            assert status == 200
            status, headers, _ = c.request("GET", "/vm/a?x=1")
            assert status == 302 and headers["Location"] == "/vm/a/?x=1"
            for outside in ("/", "/ws", "/login", "/vm/b/", "/vm/ab/"):
                status, _, text = c.request("GET", outside)
                assert status == 404 and "/vm/a/" in text, outside
            status, headers, _ = c.request("POST", "/vm/a/login", form={"password": PASSWORD})
            assert status == 303 and headers["Location"] == "./"
            cookie = headers["Set-Cookie"]
            assert cookie.startswith("saffron_session_vm_a=") and "Path=/vm/a/" in cookie
            session = cookie.split(";", 1)[0]
            status, _, page = c.request("GET", "/vm/a/", {"Cookie": session})
            assert status == 200 and 'src="static/app.js"' in page and 'action="logout"' in page
            status, _, metrics = c.request("GET", "/vm/a/metrics", {"Cookie": session})
            assert status == 200 and "saffron_viewers" in metrics
            status, _, health = c.request("GET", "/vm/a/healthz")
            assert status == 200 and json.loads(health)["ok"]
            # the same session cookie under another name is not this Saffron's
            other = session.replace("saffron_session_vm_a", "saffron_session")
            status, _, page = c.request("GET", "/vm/a/", {"Cookie": other})
            assert 'name="password"' in page
            status, headers, _ = c.request("POST", "/vm/a/logout", {"Cookie": session})
            assert status == 303 and "Path=/vm/a/" in headers["Set-Cookie"]
        finally:
            c.close()


def test_the_page_websocket_works_under_the_base_path() -> None:
    with saffron(web=("127.0.0.1", 0), base_path="/vm/a/") as s:
        tally = Tally()

        async def watch() -> None:
            task = asyncio.ensure_future(web_viewer(f"http://127.0.0.1:{s.web_port}/vm/a/", tally))
            for _ in range(300):
                if tally.frames >= 3:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(watch())
        assert tally.frames >= 3, tally


def test_spoofed_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_cap() -> None:
    """127.0.0.1 is no trusted proxy here: whatever X-Forwarded-For it writes, its
    connections are its own, two at most."""
    options = {"max_per_address": 2, "trusted_proxies": ("127.0.0.2",)}
    with saffron(web=("127.0.0.1", 0), **options) as s, clients(s.web_port, 2) as two:
        for i, c in enumerate(two):
            status, _, _ = c.request("GET", "/healthz", {"X-Forwarded-For": f"10.0.0.{i}"})
            assert status == 200
        third = open_many(s.web_port, "127.0.0.1", 1)
        try:
            third[0].sendall(
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n"
            )
            answer = third[0].recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer
        finally:
            third[0].close()
        assert s.limits.open_from("127.0.0.1") == 2
        assert s.limits.open_from("10.9.9.9") == 0


def test_a_trusted_proxys_connections_count_for_each_client() -> None:
    """From a trusted proxy (127.0.0.1 here) the cap applies per X-Forwarded-For client:
    three clients through it hold five connections; a third one of the same client is
    answered 503 and closed."""
    with saffron(web=("127.0.0.1", 0), max_per_address=2, trusted_proxies=("127.0.0.1",)) as s:
        with clients(s.web_port, 6) as six:
            forwarded = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.3", None]
            for c, client in zip(six, forwarded, strict=False):
                headers = {"X-Forwarded-For": client} if client else {}
                status, _, _ = c.request("GET", "/healthz", headers)
                assert status == 200, client
            status, headers, text = six[5].request(
                "GET", "/healthz", {"X-Forwarded-For": "10.0.0.3"}
            )
            assert status == 503 and "too many connections" in text
            assert headers["Connection"] == "close"
            assert s.limits.open_from("10.0.0.3") == 2
            assert s.limits.open_from("10.0.0.1") == 1
            assert s.limits.open_from("127.0.0.1") == 1, "the request without X-Forwarded-For"
            texts = s.records.texts()
            assert any("10.0.0.3" in t and "--max-per-address" in t for t in texts), texts
        # the held sockets of the proxy itself were never capped by its own address
        socks = open_many(s.web_port, "127.0.0.1", 4)
        try:
            assert not closed_by_server(socks)
        finally:
            for sock in socks:
                sock.close()


def test_sign_in_guesses_count_by_the_forwarded_client_only_from_a_trusted_proxy() -> None:
    with saffron(web=("127.0.0.1", 0), password=PASSWORD, trusted_proxies=("127.0.0.1",)) as s:
        c = Client(s.web_port)
        try:
            wrong = {"password": "wrong"}
            for _ in range(FREE_GUESSES + 1):
                status, _, _ = c.request("POST", "/login", {"X-Forwarded-For": "10.0.0.7"}, wrong)
                assert status == 403
            status, _, _ = c.request("POST", "/login", {"X-Forwarded-For": "10.0.0.7"}, wrong)
            assert status == 429, "10.0.0.7 guessed too often"
            status, _, _ = c.request(
                "POST", "/login", {"X-Forwarded-For": "10.0.0.8"}, {"password": PASSWORD}
            )
            assert status == 303, "another client of the same proxy signs in"
            assert any("10.0.0.7 (through proxy 127.0.0.1:" in t for t in s.records.texts())
        finally:
            c.close()
    with saffron(web=("127.0.0.1", 0), password=PASSWORD, trusted_proxies=("127.0.0.2",)) as s:
        c = Client(s.web_port)
        try:
            for i in range(FREE_GUESSES + 1):
                spoof = {"X-Forwarded-For": f"10.0.1.{i}"}
                status, _, _ = c.request("POST", "/login", spoof, {"password": "wrong"})
                assert status == 403
            spoof = {"X-Forwarded-For": "10.0.1.99"}
            status, _, _ = c.request("POST", "/login", spoof, {"password": PASSWORD})
            assert status == 429, "a spoofed X-Forwarded-For must not dodge the throttle"
        finally:
            c.close()


@pytest.mark.parametrize("trusted", [True, False])
def test_forwarded_proto_host_and_prefix_only_from_a_trusted_proxy(trusted: bool) -> None:
    proxy = "127.0.0.1" if trusted else "127.0.0.2"
    with saffron(web=("127.0.0.1", 0), password=PASSWORD, trusted_proxies=(proxy,)) as s:
        c = Client(s.web_port)
        try:
            said = {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "vms.example.org",
                "X-Forwarded-Prefix": "/vm/b",
                "Origin": "https://vms.example.org",
            }
            status, headers, text = c.request("POST", "/login", said, {"password": PASSWORD})
            if not trusted:
                # the browser's page is from vms.example.org, the request for 127.0.0.1
                assert status == 403 and "another web site" in text
                said.pop("Origin")
                status, headers, text = c.request("POST", "/login", said, {"password": PASSWORD})
            assert status == 303, text
            cookie = headers["Set-Cookie"]
            if trusted:
                assert cookie.startswith("saffron_session_vm_b=") and "Path=/vm/b/" in cookie
                assert "Secure" in cookie
            else:
                assert cookie.startswith("saffron_session=") and "Path=/;" in cookie
                assert "Secure" not in cookie
            status, headers, _ = c.request("GET", "/", {"X-Forwarded-Host": "vms.example.org"})
            policy = headers["Content-Security-Policy"]
            assert ("ws://vms.example.org" in policy) == trusted
        finally:
            c.close()


def test_spice_html5_is_pointed_at_spice_under_the_prefix() -> None:
    if not SPICE_HTML5.is_dir():
        pytest.fail("spice-html5 is not installed (scripts/apt-packages.txt)")
    with saffron(web=("127.0.0.1", 0), spice=("127.0.0.1", 0), base_path="/vm/a/") as s:
        c = Client(s.web_port)
        try:
            status, headers, _ = c.request("GET", "/vm/a/spice-html5/")
            assert status == 302 and headers["Location"] == "spice_auto.html?path=vm/a/spice"
            status, _, page = c.request("GET", "/vm/a/spice-html5/spice_auto.html")
            assert status == 200 and "SpiceMainConn" in page
        finally:
            c.close()


def test_malformed_forwarded_headers_from_a_trusted_proxy_are_ignored_not_fatal() -> None:
    with saffron(web=("127.0.0.1", 0), trusted_proxies=("127.0.0.1",)) as s:
        c = Client(s.web_port)
        try:
            for value in (
                "unknown",
                "10.0.0.1, <script>",
                "\u00e9t\u00e9".encode().decode("latin-1"),
            ):
                status, _, health = c.request("GET", "/healthz", {"X-Forwarded-For": value})
                assert status == 200 and json.loads(health)["ok"], value
            status, _, _ = c.request("GET", "/healthz", {"X-Forwarded-Proto": "ftp"})
            assert status == 200
            assert s.limits.open_from("127.0.0.1") == 1, "counted as the proxy's own"
        finally:
            c.close()
        s.server.site.proxies.flush_log()
        warned = [t for t in s.records.texts(logging.WARNING) if "X-Forwarded" in t]
        assert warned and "ignored X-Forwarded-For 'unknown' from proxy 127.0.0.1" in warned[0]
        assert not s.records.errors()
