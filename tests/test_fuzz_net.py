"""Hostile bytes on every port of a running Saffron, while two good viewers watch.

A whole Saffron (web page, /ws, /spice, the SPICE port) runs in-process with the
pattern producer. A SPICE viewer and a web viewer (saffron.soak's) watch it
throughout; each test checks that they keep receiving frames. Hypothesis then
sends random and mutated link messages, channel messages after a real link,
WebSocket handshakes and frames (to /ws, /spice and the SPICE port) and HTTP
requests. After each attempt the client half-closes and reads until the server
closes, so nothing depends on timing. Every attempt must end with the server
closing the connection and saying so in its log, naming the connection; the
connection count must come back down; nothing may be logged as an error.

The examples are derandomized (the same every run) and few, so this takes well
under a minute. A longer run, for the bench:

    SAFFRON_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz_net.py
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saffron import limits as limits_module
from saffron import soak
from saffron.app import Options, Server
from saffron.display import Display
from saffron.sources.pattern import PatternSource
from saffron.spice import server as spice_server_module
from saffron.spice import wire as w
from saffron.web import server as web_server_module

EXAMPLES = int(os.environ.get("SAFFRON_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
IO_TIMEOUT = 60.0
"""Safety net only: how long a client waits for the server to close before failing."""

PROGRESS_EVERY = 10
"""Attempts between two checks that the good viewers still receive frames."""

CLIENT_CAPS = soak.CLIENT_COMMON_CAPS
MINI_OFF_CAPS = w.make_caps([w.CommonCap.PROTOCOL_AUTH_SELECTION, w.CommonCap.AUTH_SPICE])


# -- the server and its log ------------------------------------------------------------------


class Records(logging.Handler):
    """Every log record of the process, kept for the assertions (any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.guard = threading.Lock()
        self.items: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += " [with traceback]"
        with self.guard:
            self.items.append((record.levelno, record.name, text))

    def since(self, start: int) -> list[tuple[int, str, str]]:
        with self.guard:
            return self.items[start:]

    def __len__(self) -> int:
        with self.guard:
            return len(self.items)

    def errors(self, start: int = 0) -> list[str]:
        return [f"{name}: {text}" for level, name, text in self.since(start) if level >= 40]


def naming(port: int) -> re.Pattern[str]:
    """A log line that names the connection from local port ``port``."""
    return re.compile(rf":{port}(?!\d)")


@dataclass
class Live:
    loop: asyncio.AbstractEventLoop
    server: Server
    web_port: int
    spice_port: int
    records: Records
    spice_watch: soak.Tally
    web_watch: soak.Tally
    baseline: int = 0
    """Connections the two watchers hold."""
    stats: dict[str, int] = field(default_factory=dict)
    _seen: tuple[int, int] = (0, 0)

    @property
    def open_connections(self) -> int:
        return self.server.limits.total

    def watchers_progress(self) -> None:
        """Both good viewers received frames since the last check."""
        last_spice, last_web = self._seen
        assert wait_until(
            lambda: self.spice_watch.frames > last_spice and self.web_watch.frames > last_web,
            timeout=60,
        ), f"the good viewers stopped: {self.spice_watch}, {self.web_watch}"
        self._seen = (self.spice_watch.frames, self.web_watch.frames)

    def settled(self, others: int = 0) -> None:
        """Only the watchers' connections (and ``others``) are open again."""
        expected = self.baseline + others
        assert wait_until(lambda: self.open_connections == expected, timeout=30), (
            f"{self.open_connections} connections open, {expected} expected"
        )

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1


def wait_until(predicate: Callable[[], bool], timeout: float = 30, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    records = Records()
    root, saffron_log = logging.getLogger(), logging.getLogger("saffron")
    old_level = saffron_log.level
    root.addHandler(records)
    saffron_log.setLevel(logging.DEBUG)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="saffron", daemon=True)
    thread.start()
    display = Display()
    producer = PatternSource(display, 160, 96, 30)
    opts = Options(
        source="pattern",
        web=("127.0.0.1", 0),
        spice=("127.0.0.1", 0),
        codec="mjpeg",
        fps=30,
        size=(160, 96),
    )
    server = Server(opts, display, producer)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
    assert server.web is not None and server.spice is not None
    web_port, spice_port = server.web.addresses[0][1], server.spice.port  # type: ignore[attr-defined]

    watch_loop = asyncio.new_event_loop()
    watch_thread = threading.Thread(target=watch_loop.run_forever, name="watchers", daemon=True)
    watch_thread.start()
    spice_watch, web_watch = soak.Tally(), soak.Tally()
    tasks = [
        asyncio.run_coroutine_threadsafe(
            soak.spice_viewer("127.0.0.1", spice_port, spice_watch), watch_loop
        ),
        asyncio.run_coroutine_threadsafe(
            soak.web_viewer(f"http://127.0.0.1:{web_port}/", web_watch), watch_loop
        ),
    ]
    state = Live(loop, server, web_port, spice_port, records, spice_watch, web_watch)
    try:
        assert wait_until(lambda: spice_watch.frames > 0 and web_watch.frames > 0, timeout=60)
        state.baseline = state.open_connections
        assert state.baseline == 3, "a SPICE main and display channel and one page"
        yield state
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
        print(f"\nfuzz: {state.stats}")
    finally:
        stop_watchers(watch_loop, tasks)
        watch_thread.join(5)
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        root.removeHandler(records)
        saffron_log.setLevel(old_level)


def stop_watchers(loop: asyncio.AbstractEventLoop, tasks: list[Future[None]]) -> None:
    """Cancel the watchers, let them close their sockets, then stop their loop."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            task.result(10)
    asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


@pytest.fixture
def check(live: Live) -> Iterator[Live]:
    """Per test: no error logged, the connections back down, the watchers still going."""
    start = len(live.records)
    yield live
    live.settled()
    live.watchers_progress()
    assert not live.records.errors(start)


# -- talking to it ---------------------------------------------------------------------------


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_all(sock: socket.socket, chunks: list[bytes]) -> bool:
    """Send the chunks; False if the server closed the connection meanwhile."""
    try:
        for chunk in chunks:
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closing)."""
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            return bytes(out)
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open ({len(out)} bytes)"
            ) from None
        if not data:
            return bytes(out)
        out += data


