"""Latency on a slow link: newest-wins against a naive FIFO, in one run.

Saffron (the ``pattern`` producer, whose frames carry their capture time in
their top rows) and a measuring viewer run inside a network namespace of
their own whose loopback is shaped with ``tc tbf`` to a few Mbit/s. The
viewer decodes every frame with FFmpeg, reads the capture time back from the
pixels and records the frame's age. Needs root (namespaces, tc).

    saffron bench --full                 # the minute-long version, with the other tables
    python -m saffron.bench.slowlink     # just this
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import table
from .clients import WebFrame, watch_web
from .netns import exec_in, shaped_namespace
from .process import saffron_command, start_saffron
from .stats import percentile


async def viewer(url: str, seconds: float, codec: str) -> dict[str, Any]:
    """Watch the page at ``url`` for ``seconds``: every frame decoded, its age read from
    its pixels."""
    import av
    import numpy as np
    from av.video.codeccontext import VideoCodecContext

    from ..sources.pattern import read_stamp

    decoder = av.CodecContext.create({"h264": "h264", "vp8": "vp8", "vp9": "vp9"}[codec], "r")
    assert isinstance(decoder, VideoCodecContext)
    samples: list[tuple[float, float]] = []  # (seconds since start, age ms)
    received = 0
    start = time.monotonic()

    def on_frame(f: WebFrame) -> None:
        nonlocal received
        received += f.size
        for frame in decoder.decode(av.Packet(f.data)):
            pixels = np.asarray(frame.to_ndarray(format="bgra"), np.uint8)
            age = (time.time_ns() // 1000 - read_stamp(pixels)) / 1000
            if 0 <= age < 600_000:  # a misread stamp is not a frame age
                samples.append((time.monotonic() - start, age))

    await watch_web(url, on_frame, codec=codec, seconds=seconds)
    return {"samples": samples, "bytes": received, "seconds": time.monotonic() - start}


def summarize(mode: str, report: dict[str, Any], windows: int = 6) -> dict[str, Any]:
    samples = report["samples"]
    ages = [a for _, a in samples]
    span = report["seconds"]
    trend = []
    for i in range(windows):
        lo, hi = span * i / windows, span * (i + 1) / windows
        part = [a for t, a in samples if lo <= t < hi]
        trend.append(round(percentile(part, 95)) if part else None)
    return {
        "mode": mode,
        "frames_per_s": round(len(ages) / span, 1),
        "kbit_s": round(report["bytes"] * 8 / 1000 / span),
        "age_p50_ms": round(percentile(ages, 50)),
        "age_p95_ms": round(percentile(ages, 95)),
        "age_p99_ms": round(percentile(ages, 99)),
        "p95_trend_ms": trend,
    }


MODES = {
    "newest-wins + rate control": ["--buffering", "newest"],
    "newest-wins, fixed bitrate": ["--buffering", "newest", "--fixed-bitrate"],
    "FIFO, fixed bitrate": ["--buffering", "fifo", "--fixed-bitrate"],
}
"""Saffron as it ships, its buffering alone, and the naive queue it replaces."""


def run_mode(
    namespace: str, mode: str, seconds: float, *, bitrate: int, codec: str, fps: int
) -> dict[str, Any]:
    port = 18000 + os.getpid() % 1000  # the namespace is new: nothing else listens in it
    exec_ns = exec_in(namespace)
    serve = saffron_command(
        "serve",
        *("--source", "pattern", "--motion", "0.5", "--fps", str(fps)),
        *("--bitrate", str(bitrate), "--codec", codec, *MODES[mode]),
        *("--web", f"127.0.0.1:{port}"),
    )
    watch = [
        sys.executable,
        "-m",
        "saffron.bench.slowlink",
        "--viewer",
        f"http://127.0.0.1:{port}/",
    ]
    with (
        tempfile.TemporaryDirectory(prefix="saffron-slowlink-") as tmp,
        start_saffron([*exec_ns, *serve], Path(tmp) / "saffron.log", web_port=port),
    ):
        out = subprocess.run(
            [*exec_ns, *watch, "--seconds", str(seconds), "--codec", codec],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
        return summarize(mode, json.loads(out.stdout))


def run(
    seconds: float = 60,
    *,
    link_kbit: int = 4000,
    bitrate: int = 20000,
    codec: str = "h264",
    fps: int = 60,
) -> dict[str, Any]:
    """Both modes over the same shaped link, one after the other, in one run."""
    rows = []
    with shaped_namespace(link_kbit) as ns:
        for mode in MODES:
            print(
                f"slow link: {mode} buffering, {seconds:g} s over {link_kbit} kbit/s ...",
                file=sys.stderr,
                flush=True,
            )
            rows.append(run_mode(ns, mode, seconds, bitrate=bitrate, codec=codec, fps=fps))
    return {
        "link_kbit_s": link_kbit,
        "content_bitrate_kbit_s": bitrate,
        "codec": codec,
        "fps": fps,
        "seconds": seconds,
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    table.print_table(
        result["rows"],
        f"Slow link: {result['link_kbit_s']} kbit/s (tbf), pattern at {result['fps']} fps "
        f"asking {result['content_bitrate_kbit_s']} kbit/s, {result['codec']}, "
        f"{result['seconds']:g} s per mode; frame age = capture to decoded, from the pixels",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--viewer", metavar="URL", help="(internal) run the measuring viewer")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--codec", default="h264")
    p.add_argument("--link", type=int, default=4000, help="link rate, kbit/s")
    p.add_argument("--json")
    args = p.parse_args()
    if args.viewer:
        print(json.dumps(asyncio.run(viewer(args.viewer, args.seconds, args.codec))))
        return
    result = run(args.seconds, link_kbit=args.link, codec=args.codec)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
