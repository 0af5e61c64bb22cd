"""QEMU's frame update to ``present()``'s return, QEMU 7.2 beside 10.0.

``python -m saffron.bench.qemu_present [--runs 3] [--seconds 10] [--json FILE]``

Each run boots the test guest (:mod:`saffron.bench.guest`: a band of fresh noise moving
down a 1024x768 framebuffer, as fast as the guest can draw it) under one QEMU with
the D-Bus display, attaches Saffron's QEMU source to it with an always-ready frame sink,
waits until the guest is ready, and then for ``--seconds`` records the time from the
arrival of a frame message (the first of a burst) to the return of
``Display.present()`` (``ListenerStats.present_us``), the frames presented and the bytes
that came over D-Bus. The versions take turns (7.2, 10.0, 7.2, ...) so a busy machine
weighs on both alike; the table shows the median over the runs of each run's
percentiles. The mode says how QEMU handed the surface over: '2d' (the pixels of every
Scanout and Update copied into the D-Bus message) or 'map' (9.2 and later: ScanoutMap
shares the surface once as a memfd; UpdateMap carries only a rectangle). Both of the
guest's depths are measured: at 32 bits per pixel QEMU's VGA shows its video memory
itself as the surface, which has no memfd to share, so 10.0 too sends '2d'; at 24 QEMU
converts into a surface of its own, which 10.0 shares ('map').

QEMU 10.0 is the one ``make setup`` unpacks (scripts/setup-qemu10.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from saffron.display import Display, Frame, Rect
from saffron.sources import qemu as Q

from . import guest as build_guest
from .qemus import VERSIONS, Qemu, qemu
from .stats import percentile

BASE = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA", "-m", "256"]


class CountingSink:
    """A frame sink that is always ready and keeps only the size of the last frame."""

    def __init__(self) -> None:
        self.count = 0
        self.size = (0, 0)

    @property
    def ready(self) -> bool:
        return True

    def offer(self, frame: Frame) -> None:
        self.count += 1
        self.size = (frame.width, frame.height)

    def damage(self, rect: Rect) -> None:
        pass


@dataclass
class Run:
    version: str
    bpp: int
    mode: str
    frames: int
    fps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    messages: int
    mb_per_s: float


def _wait(test: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not test():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def measure(vm: Qemu, image: build_guest.Guest, bpp: int, seconds: float) -> Run:
    """One boot of the guest under ``vm`` at ``bpp``, measured for ``seconds`` once ready."""
    image = image.with_depth(bpp)
    with tempfile.TemporaryDirectory(prefix="saffron-qemu-present-") as tmp:
        serial = Path(tmp) / "serial.log"
        display, sink = Display(), CountingSink()
        display.add_sink(sink)
        proc = Q.start_qemu(vm.command(*BASE, *image.qemu_args(serial)))
        source = Q.open_qemu_source(display, dbus_address=proc.address)
        try:
            if not source.wait_attached(30):
                raise RuntimeError(f"QEMU {vm.version}: the source did not attach")
            _wait(
                lambda: serial.exists() and b"saffron-guest: ready" in serial.read_bytes(),
                180,
                f"the guest to boot under QEMU {vm.version}",
            )
            _wait(lambda: sink.size == (build_guest.WIDTH, build_guest.HEIGHT), 30, "1024x768")
            stats = source.stats
            stats.present_us.clear()
            messages, received, frames = stats.messages, stats.bytes, sink.count
            t0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            values = list(stats.present_us)
            listener = source.listener
            mode = listener.mode if listener is not None else "detached"
            n = sink.count - frames
            if not values:
                raise RuntimeError(f"QEMU {vm.version}: no frame in {seconds} s (a busy machine?)")
            return Run(
                version=vm.version,
                bpp=bpp,
                mode=mode,
                frames=n,
                fps=round(n / elapsed, 1),
                p50_ms=round(percentile(values, 50) / 1000, 3),
                p90_ms=round(percentile(values, 90) / 1000, 3),
                p99_ms=round(percentile(values, 99) / 1000, 3),
                max_ms=round(max(values, default=float("nan")) / 1000, 3),
                messages=stats.messages - messages,
                mb_per_s=round((stats.bytes - received) / elapsed / 1e6, 1),
            )
        finally:
            source.stop()
            proc.stop()


def summary(runs: list[Run]) -> dict[str, object]:
    """The median over the runs of each figure; the mode(s) seen."""

    def med(name: str) -> float:
        return round(statistics.median(float(getattr(r, name)) for r in runs), 3)

    return {
        "mode": "/".join(sorted({r.mode for r in runs})),
        "runs": len(runs),
        **{k: med(k) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "fps", "mb_per_s")},
    }


def table(summaries: dict[str, dict[str, object]]) -> str:
    head = (
        f"{'QEMU':<6} {'bpp':>3} {'mode':<5} {'runs':>4} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'frames/s':>8} {'D-Bus MB/s':>10}"
    )
    lines = [head, "-" * len(head)]
    for key, s in summaries.items():
        version, bpp = key.split("@")
        lines.append(
            f"{version:<6} {bpp:>3} {s['mode']!s:<5} {s['runs']!s:>4} {s['p50_ms']:>7.2f} "
            f"{s['p90_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['max_ms']:>7.2f} {s['fps']:>8.1f} "
            f"{s['mb_per_s']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saffron.bench.qemu_present", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="VM boots per version (3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per run (10)")
    parser.add_argument("--versions", default=",".join(VERSIONS), help="7.2,10.0")
    parser.add_argument("--depths", default="32,24", help="the guest's bits per pixel: 32,24")
    parser.add_argument("--json", type=Path, help="write the runs and the table's figures")
    args = parser.parse_args(argv)
    vms = [qemu(v) for v in args.versions.split(",")]
    for vm in vms:
        problem = vm.problem()
        if problem:
            print(f"qemu_present: {problem}", file=sys.stderr)
            return 2
    depths = [int(d) for d in args.depths.split(",")]
    image = build_guest.build_guest()
    runs: dict[str, list[Run]] = {f"{vm.version}@{d}": [] for d in depths for vm in vms}
    for i in range(args.runs):
        for bpp in depths:
            for vm in vms:
                try:
                    run = measure(vm, image, bpp, args.seconds)
                except RuntimeError as exc:  # a boot too slow on a busy machine: left out
                    print(f"run {i + 1}/{args.runs} QEMU {vm.version} {bpp} bpp failed: {exc}")
                    continue
                runs[f"{vm.version}@{bpp}"].append(run)
                print(
                    f"run {i + 1}/{args.runs} QEMU {vm.version} {bpp} bpp ({run.mode}):"
                    f" p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, {run.fps} frames/s,"
                    f" {run.mb_per_s} MB/s",
                    flush=True,
                )
    summaries = {v: summary(r) for v, r in runs.items() if r}
    if not summaries:
        print("qemu_present: no run succeeded", file=sys.stderr)
        return 1
    print(table(summaries))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "what": "QEMU frame message arrival to Display.present() return, test guest",
            "seconds": args.seconds,
            "summary": summaries,
            "runs": {v: [asdict(r) for r in rs] for v, rs in runs.items()},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