def finish(
    live: Live,
    sock: socket.socket,
    chunks: list[bytes],
    also: tuple[int, ...] = (),
    others: int = 0,
) -> bool:
    """Send, half-close, read until the server closes; then check its log named us.

    Returns whether the server logged a warning about this connection (it judged
    the input bad), for the statistics.
    """
    port = sock.getsockname()[1]
    start = len(live.records)
    send_all(sock, chunks)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    read_until_closed(sock)
    sock.close()
    patterns = [naming(p) for p in (port, *also)]

    def logged() -> list[tuple[int, str, str]]:
        return [r for r in live.records.since(start) if any(p.search(r[2]) for p in patterns)]

    assert wait_until(lambda: bool(logged()), timeout=30), (
        f"nothing in the log about the connection from port {port}: "
        f"{live.records.since(start)[-5:]}"
    )
    live.settled(others)
    errors = live.records.errors(start)
    assert not errors, errors
    warned = any(level >= logging.WARNING for level, _, _ in logged())
    live.count("warned" if warned else "quiet")
    return warned


def spice_link(
    sock: socket.socket,
    channel_type: int,
    connection_id: int = 0,
    caps: tuple[int, ...] = (),
    common: tuple[int, ...] = CLIENT_CAPS,
) -> bool:
    """Link a channel over a blocking socket; returns whether the mini header is on."""
    body = w.LinkMess(connection_id, channel_type, 0, common, caps).pack()
    sock.sendall(w.LinkHeader(2, 2, len(body)).pack() + body)
    header = w.LinkHeader.unpack(recv_exactly(sock, 16))
    reply = w.LinkReply.unpack(recv_exactly(sock, header.size))
    assert reply.error == w.LinkErr.OK, reply.error
    from saffron.spice.link import encrypt_ticket

    selection = w.has_cap(common, w.CommonCap.PROTOCOL_AUTH_SELECTION)
    mechanism = struct.pack("<I", w.CommonCap.AUTH_SPICE) if selection else b""
    sock.sendall(mechanism + encrypt_ticket(reply.pub_key, ""))
    assert recv_exactly(sock, 4) == bytes(4)
    return w.has_cap(common, w.CommonCap.MINI_HEADER)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise AssertionError(f"closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def main_init(sock: socket.socket, mini: bool) -> int:
    reader = w.MessageReader(mini=mini, limit=w.MAX_SERVER_MESSAGE_SIZE)
    while True:
        while (raw := reader.next()) is not None:
            if raw.type == w.MainInit.TYPE:
                return w.MainInit.unpack(raw.body).session_id
        data = sock.recv(1 << 16)
        assert data, "closed before MAIN_INIT"
        reader.feed(data)


# -- strategies --------------------------------------------------------------------------------

Mutation = tuple[str, int, bytes]

mutations = st.lists(
    st.tuples(
        st.sampled_from(["set", "insert", "delete", "truncate"]),
        st.integers(0, 1 << 12),
        st.binary(min_size=1, max_size=8),
    ),
    max_size=3,
)

HUGE_SIZES = [0, 1, 17, 18, 4096, 4097, 65536, 65537, 1 << 31, (1 << 32) - 1]
"""Sizes at and around every limit, and 4 GiB - 1."""


def mutate(data: bytes, ops: list[Mutation]) -> bytes:
    out = bytearray(data)
    for op, pos, value in ops:
        at = pos % (len(out) + 1)
        if op == "set":
            out[at : at + len(value)] = value
        elif op == "insert":
            out[at:at] = value
        elif op == "delete":
            del out[at : at + len(value)]
        else:
            del out[at:]
    return bytes(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a] or [b""]


@st.composite
def link_bytes(draw: st.DrawFn) -> bytes:
    """A link message (and maybe mechanism and ticket), valid or nearly so."""
    channel = draw(st.sampled_from([1, 2, 3, 4]) | st.integers(0, 255))
    mess = w.LinkMess(
        draw(st.sampled_from([0, 1]) | st.integers(0, (1 << 32) - 1)),
        channel,
        draw(st.sampled_from([0]) | st.integers(0, 255)),
        draw(
            st.sampled_from([CLIENT_CAPS, MINI_OFF_CAPS, ()])
            | st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple)
        ),
        draw(
            st.sampled_from([(), soak.SPICE_GTK_DISPLAY_CAPS])
            | st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple)
        ),
    ).pack()
    size = draw(st.sampled_from([len(mess)] * 4 + HUGE_SIZES))
    magic = draw(st.sampled_from([w.MAGIC] * 6 + [b"REDX", b"GET ", b"\0\0\0\0"]))
    major = draw(st.sampled_from([2, 2, 2, 1, 3, 0xFFFFFFFF]))
    out = struct.pack("<4sIII", magic, major, 2, size) + mess
    if draw(st.booleans()):
        out += struct.pack("<I", draw(st.sampled_from([1, 1, 2, 0, 0xFFFFFFFF])))
        out += draw(st.sampled_from([bytes(128), b"\xff" * 128]) | st.binary(max_size=140))
    return out


