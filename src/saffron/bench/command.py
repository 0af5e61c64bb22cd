"""``saffron bench``: its options, and the tables and JSON it prints and writes.

It reaches ``saffron``'s command line through the ``saffron.commands`` entry
point (``register``): the product's CLI lists what that group offers and never
imports this package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..encoders.registry import available_codecs
from ..table import print_table
from . import fanout, netns, path, sharp, slowlink, soak, spice_server, whip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``saffron bench`` to the command line (the ``saffron.commands`` entry point)."""
    bench = sub.add_parser("bench", help="measure the frame path")
    bench.set_defaults(handler=run_bench)
    bench.add_argument("--json", type=Path, help="write the results here")
    what = bench.add_mutually_exclusive_group()
    what.add_argument(
        "--full",
        action="store_true",
        help="also the slow link (root), fan-out, idle, spice-server, sharp still picture "
        "in Chromium and WHIP to Janus (root) tables (minutes)",
    )
    what.add_argument(
        "--soak",
        action="store_true",
        help="instead, the soak: 60 fps, 5 web and SPICE viewers coming and going, "
        "watched for leaks (10 minutes)",
    )
    bench.add_argument(
        "--soak-seconds", type=float, default=600.0, help="length of the soak (default 600)"
    )
    bench.add_argument("--codecs", help="comma-separated codecs (default: all software)")
    bench.add_argument("--sizes", help="comma-separated WxH (default 1280x720,1920x1080)")
    bench.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    bench.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    bench.add_argument("-v", "--verbose", action="count", default=0)


def _machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "cpu": platform.processor(), "cores": os.cpu_count()}


def _write_json(file: Path | None, results: dict[str, Any]) -> None:
    if file:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {file}")


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
            "producer_rate": f"{path.PRODUCER_HEADROOM} x bare encoder fps",
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
            row = path.measure(codec, (size[0], size[1]), runs, seconds, bitrate)
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
    """``--soak``: the soak alone (saffron.bench.soak); exit 1 if it found a leak or an error."""
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
    """The tables of the measurement issues: slow link, fan-out, idle, beside spice-server,
    the sharp still picture in Chromium, WHIP through Janus."""
    out: dict[str, Any] = {}
    if os.geteuid() == 0:
        slow = slowlink.run(60)
        slowlink.print_table(slow)
        out["slow_link"] = slow
    else:
        print("\nslow link: skipped, it needs root for a network namespace", file=sys.stderr)
    out["fanout"] = fanout.fanout()
    print_table(out["fanout"], "Fan-out: one h264 stream, 1280x720 at 30 fps; server CPU in cores")
    out["idle"] = fanout.idle()
    print_table(out["idle"], "Idle")
    try:
        out["spice_vs_saffron"] = spice_server.run()
    except spice_server.CannotRun as exc:
        print(f"\nbeside spice-server: skipped, {exc}", file=sys.stderr)
    why = sharp.missing()
    if why is None:
        out["sharp"] = sharp.run()
        sharp.print_results(out["sharp"])
    else:
        print(f"\nsharp still picture: skipped, {why}", file=sys.stderr)
    why = whip.missing() or netns.missing()
    if why is None:
        out["whip"] = whip.bench(seconds=8)
        whip.print_results(out["whip"])
    else:
        print(f"\nWHIP to Janus: skipped, {why}", file=sys.stderr)
    return out
