"""Fan-out and idle: what more viewers cost, and what no viewer costs.

Saffron runs as a subprocess (the ``pattern`` producer); its CPU is read from
/proc. Viewers are web-protocol clients in this process that acknowledge every
frame without decoding it, so their cost is not counted against the server.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..table import print_table
from .clients import WebFrame, watch_web
from .process import SaffronProcess, cpu_seconds, free_port, saffron_command, start_saffron


@contextmanager
def _saffron(*args: str) -> Iterator[SaffronProcess]:
    """``saffron serve ARGS`` with a web port, its log in a directory removed afterwards."""
    port = free_port()
    argv = saffron_command("serve", *args, "--web", f"127.0.0.1:{port}")
    with (
        tempfile.TemporaryDirectory(prefix="saffron-fanout-") as tmp,
        start_saffron(argv, Path(tmp) / "saffron.log", web_port=port) as p,
    ):
        yield p


async def _viewers(url: str, n: int, seconds: float, codec: str, after: float = 0.0) -> list[int]:
    """Frames each of ``n`` viewers received in ``seconds``, not counting the first ``after``."""
    counts = [0] * n

    async def one(i: int) -> None:
        start = 0.0

        def started() -> None:
            nonlocal start
            start = time.monotonic() + after

        def on_frame(_: WebFrame) -> None:
            if time.monotonic() >= start:
                counts[i] += 1

        await watch_web(url, on_frame, codec=codec, seconds=after + seconds, on_start=started)

    await asyncio.gather(*(one(i) for i in range(n)))
    return counts


def fanout(
    counts: tuple[int, ...] = (1, 10, 50),
    seconds: float = 10,
    codec: str = "h264",
    fps: int = 30,
    size: str = "1280x720",
) -> list[dict[str, Any]]:
    """Server CPU per second and frames per viewer for each number of viewers."""
    rows = []
    for n in counts:
        print(f"fan-out: {n} viewers for {seconds:g} s ...", file=sys.stderr, flush=True)
        pattern = ("--source", "pattern", "--fps", str(fps), "--size", size, "--codec", codec)
        with _saffron(*pattern) as p:
            time.sleep(1)
            asyncio.run(_viewers(p.url, n, 2, codec))  # encoders opened, caches warm
            cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
            got = asyncio.run(_viewers(p.url, n, seconds, codec))
            cpu = (cpu_seconds(p.pid) - cpu0) / (time.monotonic() - t0)
            rows.append(
                {
                    "viewers": n,
                    "server_cpu_s_per_s": round(cpu, 3),
                    "frames_per_viewer_per_s": round(sum(got) / n / seconds, 1),
                    "min_viewer_fps": round(min(got) / seconds, 1),
                    "encoded_frames": int(p.metric("saffron_frames_encoded_total")),
                }
            )
    base = rows[0]["server_cpu_s_per_s"] or 1e-9
    for r in rows:
        r["cpu_vs_one"] = round(r["server_cpu_s_per_s"] / base, 2)
    return rows


def idle(seconds: float = 10) -> list[dict[str, Any]]:
    """No viewer: nothing encoded and CPU near zero. A still picture: nothing sent."""
    rows = []
    print(f"idle: no viewer for {seconds:g} s ...", file=sys.stderr, flush=True)
    with _saffron("--source", "demo", "--fps", "60") as p:
        time.sleep(1)
        cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
        time.sleep(seconds)
        rows.append(
            {
                "case": "demo, no viewer",
                "cpu_s_per_s": round((cpu_seconds(p.pid) - cpu0) / (time.monotonic() - t0), 3),
                "frames_encoded": int(p.metric("saffron_frames_encoded_total")),
                "frames_sent_after_settle": None,
            }
        )
    print(f"idle: a still picture, one viewer, {seconds:g} s ...", file=sys.stderr, flush=True)
    with _saffron("--source", "demo", "--still", "--fps", "60") as p:
        cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
        got = asyncio.run(_viewers(p.url, 1, seconds, "h264", after=3))
        rows.append(
            {
                "case": "still demo, one viewer",
                "cpu_s_per_s": round((cpu_seconds(p.pid) - cpu0) / (time.monotonic() - t0), 3),
                "frames_encoded": int(p.metric("saffron_frames_encoded_total")),
                "frames_sent_after_settle": got[0],
            }
        )
    return rows


if __name__ == "__main__":
    print_table(fanout(), "Fan-out")
    print_table(idle(), "Idle")
