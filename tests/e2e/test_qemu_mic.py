"""The viewers' microphone reaches the guest: QEMU's D-Bus audio capture (an AC97 card's
input in the test guest, recorded from OSS ``/dev/dsp`` on R) hears a known tone from the
display's microphone input, from a page's ``getUserMedia`` (Chromium's fake capture
device playing a WAV of the tone) and from a SPICE client's record channel, QEMU 7.2 and
10.0."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saffron.bench import guest as build_guest
from saffron.bench import slowsound
from saffron.bench.process import free_port
from saffron.bench.qemus import Qemu
from saffron.bench.spice_client import PyClient, open_session
from saffron.mic import MicInput
from saffron.spice.protocol import wire as w
from tests.support.mic import (
    TONE_HZ,
    guest_recording,
    opus_tone_packets,
    peak_hz,
    write_tone_wav,
)
from tests.support.process import run_saffron
from tests.support.qemu import attached_guest, new_display, wait_serial
from tests.support.wait import wait_until

BASE = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA"]
BASE += [*slowsound.QEMU_AUDIO_ARGS, "-device", f"AC97,audiodev={slowsound.AUDIODEV}"]
"""An AC97 card, whose input records from the D-Bus audiodev."""
RECORD = 0x13
"""R's scancode: the guest records a second of its card's input."""


def assert_heard_tone(serial: Path) -> float:
    wait_serial(serial, "saffron-guest: mic done", 30)
    pcm = guest_recording(serial)
    assert len(pcm) == build_guest.MIC_BYTES, len(pcm)
    loud = abs(pcm).max()
    assert loud > 20, f"the guest recorded silence (peak {loud})"
    hz = peak_hz(pcm)
    assert hz == pytest.approx(TONE_HZ, rel=0.02), hz
    return hz


@pytest.fixture
def vm(qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path) -> Iterator[tuple]:
    serial = tmp_path / "serial.log"
    display, _sink, _ = new_display()
    mic = MicInput()
    display.mic = mic
    argv = qemu.command(*BASE, "-m", "256", *guest_image.qemu_args(serial))
    with attached_guest(display, argv, serial, audio=True) as source:
        yield display, mic, source, serial


def test_the_guest_records_the_displays_microphone(vm: tuple) -> None:
    display, mic, source, serial = vm
    assert source.mic is not None, "no microphone listener registered"
    assert wait_until(lambda: mic.available, 10), "QEMU never said Init for a capture voice"
    packets = opus_tone_packets(TONE_HZ, 4)
    stop = threading.Event()

    def speak() -> None:  # 20 ms packets at the pace a microphone makes them
        start = time.monotonic()
        for i, packet in enumerate(packets):
            if stop.is_set():
                return
            mic.push_opus("test", packet, 1)
            time.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))

    speaker = threading.Thread(target=speak, daemon=True)
    speaker.start()
    try:
        display.input.key(RECORD, True)
        display.input.key(RECORD, False)
        hz = assert_heard_tone(serial)
    finally:
        stop.set()
        speaker.join()
    assert wait_until(lambda: not mic.recording, 10), "the guest did not stop recording"
    listener = source.mic
    print(
        f"\nthe guest heard {hz:.1f} Hz; QEMU read {listener.reads} times, {listener.bytes}"
        f" bytes; {mic.stats}"
    )
    assert mic.stats.packets > 20, mic.stats


@pytest.fixture(scope="module")
def mic_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium whose fake capture device plays the tone, and which grants the page the
    microphone without asking (only this module's browser)."""
    from playwright.sync_api import sync_playwright

    from saffron.bench.chromium import CHROMIUM, CHROMIUM_ARGS

    wav = write_tone_wav(tmp_path_factory.mktemp("mic") / "tone.wav", TONE_HZ, 30)
    args = [
        *CHROMIUM_ARGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        yield b
        b.close()


def test_the_guest_records_the_pages_microphone(
    qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path, mic_browser: Any
) -> None:
    serial = tmp_path / "serial.log"
    vm = qemu.command(*BASE, "-m", "256", *guest_image.qemu_args(serial))
    with run_saffron("qemu", "--audio", "--", *vm) as saffron:
        wait_serial(serial, "saffron-guest: ready", 90)
        page = mic_browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(saffron.url + "?codec=mjpeg")  # localhost: a secure context
            page.wait_for_selector("#mic:not([hidden])", timeout=15000)
            page.click("#mic")
            assert wait_until(lambda: page.evaluate("window.saffronMic.sent") > 10, 20), (
                page.evaluate("({...window.saffronMic, stream: null, reader: null})")
            )
            page.focus("#screen")
            page.keyboard.press("KeyR")
            hz = assert_heard_tone(serial)
            stats = page.evaluate(
                "(() => { const m = window.saffronMic; return {sent: m.sent, bytes: m.bytes,"
                " dropped: m.dropped, errors: m.errors}; })()"
            )
        finally:
            page.close()
    print(f"\nQEMU {qemu.version}: the guest heard the page's microphone at {hz:.1f} Hz; {stats}")
    assert stats["errors"] == 0, stats


def in_own_loop(coro: Any) -> Any:
    """``asyncio.run`` in a thread of its own: this module's Chromium (Playwright's sync
    API) keeps an event loop running in the test's thread while it is open."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def test_the_guest_records_a_spice_clients_microphone(
    qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path
) -> None:
    """The record channel as spice-gtk speaks it (MODE Opus, START_MARK, DATA of 10 ms
    48 kHz stereo packets), from the project's Python SPICE client: spice-gtk records
    through GStreamer from the machine's sound server, which has no known tone here."""
    serial = tmp_path / "serial.log"
    port = free_port()
    vm = qemu.command(*BASE, "-m", "256", *guest_image.qemu_args(serial))
    with run_saffron("qemu", "--audio", "--spice", f"127.0.0.1:{port}", "--", *vm):
        wait_serial(serial, "saffron-guest: ready", 90)
        hz = in_own_loop(speak_into_spice(port, serial))
    print(f"\nQEMU {qemu.version}: the guest heard the SPICE client's microphone at {hz:.1f} Hz")


async def speak_into_spice(port: int, serial: Path) -> float:
    """Press R through the inputs channel, then send the tone on the record channel once
    the guest records; what the guest heard."""
    packets = opus_tone_packets(TONE_HZ, 4, frame_ms=10, channels=2)
    main, init = await open_session(port)
    caps = w.make_caps([w.RecordCap.OPUS])
    record = await PyClient.open(
        port, w.ChannelType.RECORD, connection_id=init.session_id, channel_caps=caps
    )
    inputs = await PyClient.open(port, w.ChannelType.INPUTS, connection_id=init.session_id)
    try:
        assert record.ok and inputs.ok, (record.link, inputs.link)
        await inputs.expect(w.InputsInit)
        inputs.send(w.KeyDown(RECORD))
        inputs.send(w.KeyUp(RECORD | 0x80))
        start = await record.expect(w.RecordStart, timeout=20)
        assert (start.channels, start.format, start.frequency) == (2, w.AudioFormat.S16, 48000)
        record.send(w.RecordMode(0, w.AudioDataMode.OPUS))
        record.send(w.RecordStartMark(0))
        began = time.monotonic()
        for i, packet in enumerate(packets):
            record.send(w.RecordData(i * 10, packet))
            await asyncio.sleep(max(0.0, began + (i + 1) * 0.01 - time.monotonic()))
            if "saffron-guest: mic done" in serial.read_text(errors="replace"):
                break
        hz = assert_heard_tone(serial)
        await record.expect(w.RecordStop, timeout=10)
    finally:
        for client in (record, inputs, main):
            client.close()
    return hz
