"""The soak: Saffron at 60 fps for minutes while viewers come and go, watched for leaks.

A ``saffron serve --source pattern`` subprocess serves five viewer slots, web
and SPICE mixed; each slot connects, watches a few seconds, disconnects and
comes back as a web or SPICE viewer, over and over. The viewers acknowledge
what they receive (so the server keeps sending) without decoding it. The
resident memory and open file descriptors of the Saffron process are read
from /proc throughout; after a warm-up under the same load (every encoder
open, the allocator's heaps at the size that load keeps) they must stay flat,
and once the last viewer left the descriptors must be back where they were.
Every kind of viewer must get frames. The log must have no error and no
traceback.

``run()`` is ``saffron bench --soak`` (ten minutes); tests/e2e/test_soak.py runs a
minute of it. The viewers are saffron.bench.clients'; the process is
saffron.bench.process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..table import print_table as print_rows
from .clients import Tally, ViewerError, spice_viewer, web_viewer
from .process import (
    SaffronProcess,
    free_port,
    open_fds,
    rss_mb,
    saffron_command,
    start_saffron,
)

WARMUP_S = 20.0
"""The full load runs this long before the baseline is taken, every kind of viewer
among it: encoders, their threads and buffers, and the allocator's heaps reach the
sizes they keep under that load. Growth after it is what a leak would show."""

SETTLE_S = 30.0
"""Longest wait for the descriptors to come back after the viewers left."""

STABLE_S = 2.0
"""Descriptors unchanged this long count as settled."""

SAMPLE_S = 1.0
"""How often memory and descriptors are read."""

PROGRESS_S = 30.0
"""How often a soak that is not quiet says how it is going (on stderr)."""

MAX_RSS_GROWTH_MB = 20.0
"""What the soak allows the resident memory to grow after the warm-up."""


MIN_VISIT_S = 2.0
"""A visit this long must get frames (only each viewer's last visit may be shorter)."""


def log_problems(text: str) -> list[str]:
    """Lines of a Saffron log that show something broke (errors, tracebacks)."""
    return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]


def _start_saffron(fps: int, size: tuple[int, int], log: Path) -> SaffronProcess:
    web, spice = free_port(), free_port()
    args = ("--source", "pattern", "--fps", str(fps), "--size", f"{size[0]}x{size[1]}")
    return start_saffron(
        saffron_command(
            "serve", *args, "--web", f"127.0.0.1:{web}", "--spice", f"127.0.0.1:{spice}"
        ),
        log,
        web_port=web,
        spice_port=spice,
    )


# -- the soak ---------------------------------------------------------------------------------


@dataclass
class _Visits:
    """The visits of one kind of viewer."""

    visits: int = 0
    frames: int = 0
    without_frames: int = 0
    """Visits of at least ``MIN_VISIT_S`` that got no frame: that viewer was starved."""

    def add(self, visit: Tally, stayed: float) -> None:
        self.visits += 1
        self.frames += visit.frames
        if visit.frames == 0 and stayed >= MIN_VISIT_S:
            self.without_frames += 1


@dataclass
class _Samples:
    rss: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


async def _watch(kind: str, p: SaffronProcess, tally: Tally, seconds: float) -> None:
    """One visit of one viewer: connect, watch ``seconds``, leave."""
    assert p.spice_port is not None
    if kind == "spice":
        coro = spice_viewer("127.0.0.1", p.spice_port, tally)
    else:
        coro = web_viewer(p.url, tally, codec="mjpeg" if kind == "web-mjpeg" else None)
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        exc = task.exception()
        tally.errors.append(f"{kind} viewer ended early: {exc!r}")
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ViewerError):
        await task


