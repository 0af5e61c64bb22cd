"""The connection guards of the web and SPICE ports, over real sockets.

The refusals they log are summed up in a few lines, also at exit; an IPv6 /64
counts as one address. A connection whose peer stopped reading is cut off once
it is closing; a refused web client reads its 503 even if it sent its request
first; connections in their TLS handshake count against the caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import struct
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from saffron.net import limits as limits_module
from saffron.net.limits import ConnectionLimits, network_of
from saffron.spice import server as spice_server_module
from saffron.spice.protocol import wire as w
from saffron.web import guard as web_guard_module
from saffron.web import server as web_server_module
from tests.support.harness import saffron, tls_saffron
from tests.support.sockets import connect, get, read_until_closed
from tests.support.streams import upgrade, ws_frame
from tests.support.wait import wait_until

# -- 5: the refusal log and IPv6 ----------------------------------------------------------------


def test_server_close_writes_the_summed_up_refusals() -> None:
    with saffron(web=("127.0.0.1", 0), max_connections=1) as s:
        holder = connect(s.web_port)
        try:
            assert wait_until(lambda: s.limits.total == 1)
            for _ in range(3):
                sock = connect(s.web_port)
                sock.sendall(get("/", s.web_port))
                with contextlib.suppress(ConnectionResetError):
                    read_until_closed(sock)
                sock.close()
            assert s.limits.refused == 3
            assert not any("refused 2 more" in t for t in s.records.texts())
        finally:
            holder.close()
        s.run(s.server.close())
        assert any("refused 2 more connections from 127.0.0.1" in t for t in s.records.texts())
        assert s.limits._refusals.flush is None


def test_ipv6_addresses_count_by_slash_64() -> None:
    limits = ConnectionLimits(max_connections=10, max_per_address=2)
    a = limits.admit("2001:db8:1:2::1", "web")
    b = limits.admit("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "web")
    assert a is not None and b is not None
    assert limits.admit("2001:db8:1:2::3", "web") is None, "same /64: over the cap"
    assert limits.admit("2001:db8:1:3::1", "web") is not None, "another /64"
    assert limits.open_from("2001:db8:1:2::99") == 2
    assert limits.admit("192.0.2.1", "web") is not None
    assert limits.admit("fe80::1%eth0", "web") is not None
    limits.release(a)
    limits.release(b)
    assert limits.open_from("2001:db8:1:2::1") == 0
    assert network_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert network_of("10.1.2.3") == "10.1.2.3"


def test_refusal_summary_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Refusals from thousands of addresses: a few lines that still count them all."""
    caplog.set_level(logging.WARNING, "saffron.limits")
    limits = ConnectionLimits(max_connections=1)
    assert limits.admit("10.0.0.1", "SPICE") is not None
    for i in range(5000):
        assert limits.admit(f"10.1.{i // 250}.{i % 250}", "SPICE") is None
    assert len(limits._refusals.pending) <= limits_module.REFUSAL_LOG_ADDRESSES
    limits.flush_log()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= limits_module.REFUSAL_LOG_ADDRESSES + 2, lines
    counted = 0
    for line in lines:
        if line.startswith("refused a "):
            counted += 1
        else:
            counted += int(line.split()[1])
    assert counted == 5000, lines


# -- a page that stops reading ------------------------------------------------------------------

PAGE_ENDS: dict[str, bytes | None] = {
    "heartbeat": b"",  # the page answers no ping: aiohttp closes the socket
    "bad-message": ws_frame(2, b"\x01"),  # Saffron closes the WebSocket (1008)
    "close-frame": ws_frame(8, struct.pack(">H", 1000)),
    "eof": None,  # the page half-closes its socket
}


