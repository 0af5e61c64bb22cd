"""The QEMU source with real QEMU on a private bus: each test runs against the system's
QEMU 7.2 and against 10.0 (the ``qemu`` fixture, tests/e2e/conftest.py).

The tests boot either no disk at all (SeaBIOS draws its text screen) or the test
guest from ``saffron.bench.guest`` (a Debian kernel and a busybox initramfs whose
``/init`` moves a band of noise across ``/dev/fb0`` and paints every key it
receives). QEMU runs with ``-accel tcg``. CI installs QEMU 7.2 and dbus
(scripts/apt-packages.txt) and unpacks 10.0 (scripts/setup-qemu10.sh): missing, these
tests fail, not skip. Stand-ins for QEMU:
tests/integration/test_qemu_source.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from saffron.bench import guest as build_guest
from saffron.bench.qemus import Qemu
from saffron.display import Display, Frame, Rect
from saffron.sources import qemu as Q
from tests.support.qemu import Sink, new_display, wait_serial
from tests.support.wait import wait_until

BASE = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA"]

MAP_MODE = {"7.2": "2d", "10.0": "map"}
"""How each QEMU hands over a surface of its own (SeaBIOS's text screen, a 24-bpp VESA
mode): 7.2 copies its pixels into every Scanout and Update ('2d'); 9.2 and later share it
once through Listener.Unix.Map's ScanoutMap, and UpdateMap carries no pixels ('map').
In a 32-bpp VESA mode QEMU's VGA shows its video memory itself, which has no memfd to
share: 10.0 too sends Scanout and Update ('2d')."""


def mode_of(source: Q.QemuSource) -> str:
    listener = source.listener
    return listener.mode if listener is not None else "detached"


def test_seabios_text_screen_arrives(qemu: Qemu) -> None:
    """No disk: SeaBIOS's text screen (720x400) comes through with its text."""
    display, sink, events = new_display()
    proc = Q.start_qemu(qemu.command(*BASE, "-m", "64", "-name", "saffron-test"))
    source = Q.open_qemu_source(display, dbus_address=proc.address)
    try:
        assert source.wait_attached(20), "no attach"
        frame = sink.wait_for(
            lambda f: (
                (f.width, f.height) in ((720, 400), (640, 480))
                and int(f.pixels.max()) > 0
                and float(f.pixels.std()) > 5
            ),
            timeout=30,
        )
        # text: a few distinct colours, many pixels lit but far from all of them
        lit = (frame.pixels[..., :3].max(axis=2) > 64).mean()
        assert 0.001 < lit < 0.5, lit
        assert display.info.name == "saffron-test"
        assert mode_of(source) == MAP_MODE[qemu.version]
        # a viewer joining asks for the whole picture again
        before = sink.count
        display.request_refresh()
        again = sink.wait_for(lambda f: f.damage == Rect(0, 0, f.width, f.height), 5, before)
        assert (again.width, again.height) == (frame.width, frame.height)
    finally:
        source.stop()
        proc.stop()
    assert events.disables >= 1


def test_qemu_killed_disables_the_display(qemu: Qemu) -> None:
    display, sink, events = new_display()
    proc = Q.start_qemu(qemu.command(*BASE, "-m", "64"))
    source = Q.open_qemu_source(display, dbus_address=proc.address)
    try:
        assert source.wait_attached(20)
        sink.wait_for(lambda f: True, 20)
        assert display.enabled
        proc.process.kill()
        assert source.wait_closed(10), "the source did not notice QEMU going"
        assert "gone" in source.close_reason
        assert not display.enabled
        assert events.disables >= 1
        assert proc.wait(5) == -9
    finally:
        source.stop()
        proc.stop()


def test_reattach_survives_a_qemu_restart(qemu: Qemu, tmp_path: Path) -> None:
    display, sink, events = new_display()
    bus = Q.DBusDaemon(tmp_path)
    source = Q.open_qemu_source(display, dbus_address=bus.address, reattach=True)
    procs: list[Q.QemuProcess] = []
    try:
        procs.append(Q.start_qemu(qemu.command(*BASE, "-m", "64"), dbus_address=bus.address))
        assert source.wait_attached(20)
        sink.wait_for(lambda f: True, 20)
        procs[0].process.kill()
        assert wait_until(lambda: not display.enabled, 10), (
            "timed out waiting for the display to be disabled"
        )
        assert not source.closed.is_set()
        time.sleep(1.0)  # the source keeps waiting: nothing closes
        assert not source.closed.is_set() and source.detach_count == 1
        procs.append(Q.start_qemu(qemu.command(*BASE, "-m", "64"), dbus_address=bus.address))
        assert wait_until(lambda: source.attach_count == 2, 20), (
            "timed out waiting for attaching again"
        )
        sink.wait_for(lambda f: True, 20, after=sink.count)
        assert display.enabled
    finally:
        source.stop()
        for proc in procs:
            proc.stop()
        bus.stop()
    assert events.disables >= 2


