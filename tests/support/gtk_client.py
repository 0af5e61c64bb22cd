#!/usr/bin/python3
"""A headless SPICE client on spice-gtk's GObject bindings: run with the *system* python3.

It connects, reads the primary surface's pixels (the pointer spice-gtk hands out
in ``display-primary-create``), and for every ``display-invalidate`` decodes the
capture time the producer wrote in rows 0-15 (saffron.sources.pattern's stamp),
so it can count the frames it showed and when it showed them. The surface grab and
the stamp reader are Saffron's (saffron.bench.spice_gtk, saffron.sources.pattern),
importable here through the environment saffron.bench.spice_gtk.script_env() gives.
Optionally it asks for a codec, types keys and moves the mouse, and, once told on stdin that the
producer stopped, waits for the picture to settle and dumps it. With ``--tone`` it opens the
playback channel, presses T (the test guest's tone key, which also paints the key strip), keeps
the PCM spice-gtk decodes (its ``playback-data`` signal) and reports its strongest frequency and
when sound and picture arrived. With ``--resize`` it makes the calls spice-gtk's widget makes
when its window is resized with "resize-guest" on (the guest's agent, which Saffron stands in
for, gets a monitors config a second later) and reports how long each size took to come back as
the primary surface. With ``--copy TEXT`` it copies TEXT (the calls spice-gtk's session makes
when the user copies: a clipboard grab, then the data when the agent asks), then presses C (the
test guest's agent copies its own text) and reports the text it is offered back.

It prints JSON lines: ``{"phase": ...}`` progress lines, and a final report.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import sys
import time

import gi
import numpy as np

from saffron.bench.spice_gtk import CODECS, Surface
from saffron.sources.pattern import read_stamp

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject, SpiceClientGLib  # noqa: E402


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.session = SpiceClientGLib.Session()
        self.session.set_property("host", args.host)
        if args.tls_port:  # both ports, as remote-viewer spice://host?port=..&tls-port=..
            self.session.set_property("port", str(args.port))
            self.session.set_property("tls-port", str(args.tls_port))
            self.session.set_property("ca-file", args.ca_file)
        elif args.ca_file:
            self.session.set_property("tls-port", str(args.port))
            self.session.set_property("ca-file", args.ca_file)
        else:
            self.session.set_property("port", str(args.port))
        if args.password is not None:
            self.session.set_property("password", args.password)
        if args.tone:
            self.session.set_property("enable-audio", True)
        self.pcm: list[bytes] = []
        self.audio_first = None
        self.tone_sent = None
        self.strip_seen = None
        self.report: dict = {"events": [], "errors": []}
        self.main = None
        self.display = None
        self.inputs = None
        self.inputs_ready = False
        self.surface: Surface | None = None
        self.marked = False
        self.ready_at = None
        self.measure_from = None
        self.measure_until = None
        self.shown: list[tuple[int, float]] = []
        self.last_stamp = None
        self.invalidates = 0
        self.last_invalidate = 0.0
        self.still = False
        self.cycle = 0
        self.done = False
        self.sizes = [tuple(int(v) for v in s.split("x")) for s in args.resize.split(",") if s]
        self.asked_at: float | None = None
        self.report["resized"] = []
        GObject.Object.connect(self.session, "channel-new", self.on_channel_new)

    # -- plumbing -----------------------------------------------------------------

    def run(self) -> dict:
        GLib.timeout_add_seconds(int(self.args.timeout), self.on_timeout)
        GLib.timeout_add(50, self.tick)
        self.session.connect()
        self.loop.run()
        with contextlib.suppress(Exception):
            self.session.disconnect()
        return self.report

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.loop.quit()

    def on_timeout(self) -> bool:
        self.report["errors"].append("timeout")
        self.finish()
        return False

    def on_channel_new(self, session, channel) -> None:
        GObject.Object.connect(channel, "channel-event", self.on_channel_event)
        if isinstance(channel, SpiceClientGLib.MainChannel):
            self.main = channel
            if self.args.copy is not None:
                GObject.Object.connect(
                    channel, "main-clipboard-selection-request", self.on_clipboard_request
                )
                GObject.Object.connect(
                    channel, "main-clipboard-selection-grab", self.on_clipboard_grab
                )
                GObject.Object.connect(channel, "main-clipboard-selection", self.on_clipboard)
            return
        if isinstance(channel, SpiceClientGLib.DisplayChannel):
            index = channel.get_property("channel-id")
            GObject.Object.connect(channel, "display-primary-create", self.on_surface, index)
            if index != 0:  # another screen: its surfaces are listed, the rest is screen 0's
                channel.connect()
                return
            self.display = channel
            GObject.Object.connect(channel, "display-primary-create", self.on_primary_create)
            GObject.Object.connect(channel, "display-primary-destroy", self.on_primary_destroy)
            GObject.Object.connect(channel, "display-invalidate", self.on_invalidate)
            GObject.Object.connect(channel, "display-mark", self.on_mark)
        elif isinstance(channel, SpiceClientGLib.InputsChannel):
            self.inputs = channel
        elif isinstance(channel, SpiceClientGLib.PlaybackChannel):
            GObject.Object.connect(channel, "playback-start", self.on_playback_start)
            GObject.Object.connect(channel, "playback-data", self.on_playback_data)
            GObject.Object.connect(channel, "playback-stop", self.on_playback_stop)
        channel.connect()

    def on_channel_event(self, channel, event) -> None:
        name = type(channel).__name__.replace("Channel", "").lower()
        self.report["events"].append(f"{name}:{event.value_nick}")
        if event == SpiceClientGLib.ChannelEvent.ERROR_AUTH:
            self.report["auth_failed"] = True
            self.finish()
        elif event in (
            SpiceClientGLib.ChannelEvent.ERROR_CONNECT,
            SpiceClientGLib.ChannelEvent.ERROR_LINK,
            SpiceClientGLib.ChannelEvent.ERROR_IO,
        ):
            self.report["errors"].append(f"{name}:{event.value_nick}")
            if isinstance(channel, SpiceClientGLib.MainChannel):
                self.finish()
        elif event == SpiceClientGLib.ChannelEvent.OPENED:
            if isinstance(channel, SpiceClientGLib.DisplayChannel) and self.args.codec:
                channel.display_channel_change_preferred_video_codec_types(
                    [CODECS[self.args.codec]]
                )
                emit({"phase": "codec-asked", "codec": self.args.codec})
            if isinstance(channel, SpiceClientGLib.InputsChannel):
                self.inputs_ready = True

    # -- the display ------------------------------------------------------------------

    def on_primary_create(self, channel, fmt, width, height, stride, shmid, imgdata) -> None:
        self.surface = Surface(imgdata, width, height, stride)
        if self.asked_at is not None and self.sizes and (width, height) == self.sizes[0]:
            took = (time.monotonic() - self.asked_at) * 1000
            self.report["resized"].append([width, height, took])
            emit({"phase": f"resized-{width}x{height}"})
            self.sizes.pop(0)
            self.asked_at = None
        self.report["width"], self.report["height"] = width, height
        self.report["format"] = fmt

    def on_surface(self, channel, fmt, width, height, stride, shmid, imgdata, index) -> None:
        """Every display channel's surfaces: report["surfaces"]["K"] for channel id K."""
        self.report.setdefault("surfaces", {}).setdefault(str(index), []).append([width, height])

    def on_primary_destroy(self, channel) -> None:
        self.surface = None

    def on_mark(self, channel, mark) -> None:
        self.marked = bool(mark)
        if mark and self.ready_at is None:
            self.ready_at = time.monotonic()
            emit({"phase": "ready"})

    def pixels(self) -> np.ndarray | None:
        return None if self.surface is None else self.surface.pixels()

    # -- sound ------------------------------------------------------------------------

    def on_playback_start(self, channel, fmt, channels, rate) -> None:
        self.report["playback_start"] = [fmt, channels, rate]

    def on_playback_data(self, channel, data, size) -> None:
        if self.tone_sent is None:
            return
        if self.audio_first is None:
            self.audio_first = time.monotonic()
        self.pcm.append(ctypes.string_at(data, size))

    def on_playback_stop(self, channel) -> None:
        self.report["playback_stops"] = self.report.get("playback_stops", 0) + 1

    def tone_report(self) -> None:
        pcm = np.frombuffer(b"".join(self.pcm), "<i2").reshape(-1, 2)[:, 0].astype(float)
        rate = self.report.get("playback_start", [0, 0, 48000])[2]
        audio: dict = {"samples": len(pcm), "packets": len(self.pcm)}
        loud = np.flatnonzero(np.abs(pcm) > 2000)
        if len(loud) > rate // 10:
            part = pcm[loud[0] :]
            part = part - part.mean()
            spectrum = np.abs(np.fft.rfft(part * np.hanning(len(part))))
            audio["peak_hz"] = float(np.argmax(spectrum[1:]) + 1) * rate / len(part)
        if self.audio_first is not None:
            audio["first_data_ms"] = (self.audio_first - self.tone_sent) * 1000
        if self.strip_seen is not None:
            audio["picture_ms"] = (self.strip_seen - self.tone_sent) * 1000
        self.report["audio"] = audio

    def tone_tick(self, now: float) -> None:
        if self.tone_sent is None:
            if self.inputs_ready and now - self.ready_at >= self.args.settle:
                self.inputs.key_press_and_release(0x14)  # T: the guest's tone and its colour
                self.tone_sent = now
                emit({"phase": "tone-sent"})
            return
        if now - self.tone_sent >= self.args.tone:
            self.inputs.key_press_and_release(0x15)  # Y: the tone stops
            self.tone_report()
            self.finish()

    def on_invalidate(self, channel, x, y, w, h) -> None:
        now = time.time()
        self.invalidates += 1
        self.last_invalidate = time.monotonic()
        if self.tone_sent is not None and self.strip_seen is None:
            px, row = self.pixels(), self.args.strip_row
            if px is not None and px.shape[0] > row:
                # T's colour (B=20, G=0x5A, R=0xA5, shifted by a lossy codec), the first key
                b, g, r = (int(v) for v in px[row, 100, :3])
                if b < 80 and abs(g - 0x5A) < 40 and abs(r - 0xA5) < 40:
                    self.strip_seen = self.last_invalidate
        px = self.pixels()
        if px is None or y > 4:
            return
        stamp = read_stamp(px)
        if stamp != self.last_stamp:
            self.last_stamp = stamp
            if self.measure_from is not None and self.measure_until is None:
                self.shown.append((stamp, now))

    # -- the script ---------------------------------------------------------------------

    def tick(self) -> bool:
        if self.done:
            return False
        now = time.monotonic()
        if self.ready_at is None:
            return True
        if self.args.tone:
            self.tone_tick(now)
            return not self.done
        if self.args.copy is not None:
            self.clipboard_tick(now)
            return not self.done
        if self.args.inputs and self.inputs_ready and "inputs_sent" not in self.report:
            self.send_inputs()
        if self.args.resize:
            return self.resize_next()
        if self.measure_from is None and now - self.ready_at >= self.args.settle:
            self.measure_from = now
            emit({"phase": "measuring"})
        if (
            self.measure_from is not None
            and self.measure_until is None
            and now - self.measure_from >= self.args.seconds
        ):
            self.measure_until = now
            seconds = self.measure_until - self.measure_from
            self.report["seconds"] = seconds
            self.report["frames"] = len(self.shown)
            self.report["fps"] = len(self.shown) / seconds
            self.report["shown"] = self.shown
            if not self.args.still:
                self.finish()
                return False
            emit({"phase": "measured"})
            GLib.io_add_watch(sys.stdin, GLib.IO_IN | GLib.IO_HUP, self.on_stdin)
        if self.still and now - self.last_invalidate >= self.args.quiet:
            self.still = False
            self.cycle += 1
            px = self.pixels()
            if px is not None and self.args.dump:
                np.save(self.args.dump, np.ascontiguousarray(px))
                self.report["dumped"] = self.args.dump
            if self.cycle >= self.args.cycles:
                self.finish()
                return False
            emit({"phase": f"still-{self.cycle}"})
            GLib.io_add_watch(sys.stdin, GLib.IO_IN | GLib.IO_HUP, self.on_stdin)
        return True

    # -- the clipboard (as spice-gtk's SpiceGtkSession does with the system's clipboard) ---

    def clipboard_tick(self, now: float) -> None:
        by_demand = 1 << 5  # VD_AGENT_CAP_CLIPBOARD_BY_DEMAND, in the agent's first caps word
        if "copied_at" not in self.report:
            if self.main.get_property("agent-connected") and (
                self.main.get_property("agent-caps-0") & by_demand
            ):
                self.main.clipboard_selection_grab(0, [1])  # UTF-8 text
                self.report["copied_at"] = now
                emit({"phase": "copied"})
        elif "given_at" in self.report and "pressed_at" not in self.report and self.inputs_ready:
            self.inputs.key_press_and_release(0x2E)  # C: the guest copies
            self.report["pressed_at"] = now
            emit({"phase": "pressed-c"})

    def on_clipboard_request(self, channel, selection, kind) -> bool:
        if selection != 0 or kind != 1:
            return False
        channel.clipboard_selection_notify(selection, kind, self.args.copy.encode())
        self.report["given_at"] = time.monotonic()
        emit({"phase": "given"})
        return True

    def on_clipboard_grab(self, channel, selection, types, ntypes) -> bool:
        if selection == 0:
            channel.clipboard_selection_request(selection, 1)
        return True

    def on_clipboard(self, channel, selection, kind, data, size) -> None:
        raw = ctypes.string_at(data, size) if isinstance(data, int) else bytes(data)[:size]
        self.report.setdefault("offered", []).append(raw.decode(errors="replace"))
        self.report.setdefault("offered_at", time.monotonic())
        emit({"phase": "offered"})
        if "pressed_at" in self.report:
            self.finish()

    def resize_next(self) -> bool:
        """As spice-widget.c's recalc_geometry and update_ready do with resize-guest on."""
        if not self.sizes:
            self.finish()
            return False
        if self.asked_at is None and self.main.get_property("agent-connected"):
            width, height = self.sizes[0]
            self.main.update_display_enabled(0, True, False)
            self.main.update_display(0, 0, 0, width, height, True)
            self.asked_at = time.monotonic()
            emit({"phase": f"asked-{width}x{height}"})
        return True

    def on_stdin(self, source, condition) -> bool:
        sys.stdin.readline()
        self.still = True
        self.last_invalidate = time.monotonic()
        return False

    def send_inputs(self) -> None:
        inputs = self.inputs
        inputs.key_press(0x1E)  # A
        inputs.key_release(0x1E)
        inputs.key_press_and_release(0x148)  # Up: 0x100 marks the E0 prefix
        inputs.position(100, 50, 0, 0)
        inputs.button_press(1, 1)  # left
        inputs.button_release(1, 0)
        inputs.button_press(4, 8)  # wheel up
        inputs.button_release(4, 0)
        inputs.motion(5, -3, 0)
        self.report["inputs_sent"] = True
        emit({"phase": "inputs-sent"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password")
    parser.add_argument("--ca-file", help="connect with TLS, trusting this certificate")
    parser.add_argument(
        "--tls-port", type=int, help="with --ca-file: PORT is plain, this one is TLS"
    )
    parser.add_argument("--codec", choices=sorted(CODECS))
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of measuring")
    parser.add_argument("--inputs", action="store_true")
    parser.add_argument("--still", action="store_true", help="after measuring, wait for stdin")
    parser.add_argument("--quiet", type=float, default=2.0, help="seconds without redraws")
    parser.add_argument("--dump", help="write the final surface here (.npy)")
    parser.add_argument("--cycles", type=int, default=1, help="still phases, each after stdin")
    parser.add_argument("--tone", type=float, help="press T, keep the sound for SECONDS")
    parser.add_argument("--strip-row", type=int, default=624, help="a row of the key strip")
    parser.add_argument("--resize", default="", help="window sizes to ask for: WxH,WxH...")
    parser.add_argument("--copy", help="copy TEXT, press C, report what is offered back")
    parser.add_argument("--timeout", type=float, default=50)
    args = parser.parse_args()
    report = Client(args).run()
    emit(report)


if __name__ == "__main__":
    main()