@st.composite
def link_attempts(draw: st.DrawFn) -> list[bytes]:
    data = draw(link_bytes() | st.binary(max_size=300))
    data = mutate(data, draw(mutations))
    return split(data, draw(st.lists(st.integers(0, 1 << 12), max_size=4)))


def _body_sizes(cls: type[w.Message]) -> st.SearchStrategy[int]:
    fmt = getattr(cls, "FMT", None)
    exact = [fmt.size] if fmt is not None else []
    return st.sampled_from(exact * 3 + [0, 1]) | st.integers(0, 80)


@st.composite
def channel_messages(draw: st.DrawFn, channel: int, mini: bool) -> bytes:
    """A few channel messages: known types with random bodies, unknown types, lying sizes."""
    table = w.CLIENT_MESSAGES[channel]
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        msg_type = draw(st.sampled_from(sorted(table)) | st.integers(0, 0xFFFF))
        cls = table.get(msg_type)
        body = draw(st.binary(min_size=0, max_size=80))
        if cls is not None:
            body = draw(st.binary(min_size=draw(_body_sizes(cls)), max_size=96))
        size = draw(st.sampled_from([len(body)] * 6 + HUGE_SIZES))
        if mini:
            header = struct.pack("<HI", msg_type, size)
        else:
            sub_list = draw(st.sampled_from([0, 0, 0, 12, 0xFFFFFFFF]))
            header = struct.pack("<QHII", draw(st.integers(0, 2**64 - 1)), msg_type, size, sub_list)
        out += header + body
    return mutate(out, draw(mutations)) if draw(st.integers(0, 3)) == 0 else out


