"""The guest's sound: QEMU's D-Bus audio (a PC speaker tone in the test guest) reaches the
display's sound sink, SPICE clients (spice-gtk's playback channel) and the page, QEMU 7.2
and 10.0. The guest starts a 440 Hz tone on T, in the same instant as it paints T's colour."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saffron.bench import guest as build_guest
from saffron.bench import netns, slowsound
from saffron.bench.process import free_port
from saffron.bench.qemus import Qemu
from saffron.display import Frame, PcmFormat, now_us
from tests.support.gtk import run_gtk_client
from tests.support.process import run_saffron
from tests.support.qemu import attached_guest, new_display
from tests.support.wait import wait_until

BASE = ["-machine", slowsound.MACHINE, "-accel", "tcg", "-nodefaults", "-device", "VGA"]
BASE += slowsound.QEMU_AUDIO_ARGS
"""The PC speaker plays into a D-Bus audiodev (``-global isa-pcspk.audiodev`` is applied
before QEMU 7.2 knows the audiodev; the machine property works on both versions)."""
TONE_ON = 0x14
"""T's scancode: the guest starts its tone."""
TONE_OFF = 0x15
"""Y's scancode: the guest stops it."""
STRIP_ROW = build_guest.KEY_ROW + build_guest.KEY_ROWS // 2
"""A row of the key strip, where T paints its colour (B=20, G=0x5A, R=0xA5)."""


def peak_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency (a square wave's is its fundamental)."""
    samples = samples - samples.mean()
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum[1:]) + 1) * rate / len(samples)


@dataclass
class Recorder:
    """A PcmSink that keeps what the source gives it."""

    fmt: PcmFormat | None = None
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    enabled: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pcm_start(self, stream: int, fmt: PcmFormat) -> None:
        self.fmt = fmt

    def pcm_enable(self, stream: int, enabled: bool) -> None:
        self.enabled.append(enabled)

    def pcm_write(self, stream: int, data: bytes, capture_us: int) -> None:
        with self.lock:
            self.chunks.append((capture_us, data))

    def pcm_stop(self, stream: int) -> None:
        pass


@pytest.fixture
def vm(qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path) -> Iterator[tuple]:
    serial = tmp_path / "serial.log"
    display, sink, _ = new_display()
    recorder = Recorder()
    display.audio = recorder
    argv = qemu.command(*BASE, "-m", "256", *guest_image.qemu_args(serial))
    with attached_guest(display, argv, serial, audio=True) as source:
        yield display, sink, recorder, source


def test_the_guests_tone_reaches_the_sound_sink(vm: tuple) -> None:
    display, sink, recorder, source = vm
    assert source.audio is not None, "no audio listener registered"
    assert wait_until(lambda: recorder.fmt is not None, 10), "QEMU never said Init"
    pressed_us = now_us()
    display.input.key(TONE_ON, True)
    display.input.key(TONE_ON, False)
    assert wait_until(lambda: len(recorder.chunks) > 100, 20), len(recorder.chunks)
    display.input.key(TONE_OFF, True)
    display.input.key(TONE_OFF, False)
    with recorder.lock:
        chunks = list(recorder.chunks)
    fmt = recorder.fmt
    assert fmt is not None and fmt.bits == 16 and fmt.signed
    pcm = np.frombuffer(b"".join(d for _, d in chunks), "<i2").reshape(-1, fmt.channels)
    hz = peak_hz(pcm[:, 0].astype(float), fmt.rate)
    assert hz == pytest.approx(build_guest.TONE_HZ, rel=0.03), hz
    assert True in recorder.enabled
    first_ms = (chunks[0][0] - pressed_us) / 1000
    loud = [us for us, d in chunks if np.abs(np.frombuffer(d, "<i2")).max() > 2000]
    row = STRIP_ROW

    def t_colour(f: Frame) -> bool:
        return f.height > row and list(f.pixels[row, 100, :3].tolist()) == [20, 0x5A, 0xA5]

    strip = sink.wait_for(t_colour, 15)
    print(
        f"\n{fmt}: {hz:.1f} Hz; first chunk {first_ms:.0f} ms after the key was sent; the"
        f" guest's colour came {(strip.capture_us - loud[0]) / 1000:.0f} ms after its sound"
    )
    assert wait_until(lambda: recorder.enabled[-1] is False, 10), "the tone did not stop"
    time.sleep(0.2)


def boot(serial: Path) -> None:
    deadline = time.monotonic() + 90
    while "saffron-guest: ready" not in serial.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the guest did not boot"
        time.sleep(0.3)


