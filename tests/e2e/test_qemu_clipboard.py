"""The guest's clipboard: QEMU's D-Bus clipboard (qemu-vdagent, clipboard=on) to and from the
display's producer hooks, SPICE clients (spice-gtk through the stand-in agent) and the page,
QEMU 7.2 and 10.0. The test guest's agent prints what it was given on the serial port and
copies a known text (``guest.GUEST_TEXT`` and a count) when C is pressed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saffron.bench import guest as build_guest
from saffron.bench.process import free_port
from saffron.bench.qemus import Qemu
from tests.support.gtk import run_gtk_client
from tests.support.process import run_saffron
from tests.support.qemu import attached_guest, new_display, wait_serial
from tests.support.wait import wait_until

BASE = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA", "-m", "256"]
COPY_KEY = 0x2E
"""C's scancode: the guest's agent copies its text."""
HOST_TEXT = "from the host: naïve café ✓ 1"


class Recorder:
    """A ClipboardSink that keeps what the producer says the guest copied."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.lock = threading.Lock()

    def guest_clipboard(self, text: str) -> None:
        with self.lock:
            self.texts.append(text)


def press_copy(display: Any) -> None:
    display.input.key(COPY_KEY, True)
    display.input.key(COPY_KEY, False)


@pytest.fixture
def vm(qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path) -> Iterator[tuple]:
    serial = tmp_path / "serial.log"
    display, _sink, _ = new_display()
    recorder = Recorder()
    display.clipboard = recorder
    argv = qemu.command(*BASE, *guest_image.qemu_args(serial))
    with attached_guest(display, argv, serial, ready_s=90, clipboard=True):
        wait_serial(serial, "saffron-guest: agent connected", 30)
        yield display, recorder, serial


def test_text_goes_both_ways_between_the_guest_and_the_producer(vm: tuple) -> None:
    display, recorder, serial = vm
    assert display.clipboard_hook is not None
    # the host copies: the guest's agent is offered it, asks for it and prints it
    display.clipboard_hook(HOST_TEXT)
    wait_serial(serial, f"saffron-guest: clipboard {HOST_TEXT}", 30)
    # the guest copies: the producer hears of it with the text
    press_copy(display)
    want = f"{build_guest.GUEST_TEXT} 1"
    assert wait_until(lambda: want in recorder.texts, 30), (recorder.texts, serial.read_text())
    # and once more each way: serials keep ordering the grabs
    display.clipboard_hook("second from the host")
    wait_serial(serial, "saffron-guest: clipboard second from the host", 30)
    press_copy(display)
    want = f"{build_guest.GUEST_TEXT} 2"
    assert wait_until(lambda: want in recorder.texts, 30), recorder.texts


def boot(serial: Path) -> None:
    wait_serial(serial, "saffron-guest: ready", 90)
    wait_serial(serial, "saffron-guest: agent connected", 30)


def test_spice_gtk_and_the_guest_copy_to_each_other(
    qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path
) -> None:
    serial = tmp_path / "serial.log"
    port = free_port()
    vm = qemu.command(*BASE, *guest_image.qemu_args(serial))
    with run_saffron("qemu", "--clipboard", "--spice", f"127.0.0.1:{port}", "--", *vm):
        boot(serial)
        report = run_gtk_client(port, "--copy", HOST_TEXT, timeout=90)
        wait_serial(serial, f"saffron-guest: clipboard {HOST_TEXT}", 30)
    assert report["errors"] == [], report
    assert f"{build_guest.GUEST_TEXT} 1" in report.get("offered", []), report
    asked_ms = (report["given_at"] - report["copied_at"]) * 1000
    offered_ms = (report["offered_at"] - report["pressed_at"]) * 1000
    print(
        f"\nQEMU {qemu.version}, spice-gtk: its copy asked for after {asked_ms:.0f} ms; C pressed"
        f" -> the guest's text offered and fetched after {offered_ms:.0f} ms"
    )


def test_the_page_and_the_guest_copy_to_each_other(
    qemu: Qemu, guest_image: build_guest.Guest, tmp_path: Path, browser: Any
) -> None:
    serial = tmp_path / "serial.log"
    vm = qemu.command(*BASE, *guest_image.qemu_args(serial))
    with run_saffron("qemu", "--clipboard", "--", *vm) as saffron:
        boot(serial)
        context = browser.new_context(
            permissions=["clipboard-read", "clipboard-write"],
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.goto(saffron.url + "?codec=vp8")
            page.wait_for_selector("#paste:not([hidden])", timeout=15000)
            # the guest copies (C): the page puts its text on this computer's clipboard
            page.focus("#screen")
            page.keyboard.press("KeyC")
            want = f"{build_guest.GUEST_TEXT} 1"
            assert wait_until(lambda: page.evaluate("window.saffronClipboard.written.length"), 30)
            assert page.evaluate("window.saffronClipboard.written") == [want]
            assert page.evaluate("navigator.clipboard.readText()") == want
            # this computer's clipboard, pasted with Ctrl+V in the picture, reaches the guest
            page.evaluate("(t) => navigator.clipboard.writeText(t)", HOST_TEXT)
            page.focus("#screen")
            page.keyboard.press("Control+KeyV")
            wait_serial(serial, f"saffron-guest: clipboard {HOST_TEXT}", 30)
            # and with the paste button
            page.evaluate("(t) => navigator.clipboard.writeText(t)", "by the button")
            page.click("#paste")
            wait_serial(serial, "saffron-guest: clipboard by the button", 30)
        finally:
            context.close()
