"""The guest's sound: QEMU's D-Bus audio (a PC speaker tone in the test guest) reaches the
display's sound sink, SPICE clients (spice-gtk's playback channel) and the page, QEMU 7.2
and 10.0. The guest starts a 440 Hz tone on T, in the same instant as it paints T's colour."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from saffron.bench import guest as build_guest
from saffron.bench.process import free_port
from saffron.bench.qemus import Qemu
from saffron.display import PcmFormat, now_us
from saffron.sources import qemu as Q
from tests.support.gtk import run_gtk_client
from tests.support.process import run_saffron
from tests.support.qemu import new_display, wait_serial
from tests.support.wait import wait_until

AUDIODEV = "snd0"
BASE = ["-machine", f"q35,pcspk-audiodev={AUDIODEV}", "-accel", "tcg", "-nodefaults"]
BASE += ["-device", "VGA", "-audiodev", f"dbus,id={AUDIODEV}"]
"""The PC speaker plays into a D-Bus audiodev (``-global isa-pcspk.audiodev`` is applied
before QEMU 7.2 knows the audiodev; the machine property works on both versions)."""
TONE_ON = 0x14
"""T's scancode: the guest starts its tone."""
TONE_OFF = 0x15
"""Y's scancode: the guest stops it."""


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
def guest_image() -> build_guest.Guest:
    missing = build_guest.missing_tools()
    assert not missing, f"building the guest needs {', '.join(missing)}"
    return build_guest.build_guest()


@pytest.fixture
def vm(qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path) -> Iterator[tuple]:
    serial = tmp_path / "serial.log"
    display, _, _ = new_display()
    recorder = Recorder()
    display.audio = recorder
    argv = qemu.command(*BASE, "-m", "256", *guest_image.qemu_args(serial))
    proc = Q.start_qemu(argv, audio=True)
    source = Q.open_qemu_source(display, dbus_address=proc.address)
    try:
        assert source.wait_attached(20)
        wait_serial(serial, "saffron-guest: ready", 60)
        yield display, recorder, source
    finally:
        source.stop()
        proc.stop()


def test_the_guests_tone_reaches_the_sound_sink(vm: tuple) -> None:
    display, recorder, source = vm
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
    print(f"\n{fmt}: {hz:.1f} Hz; first chunk {first_ms:.0f} ms after the key was sent")
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
