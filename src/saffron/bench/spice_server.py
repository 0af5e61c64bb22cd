"""The test guest under QEMU's own SPICE server and under `saffron qemu`, side by side.

Both are watched by the same spice-gtk viewer (gtk_frames.py beside this module,
run by the system python3, which has spice-gtk's bindings) through a
byte-counting TCP proxy. Per server and codec: distinct
pictures shown per second, bytes on the wire, key-to-picture delay (a key typed
in the viewer until the guest's key strip shows it: input, guest, encode,
network, decode), and the CPU of QEMU and of Saffron.

    saffron bench --full                                   # with the other tables
    python -m saffron.bench.spice_server [--seconds 20] [--json FILE]  # just this
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..table import print_table
from .guest import DEFAULT_CACHE, Guest, build_guest, missing_tools
from .process import cpu_seconds, free_port, saffron_command, wait_file, wait_port
from .spice_gtk import SYSTEM_PYTHON, script_env

GTK_FRAMES = Path(__file__).with_name("gtk_frames.py")
"""The spice-gtk viewer, a script for the system python3 (spice-gtk's GObject bindings)."""

QEMU = [
    "qemu-system-x86_64",
    "-machine",
    "q35",
    "-accel",
    "tcg",
    "-nodefaults",
    "-device",
    "VGA",
    "-m",
    "256",
]


class Proxy:
    """Forwards 127.0.0.1:port to the server, counting bytes from the server."""

    def __init__(self, target: int) -> None:
        self.target, self.port, self.down = target, free_port(), 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, count: bool) -> None:
            while data := await r.read(1 << 16):
                if count:
                    self.down += len(data)
                w.write(data)
                await w.drain()
            w.close()

        await asyncio.gather(pipe(cr, sw, False), pipe(sr, cw, True), return_exceptions=True)


def watch(port: int, codec: str, seconds: float, pids: dict[str, int]) -> dict[str, Any]:
    proxy = Proxy(port)
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    out = subprocess.run(
        [
            SYSTEM_PYTHON,
            str(GTK_FRAMES),
            "--port",
            str(proxy.port),
            "--codec",
            codec,
            "--seconds",
            str(seconds),
            "--keys",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        env=script_env(),
    )
    wall = time.monotonic() - t0
    cpu = {k: (cpu_seconds(p) - cpu0[k]) / wall for k, p in pids.items()}
    report = json.loads(out.stdout.strip().splitlines()[-1])
    delays = report["key_delays_ms"]
    return {
        "codec": codec,
        "fps": round(report["fps"], 1),
        "kbit_s": round(proxy.down * 8 / 1000 / wall),
        "key_ms_median": round(statistics.median(delays)) if delays else None,
        "keys_seen": len(delays),
        "cpu_qemu": round(cpu.get("qemu", 0.0), 2),
        "cpu_saffron": round(cpu.get("saffron", 0.0), 2),
    }


def run_spice_server(codec: str, seconds: float, guest: Guest, tmp: Path) -> dict[str, Any]:
    port = free_port()
    serial = tmp / f"serial-spice-{codec}.log"
    qemu = subprocess.Popen(
        [
            *QEMU,
            *guest.qemu_args(serial),
            "-display",
            "none",
            "-spice",
            f"port={port},addr=127.0.0.1,disable-ticketing=on,streaming-video=all",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_file(serial, "saffron-guest: ready", 90)
        wait_port(port, 10)
        return {
            "server": "spice-server (QEMU -spice)",
            **watch(port, codec, seconds, {"qemu": qemu.pid}),
        }
    finally:
        qemu.kill()
        qemu.wait()


def run_saffron(codec: str, seconds: float, guest: Guest, tmp: Path) -> dict[str, Any]:
    port = free_port()
    serial = tmp / f"serial-saffron-{codec}.log"
    log = open(tmp / f"saffron-{codec}.log", "w")  # noqa: SIM115
    saffron = subprocess.Popen(
        saffron_command(
            "qemu",
            "--no-web",
            "--spice",
            f"127.0.0.1:{port}",
            "--codec",
            codec,
            "--",
            *QEMU,
            *guest.qemu_args(serial),
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_file(serial, "saffron-guest: ready", 90)
        wait_port(port, 10)
        qemu_pid = _qemu_below(saffron.pid)
        return {
            "server": "Saffron (saffron qemu)",
            **watch(port, codec, seconds, {"qemu": qemu_pid, "saffron": saffron.pid}),
        }
    finally:
        saffron.terminate()
        saffron.wait(20)
        log.close()


def _qemu_below(pid: int) -> int:
    """QEMU may run under a helper (setpriv): find it among all descendants."""
    out = subprocess.check_output(["ps", "-eo", "pid,ppid,comm"], text=True).split("\n")[1:]
    rows = [r.split() for r in out if r.strip()]
    children: dict[int, list[tuple[int, str]]] = {}
    for p, pp, comm in rows:
        children.setdefault(int(pp), []).append((int(p), comm))
    stack = [pid]
    while stack:
        for child, comm in children.get(stack.pop(), []):
            if comm.startswith("qemu-system"):
                return child
            stack.append(child)
    raise RuntimeError("QEMU not found under saffron")


class CannotRun(RuntimeError):
    """What this host lacks for the comparison (QEMU, spice-gtk, the guest's tools)."""


def run(seconds: float = 20, codecs: Sequence[str] = ("mjpeg", "h264")) -> list[dict[str, Any]]:
    """Both servers for each codec, one after the other; prints the table, returns its rows."""
    missing = [*missing_tools(), *(t for t in (QEMU[0], SYSTEM_PYTHON) if not shutil.which(t))]
    if missing:
        raise CannotRun(f"missing {', '.join(missing)}")
    guest = build_guest()
    tmp = DEFAULT_CACHE.parent / "bench-spice"
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for codec in codecs:
        for runner in (run_spice_server, run_saffron):
            print(f"... {runner.__name__} {codec}", file=sys.stderr, flush=True)
            rows.append(runner(codec, seconds, guest, tmp))
    print_table(rows, "Test guest (1024x768, moving band, keys) watched by spice-gtk; CPU in cores")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--codecs", default="mjpeg,h264")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = run(args.seconds, args.codecs.split(","))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
