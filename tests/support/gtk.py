"""Test helpers for the SPICE front end: an in-process server, a producer, a Python client.

The server runs on an asyncio loop in a thread, so that real clients (spice-gtk
through a subprocess, remote-viewer, Chromium) and the test body can all talk
to it while the test waits in ordinary blocking code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from saffron.bench.spice_gtk import SYSTEM_PYTHON, script_env
from saffron.broadcast import Broadcast
from saffron.display import Button, Display, DisplayInfo, Rect
from saffron.encoders.base import Packet
from saffron.sources.pattern import draw_stamp
from saffron.spice.server import SpiceServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ARTIFACTS = ROOT / ".cache" / "test-artifacts"
GTK_CLIENT = HERE / "gtk_client.py"

T = TypeVar("T")


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


@dataclass
class Running:
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
) -> Iterator[tuple[Running, Scene | None]]:
    """A running server (port chosen by the OS) and, unless ``scene=False``, a Scene."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="spice-loop", daemon=True)
    thread.start()
    display = Display(DisplayInfo(name="saffron-test", uuid=bytes(range(16))))
    kwargs.setdefault("password", None)

    async def make() -> Running:
        broadcast = Broadcast(display, loop, fps=fps, bitrate_kbps=4000)
        server = SpiceServer(display, broadcast, **kwargs)
        await server.start("127.0.0.1", 0)
        return Running(loop, display, broadcast, server)

    running: Running = asyncio.run_coroutine_threadsafe(make(), loop).result(60)

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
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


def run_gtk_client(
    port: int,
    *args: str,
    timeout: float = 60,
    on_phase: dict[str, Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Run tests/spice/gtk_client.py with the system Python; returns its JSON report.

    ``on_phase`` maps a progress phase the client prints to a function run when it
    does; after the "measured" and "still-N" phases the client waits for a line on
    stdin, which is sent once that phase's function returned.
    """
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, str(GTK_CLIENT), "--port", str(port), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(),
    )
    err_lines: list[str] = []
    reader = threading.Thread(
        target=lambda: err_lines.extend(proc.stderr or []), name="gtk-stderr", daemon=True
    )
    reader.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    result: dict[str, Any] | None = None
    try:
        assert proc.stdout is not None and proc.stdin is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            phase = obj.get("phase")
            if phase is None:
                result = obj
                continue
            if on_phase and phase in on_phase:
                on_phase[phase]()
            if phase == "measured" or phase.startswith("still-"):
                proc.stdin.write("go\n")
                proc.stdin.flush()
        proc.wait(10)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    stderr = "".join(err_lines)
    if result is None:
        raise AssertionError(f"gtk_client printed no report (exit {proc.returncode}):\n{stderr}")
    result["_stderr"] = stderr[-4000:]
    return result


def quiet_logs() -> None:
    logging.getLogger("saffron").setLevel(logging.INFO)
