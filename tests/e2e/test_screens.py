"""Several screens: a virtio-vga with two heads (two QEMU consoles) served with
``--console all``. spice-gtk gets a display channel per head, each with a surface of
its console's size; remote-viewer opens a window per head, and sizing the second
window turns the guest's second output on (QEMU's SetUIInfo on console 1), which then
shows the guest's console too. QEMU 7.2 and 10.0; the remote-viewer screenshot is
kept in ARTIFACTS."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from saffron.bench import guest as build_guest
from saffron.bench.process import free_port
from saffron.bench.qemus import Qemu
from saffron.bench.spice_gtk import SYSTEM_PYTHON
from tests.e2e.spice.test_remote_viewer import xvfb
from tests.e2e.test_guest_resize import XRESIZE, wait_for
from tests.support.artifacts import ARTIFACTS
from tests.support.gtk import run_gtk_client
from tests.support.process import run_saffron

HEAD = (1024, 768)
"""The first head's size (virtio-vga's xres/yres): the guest's framebuffer at boot."""
PLACEHOLDER = (640, 480)
"""What QEMU shows on a head the guest has not turned on ("Display output is not active")."""
TWO_HEADS = [
    "-machine",
    "q35",
    "-accel",
    "tcg",
    "-nodefaults",
    "-device",
    f"virtio-vga,max_outputs=2,xres={HEAD[0]},yres={HEAD[1]}",
]


def two_heads(qemu: Qemu, serial: Path) -> list[str]:
    guest = build_guest.build_guest()
    return qemu.command(*TWO_HEADS, "-m", "256", *guest.qemu_args(serial))


def test_spice_gtk_gets_a_display_channel_per_screen(qemu: Qemu, tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    port = free_port()
    spice = ("--spice", f"127.0.0.1:{port}", "--console", "all", "--fps", "30")
    with run_saffron("qemu", *spice, "--", *two_heads(qemu, serial)) as saffron:
        wait_for(lambda: "saffron-guest: ready" in serial.read_text(), 90, "the guest to boot")
        report = run_gtk_client(port, "--settle", "1", "--seconds", "2", "--quiet", "0.5")
        log = saffron.output()
    assert not report["errors"], report
    assert "QEMU's screens: consoles 0, 1" in log
    surfaces = report["surfaces"]
    assert sorted(surfaces) == ["0", "1"], surfaces
    assert tuple(surfaces["0"][-1]) == HEAD
    assert tuple(surfaces["1"][-1]) == PLACEHOLDER  # the guest has not turned it on


def x_windows(display: str) -> dict[str, str]:
    """remote-viewer's top-level windows by title ("QEMU ... (1)"): their X ids."""
    tree = subprocess.run(
        ["xwininfo", "-root", "-tree", "-display", display], capture_output=True, text=True
    ).stdout
    found = re.findall(r"(0x[0-9a-f]+) \"([^\"]*\(\d\))\": \(\"remote-viewer\"", tree)
    return {title: wid for wid, title in found}


def test_remote_viewer_opens_a_window_per_screen(qemu: Qemu, tmp_path: Path) -> None:
    missing = [t for t in ("remote-viewer", "Xvfb", "xwininfo", "import") if not shutil.which(t)]
    assert not missing, f"not installed: {', '.join(missing)} (scripts/apt-packages.txt)"
    serial = tmp_path / "serial.log"
    port = free_port()
    spice = ("--spice", f"127.0.0.1:{port}", "--console", "all", "--fps", "30")
    with (
        run_saffron("qemu", *spice, "--", *two_heads(qemu, serial)) as saffron,
        xvfb() as display,
    ):
        wait_for(lambda: "saffron-guest: ready" in serial.read_text(), 90, "the guest to boot")
        env = {**os.environ, "DISPLAY": display}
        viewer = subprocess.Popen(
            ["remote-viewer", f"spice://127.0.0.1:{port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: len(x_windows(display)) == 2, 30, "two remote-viewer windows")
            windows = x_windows(display)
            first = next(w for t, w in windows.items() if t.endswith("(1)"))
            second = next(w for t, w in windows.items() if t.endswith("(2)"))
            time.sleep(2)  # connected and drawn
            # side by side, as a window manager would place them; the second window's
            # size goes to console 1, which turns the guest's second output on
            resize = [SYSTEM_PYTHON, str(XRESIZE)]
            subprocess.run([*resize, first, "500", "400", "0", "0"], env=env, check=True)
            subprocess.run([*resize, second, "500", "400", "520", "0"], env=env, check=True)

            def second_head_on() -> bool:
                said = saffron.output()
                sizes = re.findall(r"SPICE client [^ ]+: screen 1 is now (\d+)x(\d+)", said)
                return any((int(w), int(h)) != PLACEHOLDER for w, h in sizes)

            wait_for(second_head_on, 30, "the guest to turn its second output on")
            time.sleep(2)  # the new picture drawn, for a person to look at
            png = ARTIFACTS / f"{qemu.id}-remote-viewer-two-screens.png"
            shot = ["import", "-window", "root", "-display", display, str(png)]
            subprocess.run(shot, check=True)
            assert len(x_windows(display)) == 2
        finally:
            viewer.terminate()
            viewer.wait(10)


def test_the_page_shows_the_screen_it_asks_for(qemu: Qemu, browser: Any, tmp_path: Path) -> None:
    """``?screen=1`` shows the second head (its size), the list picks the first again,
    "side by side" opens the other screen in a window of its own, keys typed on screen
    1's page reach the guest, and a screen that is not there is refused."""
    serial = tmp_path / "serial.log"
    all_screens = ("--console", "all", "--fps", "30")
    with run_saffron("qemu", *all_screens, "--", *two_heads(qemu, serial)) as saffron:
        wait_for(lambda: "saffron-guest: ready" in serial.read_text(), 90, "the guest to boot")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            page.goto(saffron.url + "?codec=mjpeg&screen=1")
            wait_for(lambda: size(page) == PLACEHOLDER, 30, "screen 2's picture")
            assert page.locator("#screens").is_visible()
            assert page.locator("#screen-pick option").all_inner_texts() == [
                f"screen 1 ({HEAD[0]}×{HEAD[1]})",
                f"screen 2 ({PLACEHOLDER[0]}×{PLACEHOLDER[1]})",
            ]
            page.locator("#screen").click()
            page.keyboard.press("a")  # evdev 30, whichever console's keyboard it went to
            wait_for(lambda: "saffron-guest: key 30" in serial.read_text(), 20, "the key")
            with page.expect_popup() as popup:
                page.locator("#side-by-side").click()
            other = popup.value
            try:
                wait_for(lambda: size(other) == HEAD, 30, "screen 1 in the other window")
                assert "screen" not in other.url.split("?", 1)[-1]
            finally:
                other.close()
            with page.expect_navigation():
                page.locator("#screen-pick").select_option("0")
            wait_for(lambda: size(page) == HEAD, 30, "screen 1's picture after picking it")
        finally:
            page.close()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(saffron.url + "ws?screen=2", timeout=10)
        assert refused.value.code == 400
        assert "there are 2" in refused.value.read().decode()


def size(page: Any) -> tuple[int, int]:
    s = page.evaluate("window.saffronStats")  # None while the page is still loading
    return (int(s["width"]), int(s["height"])) if s else (0, 0)
