"""Frames per second and send-to-show delay of spice-gtk, per codec: prints a table.

    cd /work/main && PYTHONPATH=src python -m tests.e2e.spice.measure [--size 1280x720 --fps 60]

How: the producer writes each frame's capture time (µs) into rows 0-15 and hands it
to Display.present with the same capture time; the server records the wall-clock time
each frame is sent to the client (SpiceServer.frame_listeners); the spice-gtk client
reads the stamp back from its surface on every ``display-invalidate`` and notes the
wall-clock time. Both run on this machine, so one clock serves: send-to-show is
show - send for each stamp, capture-to-show adds the encoder and the queue before it.
"""

from __future__ import annotations

import argparse
import json
import statistics

from saffron.bench.stats import percentile
from tests.support.artifacts import ARTIFACTS
from tests.support.gtk import run_gtk_client
from tests.support.harness import spice_server


def measure(codec: str, width: int, height: int, fps: int, seconds: float) -> dict[str, object]:
    with spice_server(width=width, height=height, fps=fps) as (srv, _):
        report = run_gtk_client(
            srv.port, "--codec", codec, "--settle", "2", "--seconds", str(seconds), timeout=120
        )
        shown = report.get("shown", [])
        send = sorted((t - srv.sent[s]) * 1000 for s, t in shown if s in srv.sent)
        capture = sorted((t - s / 1e6) * 1000 for s, t in shown)
        stream = srv.broadcast.streams.get(codec)
        return {
            "codec": codec,
            "size": f"{width}x{height}",
            "source_fps": fps,
            "shown_fps": round(report.get("fps", 0.0), 1),
            "send_to_show_ms_median": round(statistics.median(send), 1) if send else None,
            "send_to_show_ms_p90": round(percentile(send, 90), 1) if send else None,
            "capture_to_show_ms_median": round(statistics.median(capture), 1) if capture else None,
            "encode_ms": round(stream.encode_ms_total / stream.frames_encoded, 1)
            if stream and stream.frames_encoded
            else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--codecs", default="mjpeg,vp8,vp9,h264")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rows = [measure(c, width, height, args.fps, args.seconds) for c in args.codecs.split(",")]
    print(
        f"{'codec':6} {'size':>9} {'fps':>5} {'shown':>6} {'send->show':>11} {'p90':>6} "
        f"{'capture->show':>14} {'encode':>7}"
    )
    for r in rows:
        print(
            f"{r['codec']:6} {r['size']:>9} {r['source_fps']:>5} {r['shown_fps']:>6} "
            f"{r['send_to_show_ms_median']!s:>11} {r['send_to_show_ms_p90']!s:>6} "
            f"{r['capture_to_show_ms_median']!s:>14} {r['encode_ms']!s:>7}"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / f"spice-measure-{args.size}-{args.fps}.json"
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
