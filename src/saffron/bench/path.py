"""``saffron bench``: the frame path measured against the bare encoder, side by side.

For each codec and size, in one run: the bare encode loop (the encoder fed the
same frames back to back, nothing else running) and the whole path (pattern
producer -> Display -> FrameSlot -> encoder thread -> Broadcast -> a local
WebSocket viewer that acknowledges every frame). Each is the median of
several runs. The producer's present() time (its "done") is measured on every
call of the path runs.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from dataclasses import dataclass

from ..broadcast import Broadcast
from ..display import Display, Frame, Pixels, Rect, now_us
from ..encoders.registry import create_encoder
from ..sources.pattern import PatternSource
from ..web.server import WebServer
from .clients import WebFrame, watch_web
from .stats import percentile

WARM_UP_S = 0.5
"""Frames reaching the viewer in the first half second are not counted: encoder and
viewer are still starting."""

DISTINCT_FRAMES = 24
"""Pre-rendered frames cycled through, so the producer costs nothing to make."""

PRODUCER_HEADROOM = 1.5
"""The producer runs this much faster than the bare encoder managed, so the
slot always has a frame waiting and the path, not the producer, sets the pace."""


@dataclass
class Row:
    codec: str
    size: str
    bare_fps: float
    path_fps: float
    ratio: float
    done_p50_us: float
    done_p99_us: float
    skipped: int


def _frames(width: int, height: int) -> list[Pixels]:
    src = PatternSource(Display(), width, height, 60, motion=0.5)
    return [src.make_frame(i / 10, now_us())[0] for i in range(DISTINCT_FRAMES)]


def bare_fps(codec: str, frames: list[Pixels], seconds: float, bitrate: int) -> float:
    h, w = frames[0].shape[:2]
    enc = create_encoder(codec, w, h, 60, bitrate)
    n = 0
    enc.encode(Frame(frames[0], Rect(0, 0, w, h), 0), keyframe=True)  # warm up
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        enc.encode(Frame(frames[n % len(frames)], Rect(0, 0, w, h), n, n))
        n += 1
    elapsed = time.perf_counter() - start
    enc.close()
    return n / elapsed


class _Producer:
    """Presents pre-made frames at ``fps`` and times every present()."""

    def __init__(self, display: Display, frames: list[Pixels], fps: float) -> None:
        self.display, self.frames, self.fps = display, frames, fps
        self.done_ns: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        period = 1 / self.fps
        n = 0
        next_t = time.perf_counter()
        while not self.stop.is_set():
            pixels = self.frames[n % len(self.frames)]
            t0 = time.perf_counter_ns()
            # The frames are never written again, so they can be given away.
            self.display.present(pixels, owned=True)
            self.done_ns.append(time.perf_counter_ns() - t0)
            n += 1
            next_t += period
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.perf_counter()


async def path_run(
    codec: str, frames: list[Pixels], seconds: float, bitrate: int, producer_fps: float
) -> tuple[float, list[int], int]:
    """Frames per second reaching a WebSocket viewer, present() times, skipped frames."""
    from aiohttp.test_utils import TestServer

    loop = asyncio.get_running_loop()
    display = Display()
    broadcast = Broadcast(display, loop, fps=60, bitrate_kbps=bitrate)
    server = WebServer(display, broadcast, codecs=[codec], default_codec=codec)
    ts = TestServer(server.app, host="127.0.0.1")
    await ts.start_server()
    producer = _Producer(display, frames, producer_fps)
    warm_until = t_start = t_last = 0.0
    counted = 0

    def start() -> None:
        nonlocal warm_until
        producer.thread.start()
        warm_until = time.perf_counter() + WARM_UP_S

    def on_frame(_: WebFrame) -> None:
        """Frames after the first one past the warm-up count; present() times from it."""
        nonlocal counted, t_start, t_last
        now = time.perf_counter()
        if t_start:
            counted, t_last = counted + 1, now
        elif now >= warm_until:
            producer.done_ns.clear()
            t_start = t_last = now

    try:
        url = str(ts.make_url("/"))
        await watch_web(url, on_frame, codec=codec, seconds=WARM_UP_S + seconds, on_start=start)
        fps = counted / (t_last - t_start) if counted else 0.0
    finally:
        producer.stop.set()
        if producer.thread.is_alive():
            producer.thread.join(2)
        skipped = broadcast.streams[codec].slot.replaced if codec in broadcast.streams else 0
        await server.close()
        await ts.close()
        broadcast.close()
    return fps, list(producer.done_ns), skipped


def measure(codec: str, size: tuple[int, int], runs: int, seconds: float, bitrate: int) -> Row:
    frames = _frames(*size)
    bare, path, done, skipped = [], [], [], 0
    for _ in range(runs):
        # Side by side: the bare loop and the path take turns within each run.
        bare.append(bare_fps(codec, frames, seconds, bitrate))
        rate = bare[-1] * PRODUCER_HEADROOM
        fps, times, sk = asyncio.run(path_run(codec, frames, seconds, bitrate, rate))
        path.append(fps)
        done += times
        skipped += sk
    b, p = statistics.median(bare), statistics.median(path)
    return Row(
        codec,
        f"{size[0]}x{size[1]}",
        round(b, 1),
        round(p, 1),
        round(p / b, 3),
        round(percentile(done, 50) / 1000, 1),
        round(percentile(done, 99) / 1000, 1),
        skipped,
    )