async def _settled_fds(pid: int, at_most: int | None, timeout: float) -> int:
    """Open descriptors once they stopped changing (and, if given, are ``at_most``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = open_fds(pid), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.2)
        now = open_fds(pid)
        if now != last:
            last, since = now, loop.time()
        elif loop.time() - since >= STABLE_S and (at_most is None or now <= at_most):
            break
    return last


def _progress(line: str) -> None:
    print(f"soak: {line}", file=sys.stderr, flush=True)


async def _soak(
    p: SaffronProcess, seconds: float, viewers: int, rng: random.Random, quiet: bool
) -> dict[str, Any]:
    kinds = ("web", "spice", "web-mjpeg")
    tally = Tally()
    samples = _Samples()
    rss_start = rss_mb(p.pid)
    fds_start = open_fds(p.pid)
    loop = asyncio.get_running_loop()
    by_kind = {k: _Visits() for k in kinds}

    async def slot(i: int, end: float) -> None:
        """Viewers one after another until ``end``; the first is of kind ``i``."""
        kind = kinds[i % len(kinds)]
        while loop.time() < end:
            stay = min(rng.uniform(MIN_VISIT_S, 5.0), max(end - loop.time(), 0.5))
            visit = Tally()
            await _watch(kind, p, visit, stay)
            tally.add(visit)
            by_kind[kind].add(visit, stay)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            kind = rng.choice(kinds)

    if not quiet:
        _progress(f"warm-up: {viewers} viewers for {WARMUP_S:g} s, then the baseline")
    warm_end = loop.time() + WARMUP_S
    await asyncio.gather(*(slot(i, warm_end) for i in range(max(viewers, len(kinds)))))
    fds_base = await _settled_fds(p.pid, None, SETTLE_S)
    rss_base = rss_mb(p.pid)
    warm_frames, warm_connects = tally.frames, tally.connects
    by_kind = {k: _Visits() for k in kinds}  # the run counts afresh: slot() looks it up per visit
    start = loop.time()
    end = start + seconds
    if not quiet:
        _progress(
            f"baseline: RSS {rss_base:.1f} MB, {fds_base} fds; {viewers} viewers for {seconds:g} s"
        )

    async def sample() -> None:
        last_print = loop.time()
        while loop.time() < end:
            samples.rss.append(rss_mb(p.pid))
            samples.fds.append(open_fds(p.pid))
            if not quiet and loop.time() - last_print >= PROGRESS_S:
                last_print = loop.time()
                _progress(
                    f"{loop.time() - start:4.0f}/{seconds:g} s: "
                    f"{tally.connects - warm_connects} viewers connected so far, "
                    f"{tally.frames - warm_frames} frames, {len(tally.errors)} viewer errors, "
                    f"RSS {samples.rss[-1]:.1f} MB, {samples.fds[-1]} fds"
                )
            await asyncio.sleep(SAMPLE_S)

    await asyncio.gather(sample(), *(slot(i, end) for i in range(viewers)))
    if not quiet:
        _progress("the viewers left; waiting for the descriptors to settle")
    fds_end = await _settled_fds(p.pid, fds_base, SETTLE_S)
    rss_end = rss_mb(p.pid)
    return {
        "seconds": seconds,
        "viewers": viewers,
        "visits": sum(v.visits for v in by_kind.values()),
        "by_kind": {k: asdict(v) for k, v in by_kind.items()},
        "connects": tally.connects - warm_connects,
        "frames": tally.frames - warm_frames,
        "viewer_errors": tally.errors,
        "rss_start_mb": round(rss_start, 1),
        "rss_baseline_mb": round(rss_base, 1),
        "rss_peak_mb": round(max(samples.rss, default=rss_base), 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_base, 1),
        "rss_every_10s_mb": [round(mb, 1) for mb in samples.rss[:: max(int(10 / SAMPLE_S), 1)]],
        "fds_start": fds_start,
        "fds_baseline": fds_base,
        "fds_peak": max(samples.fds, default=fds_base),
        "fds_end": fds_end,
    }


def run(
    seconds: float = 600,
    *,
    viewers: int = 5,
    fps: int = 60,
    size: tuple[int, int] = (1280, 720),
    seed: int = 1,
    log: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Soak a Saffron subprocess for ``seconds``; prints a table and returns the numbers.

    ``ok`` in the result is whether memory grew less than ``MAX_RSS_GROWTH_MB``
    after the warm-up, the descriptors came back to their baseline, and the log
    is clean.
    """
    if log is None:
        log = Path(tempfile.mkstemp(prefix="saffron-soak-", suffix=".log")[1])
    p = _start_saffron(fps, size, log)
    try:
        result = asyncio.run(_soak(p, seconds, viewers, random.Random(seed), quiet))
        alive = p.proc.poll() is None
    finally:
        p.stop()
    problems = log_problems(log.read_text(errors="replace"))
    result.update(
        fps=fps,
        size=f"{size[0]}x{size[1]}",
        alive=alive,
        log=str(log),
        log_problems=problems[:20],
        warnings=sum(" WARNING " in line for line in log.read_text().splitlines()),
    )
    result["ok"] = (
        alive
        and result["rss_growth_mb"] < MAX_RSS_GROWTH_MB
        and result["fds_end"] <= result["fds_baseline"]
        and not problems
        and not result["viewer_errors"]
        and all(k["frames"] > 0 and not k["without_frames"] for k in result["by_kind"].values())
    )
    if not quiet:
        print_table(result)
    return result


def print_table(r: dict[str, Any]) -> None:
    rows = [
        ("run", f"{r['seconds']:.0f} s, {r['viewers']} viewers, {r['size']} at {r['fps']} fps"),
        (
            "viewer visits",
            f"{r['visits']} (web and SPICE mixed), {r['connects']} connected, "
            f"{r['frames']} frames received",
        ),
        (
            "by kind",
            ", ".join(
                f"{kind} {k['visits']} visits {k['frames']} frames"
                for kind, k in r["by_kind"].items()
            )
            + f"; visits of {MIN_VISIT_S:g} s or more without a frame: "
            + str(sum(k["without_frames"] for k in r["by_kind"].values())),
        ),
        (
            "resident memory",
            f"start {r['rss_start_mb']} MB, after warm-up {r['rss_baseline_mb']} MB, "
            f"peak {r['rss_peak_mb']} MB, end {r['rss_end_mb']} MB",
        ),
        ("memory growth", f"{r['rss_growth_mb']:+.1f} MB (limit {MAX_RSS_GROWTH_MB:.0f} MB)"),
        (
            "open fds",
            f"start {r['fds_start']}, after warm-up {r['fds_baseline']}, "
            f"peak {r['fds_peak']}, end {r['fds_end']}",
        ),
        ("log", f"{len(r['log_problems'])} errors, {r['warnings']} warnings ({r['log']})"),
        ("viewer errors", str(len(r["viewer_errors"]))),
        ("result", "ok" if r["ok"] else "FAILED"),
    ]
    print_rows(rows, "Soak", indent="  ")
