"""How soon a still picture is sharp in Chromium after it stops moving, for each web codec.

Saffron runs in this process, on a loop thread of its own, as ``saffron serve --still
--size 960x540`` would (the demo scene, which draws only when input changes it): the
bench reads the source picture from the Display (``last_frame``), which a subprocess
would not show it. Chromium (saffron.bench.chromium) opens the page at 1:1 scale with
``?codec=``, and for each of :data:`DRAGS` drags of the scene:

- the page keeps a copy of its canvas (getImageData) each time something was drawn on
  it, stamped with the time since the last video frame was drawn (the page's
  ``saffronStats.videoAt``; a new video frame starts the copies over);
- once the scene stood still for :data:`WATCH_MS`, the source picture goes to the
  page, which gives each copy's PSNR against it: the canvas with the video alone (the
  copy taken when the last video frame was drawn), the canvas at each of
  :data:`MARKS_MS`, and the time until it is the source exactly (or at least
  :data:`LOSSY_FLOOR_DB` where the server sent JPEG tiles).

Medians of the drags per codec; the time to sharp also as its maximum. ``-vv`` writes
Saffron's debug log (when tiles were due, encoded and sent; the rate control) to a
file and names it.

``python -m saffron.bench.sharp [--codecs LIST] [--drags N] [--json FILE] [-v]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import logging
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..app import Options, Server
from ..display import Display
from ..sources.demo import DemoSource
from ..table import print_table
from .chromium import CHROMIUM, CHROMIUM_ARGS
from .stats import percentile

CODECS = ("h264", "vp8", "vp9", "av1", "mjpeg")
SIZE = (960, 540)
DRAGS = 5
MARKS_MS = (250, 500, 750, 1000)
WATCH_MS = 3000.0
"""How long after the last video frame the page keeps copying its canvas: long past the
500 ms the refresh is meant to take, so a slow one still gets a time."""
LOSSY_FLOOR_DB = 45.0
"""Sharp enough where the server chose JPEG tiles (q98 4:4:4) for a refresh that would
not fit the page's rate as PNG."""
SETTLE_S = 0.3
"""The producer drew nothing for this long after the drag: the scene stands still."""
START_S = 60.0
MAX_COPIES = 400
"""Canvas copies a drag may keep (2 MB each at 960x540): a bound, never reached when the
refresh works (a few dozen draws)."""

WATCH_JS = """([watchMs, maxCopies]) => {
  const canvas = document.getElementById("screen");
  const ctx = canvas.getContext("2d");
  const st = window.saffronStats;
  const w = window.sharpWatch = {copies: [], videoAt: -1, tileAt: -1, tiles0: 0, jpeg0: 0,
                                 videos: 0, overflow: false};
  const copy = (t) => {
    if (w.copies.length >= maxCopies) { w.overflow = true; return; }
    w.copies.push({t, tiles: st.stillTiles - w.tiles0, jpeg: st.stillJpeg - w.jpeg0,
                   data: ctx.getImageData(0, 0, canvas.width, canvas.height).data});
  };
  const tick = () => {
    if (st.videoAt !== w.videoAt) {  // a video frame was drawn: start over from it
      w.videoAt = st.videoAt; w.tileAt = st.tileAt; w.videos += 1;
      w.tiles0 = st.stillTiles; w.jpeg0 = st.stillJpeg; w.copies = []; w.overflow = false;
      copy(0);
    } else if (st.tileAt !== w.tileAt) {  // tiles drawn since the last look
      w.tileAt = st.tileAt;
      if (st.tileAt - w.videoAt <= watchMs) copy(st.tileAt - w.videoAt);
    }
    setTimeout(tick, 5);
  };
  tick();
}"""
"""Installed once per page: copies of the canvas after each change, timed from the last
video frame drawn (``performance.now()`` of the draw itself, not of the look)."""