@pytest.mark.parametrize("end", sorted(PAGE_ENDS))
def test_page_that_stopped_reading_gives_its_slot_back(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """However the WebSocket of a page that no longer reads ends, its connection is cut
    off CLOSE_GRACE_S later: a close waits for the page to take what is queued."""
    monkeypatch.setattr(limits_module, "CLOSE_GRACE_S", 0.5)
    monkeypatch.setattr(web_server_module, "HEARTBEAT_S", 1.0 if end == "heartbeat" else 600.0)
    with saffron(web=("127.0.0.1", 0), size=(1280, 720)) as s:
        assert s.server.web is not None
        page = connect(s.web_port, rcvbuf=4096)
        try:
            page.sendall(upgrade("/ws"))
            assert wait_until(lambda: len(s.server.web.viewers) == 1)
            (viewer,) = s.server.web.viewers
            assert viewer.transport is not None
            # Small kernel buffers on both sides, so the frames wait in Saffron's own.
            server_side = viewer.transport.get_extra_info("socket")
            server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            page.sendall(ws_frame(1, json.dumps({"type": "start", "codec": "mjpeg"}).encode()))
            assert wait_until(lambda: viewer.transport.get_write_buffer_size() > 0)
            ending = PAGE_ENDS[end]
            if ending is None:
                page.shutdown(socket.SHUT_WR)
            else:
                page.sendall(ending)
            assert wait_until(lambda: s.limits.total == 0, timeout=10), (
                f"{s.limits.total} connection still holds its slot"
            )
        finally:
            page.close()


def test_answer_the_client_does_not_take_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer aiohttp closed the connection after, which the client does not read, is
    cut off when the request's time is up."""
    monkeypatch.setattr(web_guard_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    made = web_guard_module.HttpGuard.connection_made

    def small_buffer(guard: Any, transport: asyncio.Transport) -> None:
        """A small kernel buffer, so the answer waits in Saffron's own."""
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        made(guard, transport)

    monkeypatch.setattr(web_guard_module.HttpGuard, "connection_made", small_buffer)
    with saffron(web=("127.0.0.1", 0)) as s:
        client = connect(s.web_port, rcvbuf=4096)
        try:
            # Answers in a row, about 40 KiB in all, the last closing the connection: more
            # than the small kernel buffers hold, less than aiohttp writes before it waits
            # for the peer (64 KiB), so aiohttp closes with the rest still queued in Saffron.
            size = len(resources.files("saffron.web").joinpath("static", "app.js").read_bytes())
            count = max(2, 40_000 // size)
            request = b"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            client.sendall(
                request * (count - 1)
                + request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            )
            assert wait_until(lambda: any("it stopped reading" in t for t in s.records.texts()))
            assert wait_until(lambda: s.limits.total == 0), "the slot is still held"
        finally:
            client.close()


# -- a refused web connection -------------------------------------------------------------------


def test_refused_client_that_sent_its_request_reads_the_503() -> None:
    """The 503 reaches a client over the cap that sent its request before reading: the
    server reads the request rather than reset the connection by closing it unread."""
    with saffron(web=("127.0.0.1", 0), max_connections=1) as s:
        holder = connect(s.web_port)
        try:
            assert wait_until(lambda: s.limits.total == 1)
            for n in range(1, 6):
                sock = connect(s.web_port)
                try:
                    sock.sendall(get("/healthz", s.web_port))
                    assert wait_until(lambda: s.limits.refused == n)  # noqa: B023
                    time.sleep(0.1)  # the request is in, and the answer out, before reading
                    answer = read_until_closed(sock)
                finally:
                    sock.close()
                assert answer.startswith(b"HTTP/1.1 503 "), answer
        finally:
            holder.close()


def test_refused_client_that_stays_is_cut_off() -> None:
    """A refused client that keeps its socket open loses it after REFUSAL_LINGER_S, as
    refused sockets are outside the caps."""
    with saffron(web=("127.0.0.1", 0), max_connections=1) as s:
        holder = connect(s.web_port)
        sock = connect(s.web_port)
        try:
            assert wait_until(lambda: s.limits.refused == 1)
            assert read_until_closed(sock).startswith(b"HTTP/1.1 503 ")
            start = time.monotonic()

            def gone() -> bool:
                try:
                    sock.send(b"x")
                except OSError:
                    return True
                return False

            assert wait_until(gone, timeout=10, step=0.05)
            took = time.monotonic() - start
            linger = web_guard_module.REFUSAL_LINGER_S
            assert linger / 2 < took < linger + 2, took
        finally:
            sock.close()
            holder.close()


# -- TLS handshakes ------------------------------------------------------------------------------


def _main_link() -> bytes:
    """A SPICE main channel's link message."""
    body = w.LinkMess(0, w.ChannelType.MAIN, 0, (), ()).pack()
    return w.LinkHeader(2, 2, len(body)).pack() + body


def handshake_timeout(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """What both TLS ports give a handshake."""
    monkeypatch.setattr(web_guard_module, "HANDSHAKE_TIMEOUT_S", seconds)
    monkeypatch.setattr(spice_server_module, "LINK_TIMEOUT_S", seconds)


@pytest.mark.parametrize("port", ["web", "spice-tls"])
def test_tls_handshakes_take_slots(tmp_path: Path, port: str) -> None:
    """Connections still in their TLS handshake count against the caps: ones that never
    send a ClientHello take an address's every slot, and give them back when they close;
    then a TLS client connects as usual."""
    cap = 3
    with tls_saffron(tmp_path, port, max_per_address=cap) as tls_ports:
        s, target, cert = tls_ports.s, tls_ports.target, tls_ports.cert
        silent = [connect(target) for _ in range(cap)]
        try:
            assert wait_until(lambda: s.limits.total == cap), s.limits.total
            extra = connect(target)
            try:
                assert wait_until(lambda: s.limits.refused == 1)
                with contextlib.suppress(ConnectionResetError):
                    assert read_until_closed(extra) == b""
            finally:
                extra.close()
            assert s.limits.total == cap
        finally:
            for sock in silent:
                sock.close()
        assert wait_until(lambda: s.limits.total == 0), s.limits.total
        context = ssl.create_default_context(cafile=str(cert.cert))
        with context.wrap_socket(connect(target), server_hostname="127.0.0.1") as tls:
            if port == "web":
                tls.sendall(
                    get("/healthz", target).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                )
                assert read_until_closed(tls).startswith(b"HTTP/1.1 200 ")
            else:
                tls.sendall(_main_link())
                assert tls.recv(4) == w.MAGIC


@pytest.mark.parametrize("port", ["web", "spice-tls"])
def test_failed_tls_handshakes_give_their_slots_back(
    tmp_path: Path,
    port: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handshake that times out, or fails on what the client sent, is a warning and
    gives its slot back; a client that leaves mid-handshake is a debug line. The first
    failure is written at once, later ones are summed up (as refusals are), so a
    scanner probing the port cannot flood the log."""
    handshake_timeout(monkeypatch, 0.5)
    with tls_saffron(tmp_path, port) as tls_ports:
        s, target = tls_ports.s, tls_ports.target
        start = len(s.records)

        silent = connect(target)
        with contextlib.suppress(ConnectionResetError):
            assert read_until_closed(silent) == b"", "closed by the server"
        silent.close()
        plain = connect(target)
        plain.sendall(get("/", target))
        with contextlib.suppress(ConnectionResetError):
            read_until_closed(plain)
        plain.close()
        leaving = connect(target)
        leaving.close()
        assert wait_until(lambda: s.limits.total == 0)

        def logged(level: int) -> list[str]:
            return [t for t in s.records.texts(level, start) if "TLS" in t]

        assert wait_until(lambda: len(logged(logging.DEBUG)) == 2), logged(logging.DEBUG)
        assert len(logged(logging.WARNING)) == 1, logged(logging.WARNING)
        for _ in range(20):  # a scanner's probes: summed up with the plain request
            probe = connect(target)
            probe.sendall(get("/", target))
            with contextlib.suppress(ConnectionResetError):
                read_until_closed(probe)
            probe.close()
        assert wait_until(lambda: s.limits.total == 0)
        s.loop.call_soon_threadsafe(s.limits.flush_log)
        assert wait_until(lambda: len(logged(logging.WARNING)) == 2), logged(logging.WARNING)
        warnings = logged(logging.WARNING)
        assert "no TLS handshake within 0 s" in warnings[0], warnings
        assert (
            "closed 21 more connections from 127.0.0.1: TLS handshake failed: HTTP_REQUEST"
            in warnings[1]
        ), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("port", ["web", "spice-tls"])
def test_closing_the_server_drops_handshakes_under_way(
    tmp_path: Path, port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection still waiting for its TLS handshake is closed with the server, not
    left for its handshake timeout (which here would outlast the test)."""
    handshake_timeout(monkeypatch, 3600)
    with tls_saffron(tmp_path, port) as tls_ports:
        s, target = tls_ports.s, tls_ports.target
        silent = connect(target)
        assert wait_until(lambda: s.limits.total == 1)
    with silent, contextlib.suppress(ConnectionResetError):
        assert read_until_closed(silent) == b""
    assert s.limits.total == 0


def _tls_with_first_message(port: int, context: ssl.SSLContext, message: bytes) -> bytes:
    """A TLS client that sends ``message`` in one write with its last handshake message,
    as browsers often do; what the server answers until it closes (or 4 bytes, at least)."""
    sock = connect(port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(1 << 16))
        tls.write(message)
        sock.sendall(outgoing.read())
        answer = bytearray()
        while len(answer) < 4 and (data := sock.recv(1 << 16)):
            incoming.write(data)
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                while chunk := tls.read(1 << 16):
                    answer += chunk
        return bytes(answer)


@pytest.mark.parametrize("port", ["web", "spice-tls"])
def test_first_message_with_the_handshake_is_answered(tmp_path: Path, port: str) -> None:
    """What comes with the client's last handshake message, before start_tls returns,
    reaches the front end."""
    with tls_saffron(tmp_path, port) as tls_ports:
        target = tls_ports.target
        context = ssl.create_default_context(cafile=str(tls_ports.cert.cert))
        if port == "web":
            request = get("/healthz", target)
            assert _tls_with_first_message(target, context, request).startswith(b"HTTP")
        else:
            assert _tls_with_first_message(target, context, _main_link())[:4] == w.MAGIC


# -- not HTTP on the web port --------------------------------------------------------------------


def test_not_http_on_the_web_port_is_a_warning_saying_what_it_was() -> None:
    """aiohttp logs a first request that is not HTTP at debug level, as internet noise;
    it is as often a user's mistake, so it is a warning that says which."""
    with saffron(web=("127.0.0.1", 0)) as s:
        sent = {
            "SPICE on the web port": w.LinkHeader(2, 2, 0).pack(),
            "HTTPS traffic on an HTTP port": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
            "Invalid method": b"G\x00T / HTTP/1.1\r\n\r\n",
        }
        for data in sent.values():
            sock = connect(s.web_port)
            sock.sendall(data)
            with contextlib.suppress(ConnectionResetError):
                read_until_closed(sock)
            sock.close()

        def warned(what: str) -> bool:
            return any(
                t.startswith("bad HTTP request from 127.0.0.1:") and what in t
                for t in s.records.texts(logging.WARNING)
            )

        for what in sent:
            assert wait_until(lambda: warned(what)), (what, s.records.texts())  # noqa: B023