UPGRADE = (
    "GET {path} HTTP/1.1\r\n"
    "Host: 127.0.0.1\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: binary\r\n"
    "\r\n"
)


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x11\x22\x33\x44",
    length: int | None = None,
) -> bytes:
    """One WebSocket frame as a client sends it (masked), with any length field."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 15)
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 1 << 16:
        head = bytes([first, bit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


PAGE_MESSAGES = [
    {"type": "start", "codec": "mjpeg"},
    {"type": "start", "codec": "theora"},
    {"type": "ack", "frame": 0},
    {"type": "ack", "frame": 10**30},
    {"type": "ping", "t0": 1.5},
    {"type": "stats", "fps": 60},
    {"type": "key", "code": "KeyA", "down": True},
    {"type": "pointer", "x": -(10**12), "y": 1e308},
    {"type": "button", "button": 99, "down": 1},
    {"type": "wheel", "dy": "NaN"},
    {"type": None},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def page_payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    """What a page might send on /ws, or something like it: (opcode, payload)."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        msg = dict(draw(st.sampled_from(PAGE_MESSAGES)))
        for key in draw(
            st.lists(st.sampled_from(["frame", "codec", "x", "down", "type"]), max_size=2)
        ):
            msg[key] = draw(json_values)
        return 1, json.dumps(msg).encode()
    if choice == 1:
        return 1, json.dumps(draw(json_values)).encode()
    if choice == 2:
        return 1, draw(st.text(max_size=60)).encode()
    return draw(st.sampled_from([2, 0, 9, 10, 8, 3, 15])), draw(st.binary(max_size=60))


@st.composite
def spice_payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    opcode = draw(st.sampled_from([2, 2, 2, 0, 1, 9, 10, 8, 7]))
    return opcode, draw(link_bytes() | st.binary(max_size=80))


@st.composite
def ws_attempts(draw: st.DrawFn, path: str, payloads: Any) -> list[bytes]:
    """A WebSocket upgrade (usually right) and a few frames (often wrong)."""
    key = base64.b64encode(draw(st.binary(min_size=16, max_size=16))).decode()
    request = UPGRADE.format(path=path, key=key).encode()
    if draw(st.integers(0, 4)) == 0:
        lines = request.split(b"\r\n")
        del lines[draw(st.integers(1, 5))]
        request = b"\r\n".join(lines)
    if draw(st.integers(0, 5)) == 0:
        request = mutate(request, draw(mutations))
    frames = b""
    for _ in range(draw(st.integers(0, 4))):
        opcode, payload = draw(payloads)
        frames += ws_frame(
            opcode,
            payload,
            fin=draw(st.sampled_from([True, True, True, False])),
            rsv=draw(st.sampled_from([0, 0, 0, 0, 1, 4])),
            mask=draw(
                st.sampled_from([b"\x11\x22\x33\x44", b"\0\0\0\0", None, b"\x11\x22\x33\x44"])
            ),
            length=draw(
                st.sampled_from([None] * 6 + [126, 65535, 1 << 32, (1 << 63) - 1, (1 << 64) - 1])
            ),
        )
    if draw(st.integers(0, 3)) == 0:
        frames = mutate(frames, draw(mutations))
    return split(request + frames, draw(st.lists(st.integers(0, 1 << 12), max_size=3)))