SCORE_JS = """([src, floor]) => {
  const w = window.sharpWatch;
  const bin = atob(src);
  const n = bin.length / 3;
  const psnr = (d) => {
    if (d.length !== n * 4) return 0;
    let sum = 0;
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      const r = d[j] - bin.charCodeAt(3 * i), g = d[j + 1] - bin.charCodeAt(3 * i + 1),
            b = d[j + 2] - bin.charCodeAt(3 * i + 2);
      sum += r * r + g * g + b * b;
    }
    return sum === 0 ? null : 10 * Math.log10(255 * 255 / (sum / (3 * n)));  // null: exact
  };
  const out = w.copies.map((c) => ({t: c.t, tiles: c.tiles, jpeg: c.jpeg, psnr: psnr(c.data)}));
  w.copies = [];
  return {copies: out, since: performance.now() - w.videoAt, videos: w.videos,
          overflow: w.overflow};
}"""
"""The PSNR of each copy against the source (RGB, base64), as tests/support/canvas.py
computes it; None (JSON has no infinity) where the copy is the source exactly."""

STATS_JS = "() => Object.assign({}, window.saffronStats)"


def missing() -> str | None:
    """What is missing to drive Chromium here, in words; None: nothing."""
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM}"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed"
    return None


class BenchError(RuntimeError):
    """The page did not show the codec, or the scene did not settle: nothing to measure."""


@dataclass
class Drag:
    """One drag's measurements; PSNR in dB (inf: exact), times in ms from the last video
    frame drawn; ``sharp_ms`` None: not sharp within :data:`WATCH_MS`."""

    video_db: float
    at_db: dict[int, float]
    sharp_ms: float | None
    png: int
    jpeg: int


@dataclass
class InProcess:
    """Saffron serving the still demo on its own loop thread."""

    loop: asyncio.AbstractEventLoop
    server: Server
    display: Display
    port: int

    def source(self) -> np.ndarray:
        """The picture the producer drew last, as RGB (the page's canvas order)."""
        frame = self.display.last_frame
        if frame is None:
            raise BenchError("the demo drew nothing")
        return np.ascontiguousarray(frame.pixels[..., 2::-1])


@contextlib.contextmanager
def still_demo(size: tuple[int, int] = SIZE) -> Iterator[InProcess]:
    """``saffron serve --still --size WxH`` in this process, web on a free loopback port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="saffron", daemon=True)
    thread.start()
    display = Display()
    opts = Options(source="demo", web=("127.0.0.1", 0), size=size)
    source = DemoSource(display, size[0], size[1], opts.fps, still=True)
    server = Server(opts, display, source)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(START_S)
        assert server.web is not None
        yield InProcess(loop, server, display, server.web.addresses[0][1])
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not loop.is_running():
            loop.close()


def _drag(page: Any, n: int, steps: int = 12) -> None:
    """A drag across the middle of the canvas, as a user's (30 ms between moves); each
    drag goes another way so the scene ends somewhere new."""
    box = page.locator("#screen").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    dx, dy = (9, 4) if n % 2 == 0 else (-7, 5)
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(steps):
        page.mouse.move(x + dx * i, y + dy * i)
        page.wait_for_timeout(30)
    page.mouse.up()


def _settle(run: InProcess, timeout: float = 30.0) -> None:
    """Return once the producer drew nothing for :data:`SETTLE_S`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if time.monotonic() - run.display.drawn_at >= SETTLE_S:
            return
        time.sleep(0.02)
    raise BenchError("the demo kept drawing after the drag")


def _db(value: float | None) -> float:
    return math.inf if value is None else float(value)


