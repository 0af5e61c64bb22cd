"""``saffron bench``: the frame path measured against the bare encoder, side by side.

For each codec and size, in one run: the bare encode loop (the encoder fed the
same frames back to back, nothing else running) and the whole path (pattern
producer -> Display -> FrameSlot -> encoder thread -> Broadcast -> a local
WebSocket viewer that acknowledges every frame). Each is the median of
several runs. The producer's present() time (its "done") is measured on every
call of the path runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .broadcast import Broadcast
from .display import Display, Frame, Pixels, Rect, now_us
from .encoders.registry import available_codecs, create_encoder
from .sources.pattern import PatternSource
from .table import print_table
from .web.protocol import unpack_video
from .web.server import WebServer

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
    from aiohttp import ClientSession, WSMsgType
    from aiohttp.test_utils import TestServer

    loop = asyncio.get_running_loop()
    display = Display()
    broadcast = Broadcast(display, loop, fps=60, bitrate_kbps=bitrate)
    server = WebServer(display, broadcast, codecs=[codec], default_codec=codec)
    ts = TestServer(server.app, host="127.0.0.1")
    await ts.start_server()
    producer = _Producer(display, frames, producer_fps)
    received = 0
    counting = False
    try:
        async with ClientSession() as session:
            ws = await session.ws_connect(ts.make_url("/ws"))
            await ws.receive()  # hello
            await ws.send_str(json.dumps({"type": "start", "codec": codec}))
            producer.thread.start()
            warm_until = time.perf_counter() + 0.5
            end = warm_until + seconds
            start_count = 0
            while time.perf_counter() < end:
                try:
                    msg = await asyncio.wait_for(ws.receive(), 2)
                except TimeoutError:
                    continue
                if msg.type != WSMsgType.BINARY:
                    continue
                header, _ = unpack_video(msg.data)
                await ws.send_str(json.dumps({"type": "ack", "frame": header.frame}))
                received += 1
                if not counting and time.perf_counter() >= warm_until:
                    counting, start_count = True, received
                    producer.done_ns.clear()
                    t_start = time.perf_counter()
            elapsed = time.perf_counter() - t_start
            fps = (received - start_count) / elapsed
            await ws.close()
    finally:
        producer.stop.set()
        producer.thread.join(2)
        skipped = broadcast.streams[codec].slot.replaced if codec in broadcast.streams else 0
        await server.close()
        await ts.close()
        broadcast.close()
    return fps, list(producer.done_ns), skipped


def _pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) / 1000.0


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
        round(_pct(done, 50), 1),
        round(_pct(done, 99), 1),
        skipped,
    )


def _machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "cpu": platform.processor(), "cores": os.cpu_count()}


def _write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {path}")


def run_bench(args: argparse.Namespace) -> int:
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # the table is the output
    if args.soak:
        return _soak(args)
    codecs = args.codecs.split(",") if args.codecs else available_codecs()
    sizes = [
        tuple(int(v) for v in s.split("x")) for s in (args.sizes or "1280x720,1920x1080").split(",")
    ]
    runs = max(args.runs, 1)
    seconds = args.seconds
    bitrate = 8000
    results: dict[str, Any] = {
        "machine": _machine(),
        "settings": {
            "runs": runs,
            "seconds": seconds,
            "bitrate_kbps": bitrate,
            "producer_rate": f"{PRODUCER_HEADROOM} x bare encoder fps",
        },
        "path": [],
    }
    total = len(codecs) * len(sizes)
    rows = []
    for i, size in enumerate(sizes):
        for j, codec in enumerate(codecs):
            k = i * len(codecs) + j + 1
            print(
                f"[{k}/{total}] {codec} at {size[0]}x{size[1]}: {runs} runs of "
                f"{seconds:g} s each, bare encoder and whole path ...",
                file=sys.stderr,
                flush=True,
            )
            row = measure(codec, (size[0], size[1]), runs, seconds, bitrate)
            rows.append(asdict(row))
    results["path"] = rows
    print_table(
        rows,
        "Whole path (producer -> slot -> encoder -> WebSocket viewer) vs bare encoder; "
        "medians; present() = the producer's done, in microseconds",
        align="right",
        rule=True,
    )
    if args.full:
        results.update(_full())
    _write_json(args.json, results)
    return 0


def _soak(args: argparse.Namespace) -> int:
    """``--soak``: the soak alone (saffron.soak); exit 1 if it found a leak or an error."""
    from . import soak

    seconds = args.soak_seconds
    print(
        f"soak: {seconds:g} s at 60 fps, 5 viewers (web and SPICE) coming and going; "
        "progress every 30 s ...",
        file=sys.stderr,
        flush=True,
    )
    result = soak.run(seconds)
    _write_json(args.json, {"machine": _machine(), "soak": result})
    return 0 if result["ok"] else 1


def _full() -> dict[str, Any]:
    """The tables of the measurement issue: slow link, fan-out, idle, beside spice-server."""
    from . import loadbench, netbench

    out: dict[str, Any] = {}
    if os.geteuid() == 0:
        slow = netbench.run(60)
        netbench.print_table(slow)
        out["slow_link"] = slow
    else:
        print("\nslow link: skipped, it needs root for a network namespace", file=sys.stderr)
    out["fanout"] = loadbench.fanout()
    print_table(out["fanout"], "Fan-out: one h264 stream, 1280x720 at 30 fps; server CPU in cores")
    out["idle"] = loadbench.idle()
    print_table(out["idle"], "Idle")
    script = Path(__file__).resolve().parents[2] / "bench" / "spice_vs_saffron.py"
    if script.exists():  # a source checkout: it needs the test guest builder
        json_path = Path("bench-results") / "spice-vs-saffron.json"
        json_path.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, str(script), "--json", str(json_path)], check=False)
        if json_path.exists():
            out["spice_vs_saffron"] = json.loads(json_path.read_text())
    return out


def main() -> None:  # pragma: no cover - `python -m saffron.bench`
    from .cli import main as cli_main

    sys.exit(cli_main(["bench", *sys.argv[1:]]))