def test_spice_gtk_plays_the_guests_tone(
    qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path
) -> None:
    serial = tmp_path / "serial.log"
    port = free_port()
    vm = qemu.command(*BASE, "-m", "256", *guest_image.qemu_args(serial))
    with run_saffron("qemu", "--audio", "--spice", f"127.0.0.1:{port}", "--", *vm):
        boot(serial)
        report = run_gtk_client(port, "--tone", "3", "--codec", "vp8", timeout=90)
    assert report["errors"] == [], report
    assert report.get("playback_start") == [1, 2, 48000], report  # S16, stereo, 48 kHz
    audio = report["audio"]
    assert audio["samples"] > 48000, audio  # over a second of sound decoded by spice-gtk
    assert audio.get("peak_hz") == pytest.approx(build_guest.TONE_HZ, rel=0.03), audio
    print(
        f"\nQEMU {qemu.version}, spice-gtk: {audio['peak_hz']:.1f} Hz; after the key: picture"
        f" {audio.get('picture_ms', -1):.0f} ms,"
        f" first sound {audio.get('first_data_ms', -1):.0f} ms"
    )


STRIP_WATCH = """() => {
    // the frame that shows T's colour in the key strip (T is the first key): when it was drawn
    window.stripAt = 0;
    const g = document.getElementById('screen').getContext('2d');
    const look = () => {
        const d = g.getImageData(100, ROW, 1, 1).data;
        // a lossy codec shifts the colour; the strip is black until the first key
        const near = Math.abs(d[0] - 0xA5) < 40 && Math.abs(d[1] - 0x5A) < 40 && d[2] < 80;
        if (near) window.stripAt = performance.now();
        else requestAnimationFrame(look);
    };
    requestAnimationFrame(look);
}""".replace("ROW", str(STRIP_ROW))


def test_the_page_plays_the_guests_tone_with_its_picture(
    qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path, browser: Any
) -> None:
    serial = tmp_path / "serial.log"
    vm = qemu.command(*BASE, "-m", "256", *guest_image.qemu_args(serial))
    with run_saffron("qemu", "--audio", "--", *vm) as saffron:
        boot(serial)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(saffron.url + "?codec=vp8")
            page.wait_for_selector("#sound:not([hidden])", timeout=15000)
            page.click("#sound")  # the user's gesture that lets the page play sound
            assert wait_until(lambda: page.evaluate("window.saffronStats.framesDecoded") > 5, 20)
            page.evaluate("window.saffronAudio.tap = []")
            page.evaluate(STRIP_WATCH)
            page.focus("#screen")
            page.keyboard.press("KeyT")
            if not wait_until(lambda: page.evaluate("window.stripAt") > 0, 20):
                px = page.evaluate(
                    "Array.from(document.getElementById('screen').getContext('2d')"
                    f".getImageData(100, {STRIP_ROW}, 1, 1).data)"
                )
                raise AssertionError(f"no T colour: the strip shows {px}")
            assert wait_until(lambda: page.evaluate("window.saffronAudio.decoded") > 150, 20)
            page.keyboard.press("KeyY")
            audio = page.evaluate(
                "(() => { const a = window.saffronAudio; return {packets: a.packets,"
                " decoded: a.decoded, dropped: a.dropped, lost: a.lost, loudAt: a.loudAt,"
                " stripAt: window.stripAt, arrivalMs: a.arrivalMs, playMs: a.playMs,"
                " videoMs: window.saffronStats.latencyMs, heardAt: a.loudHeardAt,"
                " tap: a.tap.slice(-48000)}; })()"
            )
        finally:
            page.close()
    summary = {k: v for k, v in audio.items() if k != "tap"}
    # what the page drops to catch up after a burst (a busy 2-core machine) is reported only
    assert audio["decoded"] >= 150, summary
    pcm = np.array(audio["tap"], np.float64)
    loud = np.flatnonzero(np.abs(pcm) > 0.1)
    assert len(loud) > 24000, f"{len(loud)} loud samples of {len(pcm)}"
    hz = peak_hz(pcm[loud[0] :], 48000)
    assert hz == pytest.approx(build_guest.TONE_HZ, rel=0.03), hz
    assert audio["loudAt"] > 0
    print(
        f"\nQEMU {qemu.version}, page: {hz:.1f} Hz; capture to page: sound decoded"
        f" {audio['arrivalMs']:.0f} ms, heard {audio['playMs']:.0f} ms, picture shown"
        f" {audio['videoMs']:.0f} ms; T's colour drawn {audio['stripAt'] - audio['heardAt']:.0f}"
        f" ms after its sound was heard (the guest paints it 60-70 ms after the tone); {summary}"
    )


def test_sound_stays_fresh_on_a_full_slow_link(
    qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path
) -> None:
    """4 Mbit/s, the video asking 20: sound packets are dropped rather than queued, so
    their age does not grow (a FIFO's would, by seconds: see test_netbench)."""
    problem = netns.missing()
    assert problem is None, problem
    serial = tmp_path / "serial.log"
    argv = qemu.command(*BASE, "-m", "256", *guest_image.qemu_args(serial))
    result = slowsound.run(argv, serial, seconds=12, link_kbit=4000, bitrate=20000)
    print(f"\nQEMU {qemu.version}, sound over a full 4 Mbit/s link: {result}")
    assert result["video_kbit_s"] > 2500, result  # the video does fill the link
    assert result["packets"] > 500, result  # 10 ms each: most of the tone arrives
    first, last = result["p95_trend_ms"][0], result["p95_trend_ms"][-1]
    assert first is not None and last is not None, result
    assert last < max(2 * first, 500), result  # no growing delay
