#!/usr/bin/python3
"""spice-gtk as a measuring viewer of any SPICE server (run with the system python3).

Counts the distinct pictures it shows (a hash of a sampled grid of the surface
on every redraw), and, with --key, types a key and times until the test
guest's key strip shows it: input to picture, through the whole server. With
--ages (for the ``pattern`` source) it reads the capture time off every picture
it shows instead, from the moment it connects: frame ages, start included.
Prints one JSON report.

A script for the system python3 (spice-gtk's bindings), run by its path with
saffron.bench.spice_gtk's ``script_env()``: saffron.bench.spice_server and the
end-to-end tests start it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from typing import Any

import gi
import numpy as np
import numpy.typing as npt

from saffron.bench.spice_gtk import CODECS, Surface
from saffron.sources.pattern import read_stamp

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject, SpiceClientGLib  # noqa: E402


class Viewer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.session = SpiceClientGLib.Session()
        self.session.set_property("host", "127.0.0.1")
        self.session.set_property("port", str(args.port))
        self.surface: Surface | None = None
        self.inputs: Any = None
        self.display: Any = None
        self.started: float | None = None
        self.connected = 0.0
        self.pictures = 0
        self.redraws = 0
        self.last_hash = b""
        self.key_sent: float | None = None
        self.key_delays: list[float] = []
        self.keys_left = args.keys
        self.expect = 0
        self.ages: list[tuple[float, float]] = []  # (seconds since connecting, age ms)
        self.last_stamp = -1
        GObject.Object.connect(self.session, "channel-new", self.on_channel)

    def on_channel(self, session: Any, channel: Any) -> None:
        if isinstance(channel, SpiceClientGLib.DisplayChannel):
            self.display = channel
            GObject.Object.connect(channel, "display-primary-create", self.on_primary)
            GObject.Object.connect(channel, "display-invalidate", self.on_invalidate)
            if self.args.codec:
                GLib.timeout_add(500, self.ask_codec)
        elif isinstance(channel, SpiceClientGLib.InputsChannel):
            self.inputs = channel
        if not isinstance(channel, SpiceClientGLib.MainChannel):
            channel.connect()

    def ask_codec(self) -> bool:
        self.display.change_preferred_video_codec_types([CODECS[self.args.codec]])
        return False

    def on_primary(self, *args: Any) -> None:
        _channel, _fmt, width, height, stride, _shmid, ptr = args
        self.surface = Surface(ptr, width, height, stride)

    def pixels(self) -> npt.NDArray[np.uint8] | None:
        return None if self.surface is None else self.surface.pixels()

    def on_invalidate(self, _channel: Any, _x: int, y: int, *_: Any) -> None:
        px = self.pixels()
        if self.args.ages and px is not None and self.started is not None and y <= 4:
            stamp = read_stamp(px)
            if stamp != self.last_stamp:
                self.last_stamp = stamp
                age = time.time_ns() / 1e6 - stamp / 1000
                if 0 <= age < 600_000:  # a misread stamp is not a frame age
                    self.ages.append((time.monotonic() - self.started, age))
        if px is None or self.started is None:
            return
        self.redraws += 1
        if self.key_sent is not None and px.shape[0] > self.args.key_row:
            strip = px[self.args.key_row, 64:960:16, :3].astype(int).mean(axis=0)
            b, g, r = strip
            if abs(g - 0x5A) < 12 and abs(r - 0xA5) < 12 and abs(b - self.expect) < 10:
                self.key_delays.append((time.monotonic() - self.key_sent) * 1000)
                self.key_sent = None

    def sample(self) -> bool:
        """Distinct pictures seen at 100 samples a second: partial redraws of one
        frame (spice-server draws in pieces) count once, as a person sees them."""
        px = self.pixels()
        if px is None or self.started is None or time.monotonic() < self.started:
            return True
        digest = hashlib.blake2b(np.ascontiguousarray(px[::8, ::8]).tobytes(), digest_size=8)
        if digest.digest() != self.last_hash:
            self.last_hash = digest.digest()
            self.pictures += 1
        return True

    def tick(self) -> bool:
        now = time.monotonic()
        if self.started is None and self.args.ages:
            self.started = self.connected  # the start counts: from connecting on
        if self.started is None and self.surface is not None:
            self.started = now + self.args.settle
            self.pictures = 0
        if self.started is not None and now >= self.started + self.args.seconds:
            self.loop.quit()
            return False
        if self.key_sent is not None and now - self.key_sent > 5:
            self.key_sent = None  # lost: the guest never showed it; count it as missing
        if (
            self.started is not None
            and now > self.started
            and self.key_sent is None
            and self.keys_left
            and self.inputs is not None
        ):
            codes = [0x02, 0x1E, 0x39]  # 1, A, Space: far apart as evdev codes (B of the strip)
            code = codes[self.keys_left % len(codes)]
            self.expect = code
            self.keys_left -= 1
            self.key_sent = time.monotonic()
            self.inputs.key_press(code)
            self.inputs.key_release(code)
        return True

    def run(self) -> dict[str, Any]:
        self.connected = time.monotonic()
        self.session.connect()
        GLib.timeout_add(20, self.tick)
        GLib.timeout_add(10, self.sample)
        GLib.timeout_add_seconds(int(self.args.settle + self.args.seconds + 60), self.loop.quit)
        self.loop.run()
        measured = self.args.seconds
        return {
            "pictures": self.pictures,
            "fps": self.pictures / measured,
            "note": "pictures sampled at 100 Hz",
            "redraws": self.redraws,
            "key_delays_ms": self.key_delays,
            "size": [self.surface.width, self.surface.height] if self.surface else None,
            "samples": self.ages,
            "seconds": measured,
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--codec", choices=sorted(CODECS))
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--keys", type=int, default=0)
    p.add_argument("--key-row", type=int, default=624)
    p.add_argument("--ages", action="store_true", help="frame ages from the pattern's stamp")
    args = p.parse_args()
    print(json.dumps(Viewer(args).run()), flush=True)


if __name__ == "__main__":
    main()
