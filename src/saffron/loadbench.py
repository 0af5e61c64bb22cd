"""Fan-out and idle: what more viewers cost, and what no viewer costs.

Saffron runs as a subprocess (the ``pattern`` producer); its CPU is read from
/proc. Viewers are web-protocol clients in this process that acknowledge every
frame without decoding it, so their cost is not counted against the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .table import print_table

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(*args: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "saffron.cli", "serve", *args, "--web", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "open http" in line:
            break
    return proc, port


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


async def _viewers(port: int, n: int, seconds: float, codec: str, after: float = 0.0) -> list[int]:
    """Frames each of ``n`` viewers received in ``seconds``, not counting the first ``after``."""
    from aiohttp import ClientSession, WSMsgType

    from .web.protocol import unpack_video

    counts = [0] * n

    async def one(i: int, session: ClientSession) -> None:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws", max_msg_size=0) as ws:
            await ws.receive()
            await ws.send_str(json.dumps({"type": "start", "codec": codec}))
            start = time.monotonic() + after
            end = start + seconds
            while time.monotonic() < end:
                try:
                    msg = await asyncio.wait_for(ws.receive(), 1)
                except TimeoutError:
                    continue
                if msg.type == WSMsgType.BINARY:
                    header, _ = unpack_video(msg.data)
                    if time.monotonic() >= start:
                        counts[i] += 1
                    await ws.send_str(json.dumps({"type": "ack", "frame": header.frame}))

    async with ClientSession() as session:
        await asyncio.gather(*(one(i, session) for i in range(n)))
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
        proc, port = _start(
            "--source", "pattern", "--fps", str(fps), "--size", size, "--codec", codec
        )
        try:
            time.sleep(1)
            warm = asyncio.run(_viewers(port, n, 2, codec))  # encoders opened, caches warm
            del warm
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            got = asyncio.run(_viewers(port, n, seconds, codec))
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            rows.append(
                {
                    "viewers": n,
                    "server_cpu_s_per_s": round(cpu, 3),
                    "frames_per_viewer_per_s": round(sum(got) / n / seconds, 1),
                    "min_viewer_fps": round(min(got) / seconds, 1),
                    "encoded_frames": int(metric(port, "saffron_frames_encoded_total")),
                }
            )
        finally:
            _stop(proc)
    base = rows[0]["server_cpu_s_per_s"] or 1e-9
    for r in rows:
        r["cpu_vs_one"] = round(r["server_cpu_s_per_s"] / base, 2)
    return rows


def idle(seconds: float = 10) -> list[dict[str, Any]]:
    """No viewer: nothing encoded and CPU near zero. A still picture: nothing sent."""
    rows = []
    print(f"idle: no viewer for {seconds:g} s ...", file=sys.stderr, flush=True)
    proc, port = _start("--source", "demo", "--fps", "60")
    try:
        time.sleep(1)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        rows.append(
            {
                "case": "demo, no viewer",
                "cpu_s_per_s": round((cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0), 3),
                "frames_encoded": int(metric(port, "saffron_frames_encoded_total")),
                "frames_sent_after_settle": None,
            }
        )
    finally:
        _stop(proc)
    print(f"idle: a still picture, one viewer, {seconds:g} s ...", file=sys.stderr, flush=True)
    proc, port = _start("--source", "demo", "--still", "--fps", "60")
    try:
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        got = asyncio.run(_viewers(port, 1, seconds, "h264", after=3))
        rows.append(
            {
                "case": "still demo, one viewer",
                "cpu_s_per_s": round((cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0), 3),
                "frames_encoded": int(metric(port, "saffron_frames_encoded_total")),
                "frames_sent_after_settle": got[0],
            }
        )
    finally:
        _stop(proc)
    return rows


if __name__ == "__main__":
    print_table(fanout(), "Fan-out")
    print_table(idle(), "Idle")