KEY_TESTS = [
    # name, PC set-1 scancode (SPICE numbering), the evdev code Linux reports
    ("a", 0x1E, 30),
    ("Up", 0xE048, 103),
    ("keypad Enter", 0xE01C, 96),
    ("right Ctrl", 0xE01D, 97),
    ("Delete", 0xE053, 111),
    ("left Meta", 0xE05B, 125),
    ("F12", 0x58, 88),
]


@dataclass
class Guest:
    display: Display
    sink: Sink
    source: Q.QemuSource
    proc: Q.QemuProcess
    serial: Path
    qemu: Qemu


@pytest.fixture(scope="module")
def guest(qemu: Qemu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    missing = build_guest.missing_tools()
    assert not missing, f"building the guest needs {', '.join(missing)}"
    image = build_guest.build_guest()
    serial = tmp_path_factory.mktemp("guest") / "serial.log"
    display, sink, _ = new_display()
    proc = Q.start_qemu(qemu.command(*BASE, "-m", "256", *image.qemu_args(serial)))
    source = Q.open_qemu_source(display, dbus_address=proc.address)
    try:
        assert source.wait_attached(20)
        wait_serial(serial, "saffron-guest: ready", 60)
        yield Guest(display, sink, source, proc, serial, qemu)
    finally:
        source.stop()
        proc.stop()


def test_guest_frames_flow(guest: Guest) -> None:
    sink = guest.sink
    sink.wait_for(lambda f: (f.width, f.height) == (1024, 768), 20)
    # the band moves: frames keep coming, and they differ
    start, t0 = sink.count, time.monotonic()
    digests: set[int] = set()
    while time.monotonic() - t0 < 5:
        frame = sink.last
        assert frame is not None and (frame.width, frame.height) == (1024, 768)
        band = frame.pixels[: build_guest.BAND_ROWS_MAX]
        digests.add(hash(band[::8, ::8].tobytes()))
        time.sleep(0.05)
    fps = (sink.count - start) / (time.monotonic() - t0)
    stats = guest.source.stats
    mode = mode_of(guest.source)
    print(
        f"\nQEMU {guest.qemu.version}, mode {mode}: {fps:.1f} frames/s presented;"
        " Update arrival to present() return:"
        f" p50 {stats.percentile(50) / 1000:.2f} ms, p99 {stats.percentile(99) / 1000:.2f} ms;"
        f" {stats.messages} messages, {stats.bytes / 1e6:.1f} MB"
    )
    assert fps > 5, fps
    assert len(digests) > 10, len(digests)
    assert mode == "2d", f"QEMU {guest.qemu.version} in mode {mode} at 32 bpp"


def test_guest_keys_arrive(guest: Guest) -> None:
    """Each key reaches the guest as the evdev code Linux's keyboard driver gives it."""
    sink, keyboard = guest.sink, guest.display.input
    row = int(build_guest.KEY_ROW + build_guest.KEY_ROWS // 2)
    g_mark, r_mark = build_guest.KEY_MARK
    latencies = []
    for name, scancode, evdev in KEY_TESTS:
        want = [evdev & 0xFF, g_mark, r_mark]

        def shows(f: Frame, want: list[int] = want) -> bool:
            return f.height > row and list(f.pixels[row, 100, :3].tolist()) == want

        t0 = time.monotonic()
        keyboard.key(scancode, True)
        keyboard.key(scancode, False)
        try:
            sink.wait_for(shows, 15)
        except AssertionError as exc:
            log = guest.serial.read_text()[-400:]
            raise AssertionError(f"{name} (0x{scancode:x}) not seen: {exc}\n{log}") from exc
        latencies.append(time.monotonic() - t0)
    print(
        f"\nkeys: sent to painted in the guest's framebuffer: median "
        f"{sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms (TCG, a shell loop)"
    )


def test_guest_at_24_bpp_flows_through_scanout_map(qemu: Qemu, tmp_path: Path) -> None:
    """The guest in a 24-bpp mode: QEMU converts into a surface of its own, which 10.0
    shares through ScanoutMap; the moving band arrives through UpdateMap."""
    image = build_guest.build_guest().with_depth(24)
    serial = tmp_path / "serial.log"
    display, sink, _ = new_display()
    proc = Q.start_qemu(qemu.command(*BASE, "-m", "256", *image.qemu_args(serial)))
    source = Q.open_qemu_source(display, dbus_address=proc.address)
    try:
        assert source.wait_attached(20)
        wait_serial(serial, "saffron-guest: ready", 60)
        assert "bpp 24" in serial.read_text()
        first = sink.wait_for(lambda f: (f.width, f.height) == (1024, 768), 20)
        band = first.pixels[: build_guest.BAND_ROWS_MAX, ::8].copy()
        sink.wait_for(
            lambda f: (
                (f.width, f.height) == (1024, 768)
                and not np.array_equal(f.pixels[: build_guest.BAND_ROWS_MAX, ::8], band)
            ),
            20,
            after=sink.count,
        )
        assert mode_of(source) == MAP_MODE[qemu.version]
    finally:
        source.stop()
        proc.stop()
