"""A whole Saffron in-process, watched by a good SPICE viewer and a good web viewer,
for the tests that throw bad clients, floods and faults at it (test_fuzz_net,
test_fuzz_connections, test_faults); and what those tests share around it:
waiting on a condition, the log records, a connection that sends and reads until
the server closes, WebSocket handshakes and frames, a SPICE viewer from any
loopback address, and figures for pytest's terminal summary (see ``publish`` and
tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from saffron.app import Options, Server
from saffron.bench.clients import Tally, spice_viewer, web_viewer
from saffron.display import Display
from saffron.sources.pattern import PatternSource
from saffron.spice import wire as w
from tests.conftest import ARTIFACTS
from tests.spice.pyclient import PyClient, open_session

T = TypeVar("T")

IO_TIMEOUT = 60.0
"""Safety net only: how long a client waits for the server before the test fails."""

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def wait_until(predicate: Callable[[], bool], timeout: float = 30, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds; whether it did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


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

    def texts(self, level: int = logging.DEBUG, start: int = 0) -> list[str]:
        """The messages at ``level`` or above, from record ``start`` on."""
        return [text for lvl, _, text in self.since(start) if lvl >= level]


# -- Saffron and its two good viewers ------------------------------------------------------------


@dataclass
class Live:
    server: Server
    producer: PatternSource
    web_port: int
    spice_port: int
    records: Records
    spice_watch: Tally
    web_watch: Tally
    clients: asyncio.AbstractEventLoop
    """The loop the good viewers run on, and any other client of the test (``run``)."""
    baseline: int = 0
    """Connections the two good viewers hold."""

    @property
    def open_connections(self) -> int:
        return self.server.limits.total

    @property
    def frames(self) -> int:
        """Frames the good viewers received so far, together."""
        return self.spice_watch.frames + self.web_watch.frames

    def progress(self) -> None:
        """Both good viewers receive new frames."""
        seen = (self.spice_watch.frames, self.web_watch.frames)
        assert wait_until(
            lambda: self.spice_watch.frames > seen[0] and self.web_watch.frames > seen[1],
            timeout=IO_TIMEOUT,
        ), f"the good viewers stopped: {self.spice_watch}, {self.web_watch}"

    def settled(self, others: int = 0) -> None:
        """Only the good viewers' connections (and ``others``) are open again."""
        expected = self.baseline + others
        assert wait_until(lambda: self.open_connections == expected), (
            f"{self.open_connections} connections open, {expected} expected"
        )

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 2 * IO_TIMEOUT) -> T:
        """Run a client coroutine on the clients' loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.clients)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise


@contextmanager
def watched_saffron(
    *,
    producer: type[PatternSource] = PatternSource,
    size: tuple[int, int] = (160, 96),
    level: int = logging.INFO,
    **options: Any,
) -> Iterator[Live]:
    """A whole Saffron (web and SPICE, MJPEG at 30 fps) running in-process on its own
    loop, with a SPICE viewer and a web viewer (saffron.bench.clients') watching it from
    another. ``level`` is the saffron logger's while it runs; ``options`` go to
    :class:`Options`. On the way out: both viewers still watching, nothing logged
    as an error."""
    records = Records()
    root, saffron_log = logging.getLogger(), logging.getLogger("saffron")
    old_level = saffron_log.level
    root.addHandler(records)
    saffron_log.setLevel(level)
    loop = _loop_thread("saffron")
    clients = _loop_thread("clients")
    display = Display()
    opts = Options(
        source="pattern",
        web=("127.0.0.1", 0),
        spice=("127.0.0.1", 0),
        codec="mjpeg",
        fps=30,
        size=size,
        **options,
    )
    source = producer(display, size[0], size[1], 30)
    server = Server(opts, display, source)
    watchers: list[Future[None]] = []
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
        assert server.web is not None and server.spice is not None
        web_port = server.web.addresses[0][1]
        spice_port = server.spice.port  # type: ignore[attr-defined]
        live = Live(
            server,
            source,
            web_port,
            spice_port,
            records,
            Tally(),
            Tally(),
            clients,
        )
        watchers += [
            asyncio.run_coroutine_threadsafe(
                spice_viewer("127.0.0.1", spice_port, live.spice_watch), clients
            ),
            asyncio.run_coroutine_threadsafe(
                web_viewer(f"http://127.0.0.1:{web_port}/", live.web_watch), clients
            ),
        ]
        assert wait_until(
            lambda: live.spice_watch.frames > 0 and live.web_watch.frames > 0, IO_TIMEOUT
        ), f"the good viewers got no frames: {live.spice_watch}, {live.web_watch}"
        live.baseline = live.open_connections
        assert live.baseline == 3, "a SPICE main and display channel and one page"
        yield live
        ended = [task.exception() for task in watchers if task.done()]
        assert not ended, f"a good viewer stopped watching: {ended}"
        assert not records.errors(), records.errors()
    finally:
        _stop_watchers(clients, watchers)
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        _stop_loop(loop)
        root.removeHandler(records)
        saffron_log.setLevel(old_level)


def _loop_thread(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop, running in a thread of its own until ``_stop_loop``."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name=name, daemon=True).start()
    return loop


def _stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    if wait_until(lambda: not loop.is_running(), timeout=10):
        loop.close()


def _stop_watchers(loop: asyncio.AbstractEventLoop, tasks: list[Future[None]]) -> None:
    """Cancel the viewers, let them close their sockets, then stop their loop."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            task.result(10)
    _stop_loop(loop)


# -- clients ---------------------------------------------------------------------------------------


async def connect(port: int, source: str = "127.0.0.1") -> Streams:
    """A TCP connection to 127.0.0.1:``port`` from ``source`` (any 127.x.y.z)."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def local_port(streams: Streams) -> int:
    return int(streams[1].get_extra_info("sockname")[1])


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


def upgrade(path: str) -> bytes:
    """A WebSocket handshake request for ``path``."""
    return UPGRADE.format(path=path, key=base64.b64encode(bytes(16)).decode()).encode()


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


async def exchange(streams: Streams, chunks: list[bytes], *, half_close: bool) -> tuple[int, bytes]:
    """Read all the server sends until it closes (a reset counts as closing), while
    sending the chunks (stopping where the server closed meanwhile) and then, if told
    to, half-closing; returns the bytes sent and the server's answer. Fails if the
    server keeps the connection open for ``IO_TIMEOUT``."""
    reader, writer = streams
    answer = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 16):
                answer.extend(data)

    reading = asyncio.ensure_future(read())
    sent = 0
    try:
        with contextlib.suppress(OSError):  # a reset, a broken pipe, not connected
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            if half_close:
                writer.write_eof()
        try:
            await asyncio.wait_for(reading, IO_TIMEOUT)
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open ({len(answer)} bytes answered)"
            ) from None
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return sent, bytes(answer)


GTK_DISPLAY_CAPS = (0x6FBF,)
"""The display channel capabilities spice-gtk sends (MULTI_CODEC, every codec)."""


async def watch_spice(
    port: int,
    frames: int,
    *,
    source: str | None = None,
    timeout: float = IO_TIMEOUT,
) -> list[w.Message | w.RawMessage]:
    """A SPICE viewer (as spice-gtk links and acks) from ``source``: what its display
    channel received until ``frames`` stream frames had come."""
    with contextlib.ExitStack() as opened:
        main, init = await open_session(port, source=source)
        opened.callback(main.close)
        display = await PyClient.open(
            port,
            w.ChannelType.DISPLAY,
            connection_id=init.session_id,
            channel_caps=GTK_DISPLAY_CAPS,
            source=source,
        )
        opened.callback(display.close)
        display.auto_ack = True
        display.send(w.DisplayInit(1, 1000, 1, 1000))
        got: list[w.Message | w.RawMessage] = []
        async with asyncio.timeout(timeout):
            while sum(isinstance(m, w.StreamData | w.StreamDataSized) for m in got) < frames:
                got.append(await display.read(timeout))
        return got


# -- figures for the terminal summary ------------------------------------------------------------


def publish(name: str, figures: dict[str, Any], summary: str) -> None:
    """Write ``figures`` and their one-line ``summary`` to ARTIFACTS/``name``.json; the
    terminal summary (tests/conftest.py) prints the summary of every such file this
    test process wrote."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = {"summary": summary, "pid": os.getpid(), **figures}
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
