"""Connections that have not authenticated, over real sockets: 400 half-sent logins from
other addresses do not keep a visitor out of the web page or a SPICE client from
linking; such connections have a short time to authenticate; and the limits' rule
for making room (the oldest of the busiest address goes, authenticated ones stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from saffron.bench.spice_client import open_session
from saffron.net.limits import ConnectionLimits, Slot
from tests.support.harness import Running, saffron, tls_saffron
from tests.support.sockets import (
    close_all,
    closed_by_server,
    connect,
    get,
    open_many,
    read_until_closed,
)
from tests.support.streams import HALF_SENT
from tests.support.wait import wait_until

PASSWORD = "correct horse"
FLOODERS = [f"127.0.0.{i}" for i in range(2, 6)]
HALF_SENT_LOGIN = HALF_SENT["web-half-body"][1]
"""A POST /login whose body never comes."""


@pytest.fixture
def guarded() -> Iterator[Running]:
    with saffron(web=("127.0.0.1", 0), spice=("127.0.0.1", 0), password=PASSWORD) as s:
        yield s


def half_sent_logins(s: Running, per_address: int) -> list[socket.socket]:
    socks = []
    for address in FLOODERS:
        for sock in open_many(s.web_port, address, per_address):
            sock.sendall(HALF_SENT_LOGIN)
            socks.append(sock)
    return socks


def visit(port: int, source: str = "127.0.0.9") -> bytes:
    """GET / from ``source``: the answer, once the server closes."""
    sock = socket.socket()
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    with sock:
        sock.sendall(get("/", port).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        return read_until_closed(sock)


def test_half_sent_logins_do_not_keep_a_visitor_out(guarded: Running) -> None:
    """400 half-sent POST /login from four addresses (each at its --max-per-address), then
    a visitor from a fifth: the login page at the first try, not a 503, and a SPICE
    client links; the flood holds no more than its share of the slots."""
    s, limits = guarded, guarded.limits
    flood = half_sent_logins(s, limits.max_per_address)
    try:
        page = visit(s.web_port)
        assert page.startswith(b"HTTP/1.1 200 ") and b'name="password"' in page, page[:200]
        assert limits.unauthenticated <= limits.max_unauthenticated < limits.max_connections

        async def link() -> None:
            main, _ = await open_session(s.spice_port, password=PASSWORD, source="127.0.0.9")
            main.close()

        asyncio.run(link())
        # The flood made room for itself, from its own busiest addresses.
        assert limits.displaced >= len(flood) - limits.max_unauthenticated
        closed = closed_by_server(flood)
        assert len(closed) >= len(flood) - limits.max_unauthenticated, len(closed)
        summed = [t for t in s.records.texts(logging.WARNING) if "needed its slot" in t]
        assert 0 < len(summed) <= 20, summed
        assert not s.records.errors(), s.records.errors()
    finally:
        close_all(flood)


def test_unauthenticated_connections_have_a_short_time(
    guarded: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Silent, half-sent and unsigned-in connections are closed after AUTH_TIMEOUT_S; one
    that signed in stays (it has HANDSHAKE_TIMEOUT_S between requests)."""
    from saffron.net import admission as admission_module

    monkeypatch.setattr(admission_module, "AUTH_TIMEOUT_S", 0.5)
    s = guarded
    silent_spice = connect(s.spice_port)
    half_sent = connect(s.web_port)
    half_sent.sendall(HALF_SENT_LOGIN)
    login_page = connect(s.web_port)
    login_page.sendall(get("/", s.web_port))
    signed_in = connect(s.web_port)
    signed_in.sendall(
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\npassword=%s"
        % (len(PASSWORD) + 9, PASSWORD.replace(" ", "+").encode())
    )
    try:
        for sock in (silent_spice, half_sent, login_page):
            with contextlib.suppress(ConnectionResetError):
                read_until_closed(sock)
        assert signed_in.recv(4096).startswith(b"HTTP/1.1 303 ")
        assert s.limits.total == 1 and s.limits.unauthenticated == 0
        s.run(asyncio.sleep(0.1))
        warned = [t for t in s.records.texts(logging.WARNING) if "not authenticated within" in t]
        assert len(warned) == 1, "the first is written, the next summed up"
        quiet = [t for t in s.records.texts(logging.DEBUG) if "not authenticated within" in t]
        assert len(quiet) == 2, "the login page's connection, idle, closes quietly"
    finally:
        for sock in (silent_spice, half_sent, login_page, signed_in):
            sock.close()


@pytest.mark.parametrize("port", ["web", "spice-tls"])
def test_time_to_authenticate_includes_the_tls_handshake(
    tmp_path: Path, port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that never starts its TLS handshake is closed after AUTH_TIMEOUT_S,
    with one warning, and its slot is given back; one whose handshake failed is not
    warned about again when its time would have been up."""
    from saffron.net import admission as admission_module

    monkeypatch.setattr(admission_module, "AUTH_TIMEOUT_S", 0.5)
    with tls_saffron(tmp_path, port) as tls_ports:
        s = tls_ports.s
        with connect(tls_ports.target) as silent, contextlib.suppress(ConnectionResetError):
            assert read_until_closed(silent) == b""
        with connect(tls_ports.target) as plain, contextlib.suppress(ConnectionResetError):
            plain.sendall(get("/", tls_ports.target))
            read_until_closed(plain)
        assert wait_until(lambda: s.limits.total == 0)
        s.run(asyncio.sleep(1))  # no timer of a closed connection is left to fire
        s.loop.call_soon_threadsafe(s.limits.flush_log)
        s.run(asyncio.sleep(0.1))
        warned = [t for t in s.records.texts(logging.WARNING) if "not authenticated" in t]
        assert len(warned) == 1 and "within 0 s" in warned[0], warned


def test_room_is_made_from_the_busiest_address() -> None:
    limits = ConnectionLimits(max_connections=10, max_per_address=10)
    assert limits.max_unauthenticated == 5
    dropped: list[str] = []

    def admit(address: str, name: str) -> Slot | None:
        return limits.admit(address, "web", drop=lambda: dropped.append(name))

    busy = [admit("10.0.0.1", f"a{n}") for n in range(3)]
    calm = [admit("10.0.0.2", f"b{n}") for n in range(2)]
    assert limits.unauthenticated == 5 and all(busy) and all(calm)
    assert limits.admit("10.0.0.3", "web") is not None
    assert dropped == ["a0"] and busy[0] is not None and busy[0].released
    limits.authenticated(calm[0])
    assert limits.unauthenticated == 4 and limits.total == 5
    for _ in range(4):
        assert limits.admit("10.0.0.4", "SPICE") is not None
    # 10.0.0.1 had two then, and lost a1; after that 10.0.0.4 was the busiest itself.
    assert dropped == ["a0", "a1"] and limits.displaced == 4
    assert limits.total == 6 and limits.unauthenticated == 5 and limits.open_from("10.0.0.4") == 2
    for _ in range(4):
        limits.authenticated(limits.admit("10.0.0.5", "web"))
    assert limits.total == 9 and limits.unauthenticated == 4 and limits.displaced == 5
    assert limits.admit("10.0.0.6", "web") is not None
    assert limits.admit("10.0.0.7", "web") is None, "every slot taken: refused"
    assert limits.refused == 1 and dropped == ["a0", "a1"], "authenticated ones never go"
    limits.release(calm[0])
    assert limits.total == 9 and limits.unauthenticated == 5
