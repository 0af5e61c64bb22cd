"""Latency on a slow link: newest-wins against a naive FIFO, web and SPICE, in one run.

Saffron (the ``pattern`` producer, whose frames carry their capture time in
their top rows) and a measuring viewer run inside a network namespace of
their own whose loopback is shaped with ``tc tbf`` to a few Mbit/s. The web
viewer decodes every frame with FFmpeg, the SPICE one is spice-gtk
(gtk_frames.py, reading the surface it draws); both read the capture time back
from the pixels and record the frame's age, from the moment they connect, so
the start counts. Needs root (namespaces, tc).

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
from .netns import TBF_BURST, TBF_LATENCY_MS, exec_in, shaped_namespace
from .process import saffron_command, start_saffron
from .spice_gtk import SYSTEM_PYTHON, script_env
from .stats import percentile

GTK_FRAMES = Path(__file__).with_name("gtk_frames.py")


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


TREND_WINDOW_S = 10.0
"""The p95 is also given per stretch of about this many seconds (at least two stretches,
so a short run shows the direction too): how it moves over the run."""


def summarize(viewer: str, mode: str, report: dict[str, Any]) -> dict[str, Any]:
    samples = report["samples"]
    ages = [a for _, a in samples]
    span = report["seconds"]
    windows = max(2, round(span / TREND_WINDOW_S))
    trend = []
    for i in range(windows):
        lo, hi = span * i / windows, span * (i + 1) / windows
        part = [a for t, a in samples if lo <= t < hi]
        trend.append(round(percentile(part, 95)) if part else None)
    return {
        "viewer": viewer,
        "mode": mode,
        "frames_per_s": round(len(ages) / span, 1),
        "kbit_s": round(report["bytes"] * 8 / 1000 / span),
        "age_p50_ms": round(percentile(ages, 50)) if ages else None,
        "age_p95_ms": round(percentile(ages, 95)) if ages else None,
        "age_p99_ms": round(percentile(ages, 99)) if ages else None,
        "p95_trend_ms": trend,
    }


MODES = {
    "newest-wins + rate control": ["--buffering", "newest"],
    "newest-wins, fixed bitrate": ["--buffering", "newest", "--fixed-bitrate"],
    "FIFO, fixed bitrate": ["--buffering", "fifo", "--fixed-bitrate"],
}
"""Saffron as it ships, its buffering alone, and the naive queue it replaces."""


VIEWERS = ("web", "SPICE")
"""The web page's viewer (FFmpeg, in Python) and spice-gtk."""


def _lo_bytes(exec_ns: list[str]) -> int:
    """Bytes the namespace's loopback carried so far (both directions: acks are tiny)."""
    out = subprocess.run([*exec_ns, "cat", "/proc/net/dev"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[0])
    return 0


def run_mode(
    namespace: str,
    viewer_kind: str,
    mode: str,
    seconds: float,
    *,
    bitrate: int,
    codec: str,
    fps: int,
    size: str = "1280x720",
    keep_log: Path | None = None,
) -> dict[str, Any]:
    port = 18000 + os.getpid() % 1000  # the namespace is new: nothing else listens in it
    spice_port = port + 1
    exec_ns = exec_in(namespace)
    serve = saffron_command(
        "serve",
        *("--source", "pattern", "--motion", "0.5", "--fps", str(fps), "--size", size),
        *("--bitrate", str(bitrate), "--codec", codec, *MODES[mode]),
        *("--web", f"127.0.0.1:{port}", "--spice", f"127.0.0.1:{spice_port}"),
        *(["-vv"] if keep_log is not None else []),
    )
    if viewer_kind == "web":
        watch = [sys.executable, "-m", "saffron.bench.slowlink", "--viewer"]
        watch += [f"http://127.0.0.1:{port}/", "--seconds", str(seconds), "--codec", codec]
        env = None
    else:
        watch = [SYSTEM_PYTHON, str(GTK_FRAMES), "--port", str(spice_port), "--codec", codec]
        watch += ["--seconds", str(seconds), "--ages"]
        env = script_env()
    with (
        tempfile.TemporaryDirectory(prefix="saffron-slowlink-") as tmp,
        start_saffron([*exec_ns, *serve], Path(tmp) / "saffron.log", web_port=port) as saffron,
    ):
        before = _lo_bytes(exec_ns)
        try:
            out = subprocess.run(
                [*exec_ns, *watch],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=True,
                env=env,
            )
        finally:
            if keep_log is not None:
                keep_log.write_text(saffron.output())
        report = json.loads(out.stdout.strip().splitlines()[-1])
        if keep_log is not None:
            keep_log.with_suffix(".json").write_text(json.dumps(report))
        if "bytes" not in report:
            report["bytes"] = _lo_bytes(exec_ns) - before
        return summarize(viewer_kind, mode, report)


def run(
    seconds: float = 60,
    *,
    link_kbit: int = 4000,
    bitrate: int = 20000,
    codec: str = "h264",
    fps: int = 60,
    viewers: tuple[str, ...] = VIEWERS,
    modes: tuple[str, ...] = tuple(MODES),
    logs: Path | None = None,
) -> dict[str, Any]:
    """Every mode for every viewer over the same shaped link, one after the other."""
    rows = []
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    with shaped_namespace(link_kbit) as ns:
        for kind in viewers:
            for mode in modes:
                print(
                    f"slow link: {kind} viewer, {mode}, {seconds:g} s over {link_kbit} kbit/s ...",
                    file=sys.stderr,
                    flush=True,
                )
                name = "".join(c for c in f"{kind}-{mode}" if c.isalnum() or c in "-+")
                log = None if logs is None else logs / f"{name}.log"
                row = run_mode(
                    ns, kind, mode, seconds, bitrate=bitrate, codec=codec, fps=fps, keep_log=log
                )
                rows.append(row)
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
        f"Slow link: {result['link_kbit_s']} kbit/s (tbf, burst {TBF_BURST // 1000} kB, "
        f"latency {TBF_LATENCY_MS} ms), pattern 1280x720 at {result['fps']} fps "
        f"asking {result['content_bitrate_kbit_s']} kbit/s, {result['codec']}, "
        f"{result['seconds']:g} s per row from connecting; frame age = capture to shown "
        f"(web: decoded), from the pixels; p95 per stretch of about {TREND_WINDOW_S:g} s",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--viewer", metavar="URL", help="(internal) run the measuring viewer")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--codec", default="h264")
    p.add_argument("--link", type=int, default=4000, help="link rate, kbit/s")
    p.add_argument("--only", choices=VIEWERS, help="one viewer, not both")
    p.add_argument("--mode", choices=list(MODES), action="append", help="(repeatable)")
    p.add_argument("--json")
    p.add_argument("--logs", type=Path, help="keep each row's Saffron log in this folder")
    args = p.parse_args()
    if args.viewer:
        print(json.dumps(asyncio.run(viewer(args.viewer, args.seconds, args.codec))))
        return
    result = run(
        args.seconds,
        link_kbit=args.link,
        codec=args.codec,
        viewers=(args.only,) if args.only else VIEWERS,
        modes=tuple(args.mode) if args.mode else tuple(MODES),
        logs=args.logs,
    )
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
