"""The in-process harness: Saffron, or one of its front ends, running inside the test
process on an event loop of its own thread (or on the test's own loop), so that real
clients over loopback sockets and the test body can talk to it while the test waits
in ordinary blocking code.

- ``saffron``: a whole Saffron (app.py's Server: web and/or SPICE, pattern producer,
  MJPEG) with the given Options; ``tls_saffron`` with an HTTPS page and a SPICE TLS port.
- ``watched_saffron``: the same, watched by a good SPICE viewer and a good web viewer
  (saffron.bench.clients'), for the tests that throw bad clients, floods and faults at
  it: on the way out both still watch and nothing was logged as an error.
- ``saffron_here``: a whole Saffron without a producer on the test's own loop.
- ``web_site``: the web front end alone (aiohttp's TestServer) on the test's own loop.
- ``spice_server``: the SPICE front end alone with a moving ``Scene`` as producer.
- ``Records``: every log record while one runs; ``RecordingInput``: the input that
  reached the display; ``broken_h264``: an encoder factory whose H.264 fails.

It owns starting and stopping those servers and their loops; it does not know any
test's assertions beyond the harness's own (the good viewers, no error logged).
A Saffron as a subprocess is tests/support/process.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from aiohttp.test_utils import TestServer

from saffron.app import Options, Server
from saffron.bench.clients import Tally, spice_viewer, web_viewer
from saffron.broadcast import Broadcast
from saffron.display import Button, Display, DisplayInfo, Rect
from saffron.encoders.base import Encoder, EncoderError, Packet
from saffron.encoders.registry import create_encoder
from saffron.net.tls import Certificate, self_signed
from saffron.sources.pattern import PatternSource, draw_stamp
from saffron.spice.server import SpiceServer
from saffron.web.server import WebServer
from tests.support.wait import wait_until

T = TypeVar("T")

IO_TIMEOUT = 60.0
"""Safety net only: how long a client waits for the server before the test fails."""


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


class RecordingInput:
    """A display's input handler that keeps every event it receives."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def key(self, scancode: int, down: bool) -> None:
        self.events.append(("key", scancode, down))

    def pointer(self, x: int, y: int) -> None:
        self.events.append(("pointer", x, y))

    def motion(self, dx: int, dy: int) -> None:
        self.events.append(("motion", dx, dy))

    def button(self, button: Button, down: bool) -> None:
        self.events.append(("button", button, down))


class BrokenH264(Encoder):
    """An H.264 encoder that fails on every frame."""

    codec, backend = "h264", "broken"

    def encode(self, frame: Any, keyframe: bool = False, prepared: object = None) -> Any:
        raise EncoderError("simulated failure")


def broken_h264(codec: str, w_: int, h: int, fps: int, kbps: int, skip: int) -> Encoder:
    """An encoder factory (Broadcast's ``_factory``) whose H.264 fails."""
    if codec == "h264":
        return BrokenH264(w_, h, fps, kbps)
    return create_encoder(codec, w_, h, fps, kbps, skip)


# -- loops in threads ------------------------------------------------------------------------------


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


@contextmanager
def _recording(level: int) -> Iterator[Records]:
    """Every log record (of any logger) while it is open, the saffron logger at ``level``."""
    records = Records()
    root, saffron_log = logging.getLogger(), logging.getLogger("saffron")
    old_level = saffron_log.level
    root.addHandler(records)
    saffron_log.setLevel(level)
    try:
        yield records
    finally:
        root.removeHandler(records)
        saffron_log.setLevel(old_level)


# -- a whole Saffron ------------------------------------------------------------------------------


@dataclass
class Running:
    """A whole Saffron on its own loop thread."""

    loop: asyncio.AbstractEventLoop
    server: Server
    producer: PatternSource
    records: Records
    web_port: int = 0
    spice_port: int = 0
    """The last SPICE port it listens on (the TLS one when it has both)."""

    @property
    def limits(self) -> Any:
        return self.server.limits

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        """Run ``coro`` on Saffron's loop and wait for its result."""

        async def awaited() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(awaited(), self.loop).result(timeout)


@contextmanager
def saffron(
    *,
    producer: type[PatternSource] = PatternSource,
    size: tuple[int, int] = (160, 96),
    level: int = logging.DEBUG,
    **options: Any,
) -> Iterator[Running]:
    """A whole Saffron (pattern producer, MJPEG at 30 fps) running in-process on its own
    loop, with the given :class:`Options` (``web``/``spice`` say which ports it opens).
    ``level`` is the saffron logger's while it runs; every record is in ``records``."""
    with _recording(level) as records:
        loop = _loop_thread("saffron")
        display = Display()
        opts = Options(source="pattern", codec="mjpeg", fps=30, size=size, **options)
        source = producer(display, size[0], size[1], 30)
        server = Server(opts, display, source)
        try:
            asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
            running = Running(loop, server, source, records)
            if server.web is not None:
                running.web_port = server.web.addresses[0][1]
            if server.spice is not None:
                running.spice_port = server.spice.addresses[-1][1]
            yield running
        finally:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
            _stop_loop(loop)