@st.composite
def http_attempts(draw: st.DrawFn) -> list[bytes]:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "G\0T", "BREW"]))
    path = draw(
        st.sampled_from(
            [
                "/",
                "/ws",
                "/spice",
                "/login",
                "/metrics",
                "/healthz",
                "/static/app.js",
                "/static/../app.py",
                "/spice-html5/../../../etc/passwd",
                "/?token=x",
                "/" + "a" * 9000,
            ]
        )
    )
    version = draw(
        st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", ""])
    )
    headers = ["Host: 127.0.0.1"]
    body = draw(st.binary(max_size=100))
    for header in draw(
        st.lists(
            st.sampled_from(
                [
                    f"Content-Length: {len(body)}",
                    "Content-Length: 99999999999999999999",
                    "Content-Length: -1",
                    "Transfer-Encoding: chunked",
                    "Content-Type: application/x-www-form-urlencoded",
                    "Connection: close",
                    "Connection: keep-alive, Upgrade",
                    "Upgrade: websocket",
                    "Origin: http://evil.example",
                    "Cookie: saffron_session=" + "x" * 100,
                    "X-Long: " + "y" * 9000,
                    "Bad Header: 1",
                    ": empty",
                ]
            ),
            max_size=4,
        )
    ):
        headers.append(header)
    request = f"{method} {path} {version}\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    data = mutate(request.encode("latin-1") + body, draw(mutations))
    return split(data, draw(st.lists(st.integers(0, 1 << 14), max_size=3)))


# -- the fuzz tests ------------------------------------------------------------------------------


def _tick(live: Live) -> None:
    live.count("attempts")
    if live.stats["attempts"] % PROGRESS_EVERY == 0:
        live.watchers_progress()


@FUZZ
@given(chunks=link_attempts())
def test_fuzz_spice_link(check: Live, chunks: list[bytes]) -> None:
    """Random and mutated link messages on the SPICE port."""
    finish(check, connect(check.spice_port), chunks)
    _tick(check)


@FUZZ
@given(data=st.data())
def test_fuzz_spice_channels(check: Live, data: st.DataObject) -> None:
    """Real links, then random and mutated messages on the main, display, inputs and cursor."""
    channel = data.draw(st.sampled_from([1, 2, 3, 4]))
    mini = data.draw(st.booleans())
    common = CLIENT_CAPS if mini else MINI_OFF_CAPS
    caps = data.draw(st.sampled_from([(), soak.SPICE_GTK_DISPLAY_CAPS, (0xFFFFFFFF,)]))
    main = connect(check.spice_port)
    main_port = main.getsockname()[1]
    main_mini = spice_link(main, w.ChannelType.MAIN, common=common)
    session = main_init(main, main_mini)
    messages = data.draw(channel_messages(channel, mini))
    chunks = split(messages, data.draw(st.lists(st.integers(0, 1 << 10), max_size=3)))
    if channel == w.ChannelType.MAIN:
        finish(check, main, chunks)
    else:
        sock = connect(check.spice_port)
        spice_link(sock, channel, session, caps, common)
        finish(check, sock, chunks, also=(main_port,), others=1)
        finish(check, main, [])
    _tick(check)


@FUZZ
@given(data=st.data())
def test_fuzz_websockets(check: Live, data: st.DataObject) -> None:
    """WebSocket upgrades and frames to /ws, /spice on the web port, and the SPICE port."""
    where = data.draw(st.sampled_from(["/ws", "/spice", "spice-port"]))
    if where == "/ws":
        chunks = data.draw(ws_attempts("/ws", page_payloads()))
    else:
        chunks = data.draw(ws_attempts("/spice" if where == "/spice" else "/", spice_payloads()))
    port = check.spice_port if where == "spice-port" else check.web_port
    finish(check, connect(port), chunks)
    _tick(check)


@FUZZ
@given(chunks=http_attempts())
def test_fuzz_http(check: Live, chunks: list[bytes]) -> None:
    """Random and mutated HTTP requests to the web port."""
    finish(check, connect(check.web_port), chunks)
    _tick(check)