def measure_drag(page: Any, run: InProcess, n: int) -> Drag:
    """Drag, wait until the scene stood still for :data:`WATCH_MS` on the page, score."""
    shown = page.evaluate("window.saffronStats.framesDecoded")
    _drag(page, n)
    page.wait_for_function(f"() => window.saffronStats.framesDecoded > {shown}", timeout=30000)
    _settle(run)
    page.wait_for_function(
        f"() => performance.now() - window.sharpWatch.videoAt > {WATCH_MS}",
        timeout=WATCH_MS + 30000,
        polling=50,
    )
    src = base64.b64encode(run.source().tobytes()).decode()
    scored = page.evaluate(SCORE_JS, [src, LOSSY_FLOOR_DB])
    copies: list[dict[str, Any]] = scored["copies"]
    if not copies:
        raise BenchError("no copy of the canvas after the last video frame")
    if scored["overflow"]:
        print(
            f"  drag {n + 1}: more than {MAX_COPIES} draws, the rest not looked at", file=sys.stderr
        )

    def at(ms: float) -> dict[str, Any]:
        return [c for c in copies if c["t"] <= ms][-1]

    sharp_ms = None
    for c in copies:
        value = _db(c["psnr"])
        if value == math.inf or (c["jpeg"] > 0 and value >= LOSSY_FLOOR_DB):
            sharp_ms = max(float(c["t"]), 0.0)
            break
    last = copies[-1]
    return Drag(
        video_db=_db(copies[0]["psnr"]),
        at_db={ms: _db(at(ms)["psnr"]) for ms in MARKS_MS},
        sharp_ms=sharp_ms,
        png=int(last["tiles"] - last["jpeg"]),
        jpeg=int(last["jpeg"]),
    )


def measure_codec(browser: Any, run: InProcess, codec: str, drags: int) -> list[Drag]:
    page = browser.new_page(viewport={"width": SIZE[0], "height": SIZE[1]})
    try:
        page.goto(f"http://127.0.0.1:{run.port}/?codec={codec}")
        page.wait_for_function("() => window.saffronStats.framesDecoded > 0", timeout=30000)
        shown = page.evaluate("window.saffronStats.codec")
        if shown != codec:
            raise BenchError(f"this Chromium shows {shown or 'nothing'}, not {codec}")
        page.evaluate(WATCH_JS, [WATCH_MS, MAX_COPIES])
        out = []
        for n in range(drags):
            d = measure_drag(page, run, n)
            print(
                f"  {codec} drag {n + 1}: video {_fmt_db(d.video_db)}, "
                + ", ".join(f"{ms} ms {_fmt_db(d.at_db[ms])}" for ms in MARKS_MS)
                + f"; sharp at {_fmt_ms(d.sharp_ms)}; {d.png} PNG, {d.jpeg} JPEG tiles",
                file=sys.stderr,
                flush=True,
            )
            out.append(d)
        return out
    finally:
        page.close()


def _fmt_db(v: float | str) -> str:
    return v if isinstance(v, str) else "exact" if v == math.inf else f"{v:.1f} dB"


def _fmt_ms(v: float | None) -> str:
    return f"> {WATCH_MS:.0f} ms" if v is None else f"{v:.0f} ms"


def _median_db(values: list[float]) -> float:
    """The median; inf (exact) counts as the highest value."""
    return float(statistics.median(values))


def summarize(codec: str, drags: list[Drag]) -> dict[str, Any]:
    """One codec's row: medians of its drags (time to sharp: median and maximum, None
    where a drag was not sharp within the watch)."""
    times = [d.sharp_ms for d in drags]
    known = [t for t in times if t is not None]
    missed = len(known) < len(times)
    row: dict[str, Any] = {
        "codec": codec,
        "drags": len(drags),
        "video_db": _median_db([d.video_db for d in drags]),
    }
    for ms in MARKS_MS:
        row[f"at_{ms}_db"] = _median_db([d.at_db[ms] for d in drags])
    row["sharp_p50_ms"] = None if len(known) * 2 <= len(times) else percentile(known, 50)
    row["sharp_max_ms"] = None if missed else max(known)
    row["sharp_within_500"] = sum(1 for t in times if t is not None and t <= 500)
    row["png_tiles"] = sum(d.png for d in drags)
    row["jpeg_tiles"] = sum(d.jpeg for d in drags)
    return row