@dataclass
class TlsPorts:
    """A Saffron with an HTTPS page and a SPICE TLS port; ``target`` the one under test."""

    s: Running
    target: int
    cert: Certificate


@contextmanager
def tls_saffron(tmp_path: Path, port: str, **options: Any) -> Iterator[TlsPorts]:
    """``saffron`` with a self-signed certificate on its web port and a SPICE TLS port;
    ``port`` ("web" or "spice-tls") names the target."""
    cert = self_signed(tmp_path, hosts=["127.0.0.1"])
    with saffron(
        web=("127.0.0.1", 0),
        spice_tls=("127.0.0.1", 0),
        cert=cert.cert,
        key=cert.key,
        **options,
    ) as s:
        yield TlsPorts(s, s.web_port if port == "web" else s.spice_port, cert)


# -- ... watched by two good viewers --------------------------------------------------------------


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
    """``saffron`` with web and SPICE, and a SPICE viewer and a web viewer
    (saffron.bench.clients') watching it from another loop. On the way out: both
    viewers still watching, nothing logged as an error."""
    with saffron(
        producer=producer,
        size=size,
        level=level,
        web=("127.0.0.1", 0),
        spice=("127.0.0.1", 0),
        **options,
    ) as running:
        records = running.records
        clients = _loop_thread("clients")
        watchers: list[Future[None]] = []
        try:
            live = Live(
                running.server,
                running.producer,
                running.web_port,
                running.spice_port,
                records,
                Tally(),
                Tally(),
                clients,
            )
            watchers += [
                asyncio.run_coroutine_threadsafe(
                    spice_viewer("127.0.0.1", live.spice_port, live.spice_watch), clients
                ),
                asyncio.run_coroutine_threadsafe(
                    web_viewer(f"http://127.0.0.1:{live.web_port}/", live.web_watch), clients
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


def _stop_watchers(loop: asyncio.AbstractEventLoop, tasks: list[Future[None]]) -> None:
    """Cancel the viewers, let them close their sockets, then stop their loop."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            task.result(10)
    _stop_loop(loop)


# -- on the test's own loop -----------------------------------------------------------------------


@asynccontextmanager
async def saffron_here(**options: Any) -> AsyncIterator[tuple[Server, int, RecordingInput]]:
    """A whole Saffron on the caller's loop (web, and SPICE for its ``/spice`` route), no
    producer: the Server, its web port, and the input that reached the display."""
    display = Display()
    display.scanout(64, 48)
    rec = RecordingInput()
    display.input = rec
    opts = Options(web=("127.0.0.1", 0), spice=("127.0.0.1", 0), codec="mjpeg", **options)
    server = Server(opts, display, None)
    await server.start()
    assert server.web is not None
    try:
        yield server, server.web.addresses[0][1], rec
    finally:
        await server.close()


@dataclass
class WebSite:
    """The web front end alone: its URL, display, server, broadcast and recorded input."""

    url: str
    display: Display
    server: WebServer
    broadcast: Broadcast
    input: RecordingInput


@asynccontextmanager
async def web_site(
    *,
    size: tuple[int, int] = (64, 48),
    broadcast: dict[str, Any] | None = None,
    **web: Any,
) -> AsyncIterator[WebSite]:
    """A WebServer (``web`` its arguments) on aiohttp's TestServer on the caller's loop,
    over a display of ``size`` whose input a RecordingInput keeps; ``broadcast`` the
    Broadcast's arguments."""
    display = Display()
    display.scanout(*size)
    rec = RecordingInput()
    display.input = rec
    frames = Broadcast(display, asyncio.get_running_loop(), **(broadcast or {}))
    server = WebServer(display, frames, **web)
    ts = TestServer(server.app, host="127.0.0.1")
    await ts.start_server()
    try:
        yield WebSite(str(ts.make_url("/")), display, server, frames, rec)
    finally:
        await ts.close()
        frames.close()


# -- the SPICE front end alone --------------------------------------------------------------------


class Scene:
    """A producer thread: a still background, a moving square, the capture time in rows 0-15.

    It keeps every input event it receives (it is the display's InputHandler), and
    the last picture it presented, to compare with what a client shows.
    """

    def __init__(self, display: Display, width: int = 640, height: int = 480, fps: int = 30):
        self.display = display
        self.width, self.height, self.fps = width, height, fps
        y, x = np.mgrid[0:height, 0:width]
        bg = np.zeros((height, width, 4), np.uint8)
        bg[..., 0] = (x * 255 // (width - 1)).astype(np.uint8)  # blue grows to the right
        bg[..., 1] = (y * 255 // (height - 1)).astype(np.uint8)  # green grows downwards
        bg[..., 2] = 160
        bg[(x // 40 + y // 40) % 2 == 0, 2] = 40  # a checkerboard in red: sharp edges
        bg[..., 3] = 255
        self.background = bg
        self.frames = 0
        self.last: np.ndarray | None = None
        self.events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._run = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scene", daemon=True)
        display.input = self
        display.scanout(width, height)

    # producer
    def start(self) -> None:
        self._run.set()
        self._thread.start()

    def pause(self) -> None:
        self._run.clear()

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(5)

    def frame(self, n: int, stamp: int) -> tuple[np.ndarray, Rect]:
        img = self.background.copy()
        size = 48
        span = self.width - size
        x = (n * 7) % (2 * span)
        x = x if x < span else 2 * span - x
        y = self.height // 2 - size // 2
        img[y : y + size, x : x + size, :3] = (0, 220, 255)
        draw_stamp(img, stamp)
        damage = Rect(0, 0, self.width, self.height)
        if n > 0:  # the stamp rows and the strip the square moves in
            damage = Rect(0, 0, self.width, 16).union(Rect(0, y, self.width, size))
        return img, damage

    def _loop(self) -> None:
        period = 1 / self.fps
        n = 0
        while not self._stop.is_set():
            self._run.wait()
            if self._stop.is_set():
                return
            stamp = time.time_ns() // 1000
            img, damage = self.frame(n, stamp)
            full = self.last is None
            self.display.present(img, None if full else damage, owned=True, capture_us=stamp)
            self.last = img
            n += 1
            self.frames += 1
            time.sleep(period)

    # InputHandler
    def key(self, scancode: int, down: bool) -> None:
        with self._lock:
            self.events.append(("key", scancode, down))

    def pointer(self, x: int, y: int) -> None:
        with self._lock:
            self.events.append(("pointer", x, y))

    def motion(self, dx: int, dy: int) -> None:
        with self._lock:
            self.events.append(("motion", dx, dy))

    def button(self, button: Button, down: bool) -> None:
        with self._lock:
            self.events.append(("button", int(button), down))

    def recorded(self) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self.events)


EXPECTED_INPUT = [
    ("key", 0x1E, True),
    ("key", 0x1E, False),
    ("key", 0xE048, True),
    ("key", 0xE048, False),
    ("pointer", 100, 50),
    ("button", 1, True),
    ("button", 1, False),
    ("button", 4, True),
    ("button", 4, False),
    ("motion", 5, -3),
]
"""What a Scene records of the input the SPICE input tests send (a Python client's
messages, spice-gtk's ``--input``)."""


@dataclass
class SpiceRunning:
    """A SpiceServer on its own loop thread, with its display and broadcast."""

    loop: asyncio.AbstractEventLoop
    display: Display
    broadcast: Broadcast
    server: SpiceServer
    sent: dict[int, float] = field(default_factory=dict)
    """capture_us -> wall-clock time the frame was sent (first client only)."""
    codecs_sent: dict[str, int] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, fn: Callable[[], T], timeout: float = 10) -> T:
        """Run ``fn`` on the server's loop and return its result."""
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def spice_server(
    *,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    scene: bool = True,
    **kwargs: Any,
) -> Iterator[tuple[SpiceRunning, Scene | None]]:
    """A running SpiceServer (port chosen by the OS; ``kwargs`` its arguments) and,
    unless ``scene=False``, a Scene."""
    loop = _loop_thread("spice-loop")
    display = Display(DisplayInfo(name="saffron-test", uuid=bytes(range(16))))
    kwargs.setdefault("password", None)

    async def make() -> SpiceRunning:
        broadcast = Broadcast(display, loop, fps=fps, bitrate_kbps=4000)
        server = SpiceServer(display, broadcast, **kwargs)
        await server.start("127.0.0.1", 0)
        return SpiceRunning(loop, display, broadcast, server)

    running: SpiceRunning = asyncio.run_coroutine_threadsafe(make(), loop).result(60)

    def on_sent(label: str, packet: Packet, stamp: int) -> None:
        running.sent.setdefault(packet.capture_us, time.time())
        running.codecs_sent[packet.codec] = running.codecs_sent.get(packet.codec, 0) + 1

    running.server.frame_listeners.append(on_sent)
    producer = Scene(display, width, height, fps) if scene else None
    if producer is not None:
        producer.start()
    try:
        yield running, producer
    finally:
        if producer is not None:
            producer.stop()
        try:
            running.run(running.server.close(), timeout=10)
        finally:
            running.broadcast.close()
            _stop_loop(loop)