# -- inputs that are certainly wrong: a warning that names the connection ----------------------


def _link_mess(channel: int = 1) -> bytes:
    body = w.LinkMess(0, channel, 0, CLIENT_CAPS, ()).pack()
    return w.LinkHeader(2, 2, len(body)).pack() + body


def _upgrade(path: str) -> bytes:
    return UPGRADE.format(path=path, key=base64.b64encode(bytes(16)).decode()).encode()


FOUR_GIB_FRAME = ws_frame(2, b"x" * 64, length=(1 << 32) + 64)
CLOSE_FRAME = ws_frame(8, struct.pack(">H", 1000))
BAD_INPUTS: dict[str, tuple[str, bytes, str]] = {
    "spice-not-spice": ("spice", b"HELLO WORLD, ANYONE THERE?\r\n", "not a SPICE client"),
    "spice-4gib-link": (
        "spice",
        struct.pack("<4sIII", w.MAGIC, 2, 2, (1 << 32) - 1),
        "link message of 4294967295 bytes",
    ),
    "spice-version-3": ("spice", struct.pack("<4sIII", w.MAGIC, 3, 0, 18), "version 3 is not 2"),
    "spice-no-such-channel": ("spice", _link_mess(99), "no type-99 channel"),
    "spice-sasl": ("spice", _link_mess() + struct.pack("<I", 2) + bytes(128), "mechanism 2"),
    "spice-port-http": ("spice", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "Missing header"),
    "spice-port-text-frame": (
        "spice",
        _upgrade("/") + ws_frame(1, b"REDQ"),
        "text frame",
    ),
    "spice-port-4gib-frame": ("spice", _upgrade("/") + FOUR_GIB_FRAME, "not a SPICE client"),
    "ws-upgrade-not-utf8": (
        "web",
        _upgrade("/ws").replace(b"Upgrade: websocket", b"Upgrade:\x80websocket"),
        "headers are not text",
    ),
    "ws-key-not-ascii": (
        "web",
        _upgrade("/spice").replace(b"Key: AAAA", "Key: ÄÄ".encode()),
        "headers are not text",
    ),
    "ws-binary": ("web", _upgrade("/ws") + ws_frame(2, b"\x01\x02"), "binary data"),
    "ws-not-json": ("web", _upgrade("/ws") + ws_frame(1, b"{{{"), "not JSON"),
    "ws-unknown-type": ("web", _upgrade("/ws") + ws_frame(1, b'{"type": "x"}'), "unknown message"),
    "ws-4gib-frame": ("web", _upgrade("/ws") + FOUR_GIB_FRAME, "exceeds limit"),
    "web-spice-4gib-frame": ("web", _upgrade("/spice") + FOUR_GIB_FRAME, "exceeds limit"),
    "web-spice-text": ("web", _upgrade("/spice") + ws_frame(1, _link_mess()), "text frame"),
    "web-spice-junk": ("web", _upgrade("/spice") + ws_frame(2, b"JUNKJUNKJUNKJUNK"), "not a SPICE"),
    "web-long-header": ("web", b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "bad HTTP"),
    "web-bad-chunks": (
        "web",
        b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
        "bad HTTP",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_closed_with_a_warning(check: Live, case: str) -> None:
    """The server closes these on its own (no half-close here) and warns, naming the peer."""
    where, data, words = BAD_INPUTS[case]
    if data.startswith(b"GET /ws") or data.startswith(b"GET /spice"):
        data += CLOSE_FRAME  # as a browser answers the server's close (aiohttp waits for it)
    sock = connect(check.spice_port if where == "spice" else check.web_port)
    port = sock.getsockname()[1]
    start = len(check.records)
    send_all(sock, [data])
    read_until_closed(sock)
    sock.close()
    found = [
        text
        for level, _, text in check.records.since(start)
        if level == logging.WARNING and naming(port).search(text)
    ]
    assert found, check.records.since(start)
    assert any(words in text for text in found), found


def test_huge_sizes_allocate_nothing(check: Live) -> None:
    """4 GiB length fields on every path: refused on sight, the process does not grow."""
    before = soak.rss_mb(os.getpid())
    for case in (
        "spice-4gib-link",
        "spice-port-4gib-frame",
        "ws-4gib-frame",
        "web-spice-4gib-frame",
    ):
        where, data, _ = BAD_INPUTS[case]
        for _ in range(20):
            sock = connect(check.spice_port if where == "spice" else check.web_port)
            send_all(sock, [data])
            read_until_closed(sock)
            sock.close()
    main = connect(check.spice_port)
    mini = spice_link(main, w.ChannelType.MAIN)
    main_init(main, mini)
    send_all(main, [struct.pack("<HI", 1, (1 << 32) - 1)])
    read_until_closed(main)
    main.close()
    check.settled()
    assert soak.rss_mb(os.getpid()) - before < 64, "a size field made the server allocate"


# -- half-sent handshakes time out --------------------------------------------------------------


HALF_SENT: dict[str, tuple[str, bytes, str]] = {
    "spice-half-header": ("spice", w.MAGIC + b"\x02\0", "no SPICE link within"),
    "spice-half-link": ("spice", _link_mess()[:20], "no SPICE link within"),
    "spice-no-ticket": ("spice", _link_mess(), "no SPICE link within"),
    "spice-port-half-upgrade": ("spice", b"GET / HTTP/1.1\r\nHost:", "no SPICE link within"),
    "spice-port-upgraded-only": ("spice", _upgrade("/"), "no SPICE link within"),
    "web-half-request": ("web", b"GET / HTTP/1.1\r\nHost: 127.0", "no complete request"),
    "web-half-body": (
        "web",
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\npassword=",
        "no complete request",
    ),
    "web-half-upgrade": ("web", _upgrade("/ws")[:40], "no complete request"),
    "web-spice-upgraded-only": ("web", _upgrade("/spice"), "no SPICE link within"),
}


@pytest.mark.parametrize("case", sorted(HALF_SENT))
def test_half_sent_handshake_times_out(
    check: Live, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A client that sends part of a handshake and waits is closed, with a warning."""
    monkeypatch.setattr(spice_server_module, "LINK_TIMEOUT_S", 0.5)
    monkeypatch.setattr(web_server_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    where, data, words = HALF_SENT[case]
    sock = connect(check.spice_port if where == "spice" else check.web_port)
    port = sock.getsockname()[1]
    start = len(check.records)
    send_all(sock, [data])
    read_until_closed(sock)  # without sending more: the server must close it
    sock.close()
    found = [
        text
        for level, _, text in check.records.since(start)
        if level == logging.WARNING and naming(port).search(text)
    ]
    assert any(words in text for text in found), check.records.since(start)


def test_idle_keepalive_connection_is_closed_quietly(
    check: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a complete request, an idle browser connection is closed without a warning."""
    monkeypatch.setattr(web_server_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    sock = connect(check.web_port)
    port = sock.getsockname()[1]
    start = len(check.records)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200")
    about = [r for r in check.records.since(start) if naming(port).search(r[2])]
    assert about and all(level < logging.WARNING for level, _, _ in about), about


def test_refusal_log_is_summed_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of refusals is one line, then a count, not one line each."""
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage())

    handler = Catch()
    logging.getLogger("saffron.limits").addHandler(handler)
    try:
        limits = limits_module.ConnectionLimits(max_connections=5, max_per_address=2)
        slots = [limits.admit("10.0.0.1", "SPICE") for _ in range(2)]
        assert all(slots)
        for _ in range(1000):
            assert limits.admit("10.0.0.1", "SPICE") is None
        limits.flush_log()
        assert len(caught) == 2, caught
        assert "refused a SPICE connection from 10.0.0.1" in caught[0]
        assert "refused 999 more connections from 10.0.0.1" in caught[1]
        for slot in slots:
            limits.release(slot)
            limits.release(slot)  # twice is harmless
        assert limits.total == 0 and limits.open_from("10.0.0.1") == 0
    finally:
        logging.getLogger("saffron.limits").removeHandler(handler)