def run(
    codecs: list[str] | None = None, drags: int = DRAGS, log: Path | None = None
) -> dict[str, Any]:
    """Every codec's row (``error`` instead where it could not be measured)."""
    from playwright.sync_api import sync_playwright

    codecs = list(codecs or CODECS)
    handler = _debug_log(log) if log is not None else None
    rows: list[dict[str, Any]] = []
    try:
        with still_demo() as saffron, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                web = saffron.server.web
                assert web is not None
                for codec in codecs:
                    print(f"{codec}: {drags} drags ...", file=sys.stderr, flush=True)
                    if codec not in web.codecs:
                        rows.append({"codec": codec, "error": "no encoder on this host"})
                        continue
                    try:
                        rows.append(summarize(codec, measure_codec(browser, saffron, codec, drags)))
                    except BenchError as exc:
                        rows.append({"codec": codec, "error": str(exc)})
            finally:
                browser.close()
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    for row in rows:  # JSON has no infinity
        row.update({k: "exact" for k, v in row.items() if v == math.inf})
    return {
        "size": f"{SIZE[0]}x{SIZE[1]}",
        "drags": drags,
        "watch_ms": WATCH_MS,
        "lossy_floor_db": LOSSY_FLOOR_DB,
        "log": str(log) if log is not None else None,
        "codecs": rows,
    }


def _debug_log(path: Path) -> logging.Handler:
    """Saffron's debug log into ``path`` while the bench runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for h in logging.getLogger().handlers:  # the terminal keeps warnings only
        h.setLevel(max(h.level, logging.WARNING))
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(name)s %(message)s", "%H:%M:%S")
    )
    logging.getLogger().addHandler(handler)
    logging.getLogger("saffron").setLevel(logging.DEBUG)
    return handler


def print_results(result: dict[str, Any]) -> None:
    def cell(row: dict[str, Any]) -> dict[str, str]:
        if "error" in row:
            return {"codec": row["codec"], "video only": row["error"]}
        tiles = [f"{row['png_tiles']} PNG"] + (
            [f"{row['jpeg_tiles']} JPEG"] if row["jpeg_tiles"] else []
        )
        return {
            "codec": row["codec"],
            "video only": _fmt_db(row["video_db"]),
            **{f"{ms} ms": _fmt_db(row[f"at_{ms}_db"]) for ms in MARKS_MS},
            "sharp p50/max": f"{_fmt_ms(row['sharp_p50_ms'])} / {_fmt_ms(row['sharp_max_ms'])}",
            "<= 500 ms": f"{row['sharp_within_500']}/{row['drags']}",
            "tiles": ", ".join(tiles),
        }

    rows = [cell(r) for r in result["codecs"]]
    header = max((list(r) for r in rows), key=len) if rows else None
    print_table(
        [[r.get(h, "") for h in header] for r in rows] if header else [],
        f"Sharp still picture in Chromium at 1:1, {result['size']} demo --still after a drag; "
        f"PSNR of the canvas against the source (median of {result['drags']} drags), "
        "from the last video frame drawn; sharp = exact, or >= "
        f"{result['lossy_floor_db']:g} dB with JPEG tiles",
        header=header,
        rule=True,
    )
    if result.get("log"):
        print(f"\nSaffron's debug log: {result['log']}")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m saffron.bench.sharp", description=__doc__)
    ap.add_argument("--codecs", help=f"comma-separated (default {','.join(CODECS)})")
    ap.add_argument("--drags", type=int, default=DRAGS)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument(
        "-v", "--verbose", action="count", default=0, help="-vv: Saffron's debug log to a file"
    )
    a = ap.parse_args()
    why = missing()
    if why is not None:
        raise SystemExit(f"cannot run the sharp bench: {why}")
    logging.basicConfig(level=logging.WARNING)
    log = None
    if a.verbose >= 2:
        log = Path(tempfile.mkdtemp(prefix="saffron-sharp-")) / "saffron.log"
    result = run(a.codecs.split(",") if a.codecs else None, max(a.drags, 1), log)
    print_results(result)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
