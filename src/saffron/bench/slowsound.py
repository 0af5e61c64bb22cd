"""Sound on a full slow link: what a page hears while the video fills the link.

``saffron qemu --audio`` runs the test guest (its PC speaker plays 440 Hz from the
moment T is pressed) inside a network namespace whose loopback is shaped with
``tc tbf`` to a few Mbit/s, with the video asking far more than the link carries.
A listening page (this module's viewer: it acknowledges every video frame as a page
that decodes at once would, and turns its sound on) records every sound packet's
age (capture to arrival, server clock: same machine) and the packets it never got.
With newest-wins the age stays bounded: a packet that would wait is dropped, never
queued. Needs root (namespaces, tc).

    python -m saffron.bench.slowsound      # QEMU 7.2, 20 s over 4 Mbit/s
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, WSMsgType

from ..web.protocol import KIND_AUDIO, KIND_VIDEO, KIND_VIDEO_DAMAGE, unpack_audio, unpack_video
from .netns import exec_in, shaped_namespace
from .process import saffron_command, start_saffron
from .stats import percentile

AUDIODEV = "snd0"
QEMU_AUDIO_ARGS = ["-audiodev", f"dbus,id={AUDIODEV}"]
MACHINE = f"q35,pcspk-audiodev={AUDIODEV}"
"""The PC speaker into a D-Bus audiodev; the machine property works on QEMU 7.2 and 10.0."""


async def listen(url: str, seconds: float, codec: str) -> dict[str, Any]:
    """A page that turns its sound on and presses T: every sound packet's arrival."""
    packets: list[tuple[float, float, int]] = []  # (seconds since T, age ms, seq)
    video_bytes = 0
    frames = 0
    async with ClientSession() as session, session.ws_connect(url + "ws") as ws:
        hello = json.loads((await ws.receive()).data)
        await ws.send_str(json.dumps({"type": "start", "codec": codec}))
        await ws.send_str(json.dumps({"type": "audio", "on": True}))
        await asyncio.sleep(1.0)
        for down in (True, False):
            await ws.send_str(json.dumps({"type": "key", "code": "KeyT", "down": down}))
        start = time.monotonic()
        while (left := seconds - (time.monotonic() - start)) > 0:
            try:
                msg = await asyncio.wait_for(ws.receive(), left)
            except TimeoutError:
                break
            if msg.type != WSMsgType.BINARY:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                continue
            kind = msg.data[0]
            if kind == KIND_AUDIO:
                packet, _ = unpack_audio(msg.data)
                age = (time.time_ns() // 1000 - packet.capture_us) / 1000
                packets.append((time.monotonic() - start, age, packet.seq))
            elif kind in (KIND_VIDEO, KIND_VIDEO_DAMAGE):
                header, data = unpack_video(msg.data)
                frames += 1
                video_bytes += len(data)
                await ws.send_str(json.dumps({"type": "ack", "frame": header.frame}))
        for down in (True, False):  # Y: the tone stops
            await ws.send_str(json.dumps({"type": "key", "code": "KeyY", "down": down}))
    return {
        "audio": hello.get("audio"),
        "packets": packets,
        "frames": frames,
        "video_bytes": video_bytes,
        "seconds": seconds,
    }


def summarize(report: dict[str, Any], windows: int = 4) -> dict[str, Any]:
    """Sound packets received and lost, their age, and its p95 trend over the run."""
    packets = report["packets"]
    span = report["seconds"]
    loud = [p for p in packets if p[0] > 0.5]  # the tone has begun by then
    ages = [a for _, a, _ in loud]
    seqs = [s for _, _, s in loud]
    expected = (seqs[-1] - seqs[0] + 1) if seqs else 0
    trend = []
    for i in range(windows):
        lo, hi = span * i / windows, span * (i + 1) / windows
        part = [a for t, a, _ in loud if lo <= t < hi]
        trend.append(round(percentile(part, 95)) if part else None)
    return {
        "packets": len(loud),
        "lost_pct": round(100 * (1 - len(loud) / expected), 1) if expected else None,
        "age_p50_ms": round(percentile(ages, 50)) if ages else None,
        "age_p95_ms": round(percentile(ages, 95)) if ages else None,
        "age_max_ms": round(max(ages)) if ages else None,
        "p95_trend_ms": trend,
        "video_kbit_s": round(report["video_bytes"] * 8 / 1000 / span),
        "video_fps": round(report["frames"] / span, 1),
    }


def run(
    qemu_argv: Sequence[str],
    serial: Path,
    *,
    seconds: float = 20,
    link_kbit: int = 4000,
    bitrate: int = 20000,
    codec: str = "h264",
    extra: Sequence[str] = ("--fixed-bitrate",),
) -> dict[str, Any]:
    """``saffron qemu --audio -- QEMU_ARGV`` and a listening page, over a shaped link.

    ``qemu_argv`` boots the test guest with its serial port in ``serial`` and the PC
    speaker on a dbus audiodev (:data:`MACHINE`, :data:`QEMU_AUDIO_ARGS`)."""
    port = 18500 + os.getpid() % 1000  # the namespace is new: nothing else listens in it
    with (
        shaped_namespace(link_kbit) as ns,
        tempfile.TemporaryDirectory(prefix="saffron-slowsound-") as tmp,
    ):
        exec_ns = exec_in(ns)
        serve = saffron_command(
            "qemu",
            "--audio",
            *("--web", f"127.0.0.1:{port}", "--codec", codec, "--bitrate", str(bitrate)),
            *extra,
            "--",
            *qemu_argv,
        )
        with start_saffron([*exec_ns, *serve], Path(tmp) / "saffron.log", web_port=port):
            deadline = time.monotonic() + 90
            while "saffron-guest: ready" not in _text(serial):
                if time.monotonic() > deadline:
                    raise RuntimeError("the guest did not boot")
                time.sleep(0.3)
            watch = [sys.executable, "-m", "saffron.bench.slowsound", "--viewer"]
            watch += [f"http://127.0.0.1:{port}/", "--seconds", str(seconds), "--codec", codec]
            out = subprocess.run(
                [*exec_ns, *watch],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=True,
            )
    report = json.loads(out.stdout)
    return {"link_kbit_s": link_kbit, "asked_kbit_s": bitrate, **summarize(report)}


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--viewer", metavar="URL", help="(internal) run the listening page")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--codec", default="h264")
    p.add_argument("--link", type=int, default=4000, help="link rate, kbit/s")
    args = p.parse_args()
    if args.viewer:
        print(json.dumps(asyncio.run(listen(args.viewer, args.seconds, args.codec))))
        return
    from . import guest, qemus

    image = guest.build_guest()
    with tempfile.TemporaryDirectory(prefix="saffron-slowsound-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = qemus.qemu("7.2").command(
            *("-machine", MACHINE, "-accel", "tcg", "-nodefaults", "-device", "VGA"),
            *QEMU_AUDIO_ARGS,
            *("-m", "256", *image.qemu_args(serial)),
        )
        result = run(argv, serial, seconds=args.seconds, link_kbit=args.link, codec=args.codec)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
