"""A real VM in a real browser: `saffron qemu` and attach mode, with QEMU 7.2 and 10.0 and
Chromium."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from saffron.bench import guest as build_guest
from saffron.bench.qemus import Qemu
from saffron.sources.qemu import start_qemu
from tests.support.artifacts import ARTIFACTS, publish
from tests.support.canvas import psnr, read_canvas
from tests.support.process import run_saffron
from tests.support.qemu import qmp_screendump
from tests.support.wait import wait_until

BASE = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA"]


def canvas(page: Any, rows: slice | None = None, step: int = 4) -> np.ndarray:
    """The page's canvas (or some rows of it) as RGBA, every ``step``-th pixel each way."""
    data = page.evaluate(
        """([y0, y1, step]) => {
        const c = document.getElementById('screen');
        const h = Math.min(y1 < 0 ? c.height : y1, c.height) - y0;
        const d = c.getContext('2d').getImageData(0, y0, c.width, h).data;
        const out = [];
        for (let y = 0; y < h; y += step)
            for (let x = 0; x < c.width; x += step) {
                const i = (y * c.width + x) * 4;
                out.push(d[i], d[i + 1], d[i + 2], d[i + 3]);
            }
        return {w: Math.ceil(c.width / step), h: Math.ceil(h / step), px: out};
    }""",
        [rows.start or 0 if rows else 0, rows.stop if rows else -1, step],
    )
    return np.array(data["px"], np.uint8).reshape(data["h"], data["w"], 4)


def stats(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("window.saffronStats"))


def wait_for(test: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_seabios_text_in_the_browser_and_exit_status(qemu: Qemu, browser: Any) -> None:
    """No disk: SeaBIOS's text screen at its own size, the VM's name as the title;
    QEMU killed -> Saffron exits with QEMU's status."""
    with run_saffron(
        "qemu",
        "--fps",
        "30",
        "--",
        *qemu.command(*BASE, "-m", "64", "-name", "e2e-bios"),
        timeout=60,
    ) as saffron:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.goto(saffron.url + "?codec=mjpeg")
            wait_for(
                lambda: stats(page)["framesDecoded"] > 0 and stats(page)["width"] == 720,
                60,
                "the SeaBIOS text screen",
            )
            s = stats(page)
            assert (s["width"], s["height"]) == (720, 400)
            assert page.title().startswith("e2e-bios")
            px = canvas(page)[..., :3].astype(int)
            lit = (px.max(axis=2) > 128).mean()
            assert 0.001 < lit < 0.5, f"expected light text on dark, {lit:.2%} lit"
            page.screenshot(path=str(ARTIFACTS / f"{qemu.id}-seabios-browser.png"))

            qemu_pid = int(
                subprocess.check_output(["pgrep", "-f", "-n", "e2e-bios"], text=True).split()[0]
            )
            os.kill(qemu_pid, signal.SIGKILL)
            saffron.proc.wait(30)
            assert saffron.proc.returncode == 128 + signal.SIGKILL
            assert "QEMU exited with status 137" in saffron.output()
            wait_for(
                lambda: "Disconnected" in page.locator("#status").inner_text(),
                10,
                "the page to say the VM is gone",
            )
        finally:
            page.close()


def test_guest_moves_and_a_browser_key_reaches_it(qemu: Qemu, browser: Any, tmp_path: Path) -> None:
    guest = build_guest.build_guest()
    serial = tmp_path / "serial.log"
    with run_saffron(
        "qemu",
        "--fps",
        "30",
        "--",
        *qemu.command(*BASE, "-m", "256", *guest.qemu_args(serial)),
        timeout=60,
    ) as saffron:
        wait_for(lambda: "saffron-guest: ready" in serial.read_text(), 90, "the guest to boot")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(saffron.url + "?codec=mjpeg")
            wait_for(lambda: stats(page)["width"] == build_guest.WIDTH, 30, "the guest's screen")
            assert stats(page)["height"] == build_guest.HEIGHT
            band = slice(0, build_guest.BAND_ROWS_MAX)
            first = canvas(page, band).astype(int)
            wait_for(
                lambda: np.abs(canvas(page, band).astype(int) - first).mean() > 1,
                20,
                "the guest's band to move",
            )

            page.locator("#screen").focus()
            page.keyboard.press("KeyA")  # evdev KEY_A is 30
            row = build_guest.KEY_ROW + build_guest.KEY_ROWS // 2
            g_mark, r_mark = build_guest.KEY_MARK

            def key_shown() -> bool:
                strip = canvas(page, slice(row, row + 1), step=8)[0, 12:112, :3]
                r, g, b = strip.astype(int).mean(axis=0)
                return abs(r - r_mark) < 16 and abs(g - g_mark) < 16 and abs(b - 30) < 16

            wait_for(key_shown, 20, "the key strip for KEY_A in the browser")
            assert "key 30" in serial.read_text()
            page.screenshot(path=str(ARTIFACTS / f"{qemu.id}-guest-browser.png"))
        finally:
            page.close()


def test_attach_mode_survives_a_qemu_restart(qemu: Qemu, browser: Any) -> None:
    """`serve --source qemu` outlives the VM: "waiting for the VM", then the screen again."""
    vm = start_qemu(qemu.command(*BASE, "-m", "64", "-name", "first"))
    try:
        with run_saffron(
            "serve", "--source", "qemu", "--dbus-address", vm.address, "--fps", "30"
        ) as saffron:
            page = browser.new_page()
            try:
                page.goto(saffron.url + "?codec=mjpeg")
                wait_for(lambda: stats(page)["framesDecoded"] > 0, 60, "the first VM")
                vm.process.kill()  # the bus stays; the VM goes
                vm.process.wait(10)
                wait_for(
                    lambda: "waiting for the VM" in page.locator("#status").inner_text(),
                    20,
                    "the page to say it waits",
                )
                # A page joining now is sent the VM's last picture (to it and, as a
                # keyframe of the same stream, to the first page): that old picture
                # must not clear either page's "waiting".
                late = browser.new_page()
                try:
                    late.goto(saffron.url + "?codec=mjpeg")
                    wait_for(lambda: stats(late)["framesDecoded"] > 0, 20, "the last picture")
                    assert "waiting" in late.locator("#status").inner_text().lower()
                finally:
                    late.close()
                assert "waiting for the VM" in page.locator("#status").inner_text()
                before = stats(page)["framesDecoded"]
                vm2 = start_qemu(
                    qemu.command(*BASE, "-m", "64", "-name", "second"), dbus_address=vm.address
                )
                try:
                    wait_for(
                        lambda: stats(page)["framesDecoded"] > before,
                        60,
                        "frames from the restarted VM on the same page",
                    )
                    assert page.locator("#status").inner_text() == ""
                    assert saffron.proc.poll() is None
                finally:
                    vm2.stop()
            finally:
                page.close()
    finally:
        vm.stop()


SHARP_CODECS = ["h264", "vp8", "vp9", "av1", "mjpeg"]


def test_seabios_text_is_sharp_in_the_browser(qemu: Qemu, browser: Any, tmp_path: Path) -> None:
    """SeaBIOS's text screen, still: the page's canvas becomes QEMU's own screendump
    exactly (outside the blinking cursor), whatever the video codec; without the still
    tiles (``?sharp=0``) it stays lossy. Before/after PSNR in ARTIFACTS/sharp-seabios.json."""
    qmp = tmp_path / "qmp.sock"
    dump = tmp_path / "screen.ppm"

    def screen() -> np.ndarray:
        qmp_screendump(qmp, dump)
        with Image.open(dump) as image:
            return np.asarray(image.convert("RGB"))

    with run_saffron(
        "qemu", "--fps", "30", "--", *qemu.command(*BASE, "-m", "64", "-name", "e2e-sharp"),
        "-qmp", f"unix:{qmp},server=on,wait=off", timeout=60,
    ) as saffron:  # fmt: skip
        # Wait for SeaBIOS to give up booting: then only the cursor blinks.
        shots: list[np.ndarray] = []

        def settled() -> bool:
            shots.append(screen())
            del shots[:-6]
            if len(shots) < 6 or shots[-1].shape != (400, 720, 3):
                return False
            changed = np.zeros(shots[-1].shape[:2], bool)
            for a, b in itertools.pairwise(shots):
                changed |= (a != b).any(axis=2)
            return int(changed.sum()) <= 16 * 9

        assert wait_until(settled, 90, step=0.3), "SeaBIOS's screen never settled"
        blink = np.zeros((400, 720), bool)
        for a, b in itertools.pairwise(shots):
            blink |= (a != b).any(axis=2)
        keep = ~blink

        figures: dict[str, dict[str, float]] = {}
        for codec in SHARP_CODECS:
            row: dict[str, float] = {}
            for sharp in ("0", "1"):
                page = browser.new_page(viewport={"width": 720, "height": 400})
                try:
                    page.goto(saffron.url + f"?codec={codec}&sharp={sharp}")
                    wait_for(
                        lambda page=page: stats(page)["width"] == 720, 60, f"{codec}: the screen"
                    )
                    if stats(page)["codec"] != codec:
                        break  # this Chromium does not decode it (or no encoder here)
                    last = [0.0]

                    def exact(last: list[float] = last, page: Any = page) -> bool:
                        shown = read_canvas(page)
                        last[0] = psnr(shown[keep], screen()[keep])
                        return last[0] == float("inf")

                    if sharp == "0":
                        page.wait_for_timeout(2000)  # what video alone leaves, not a speed
                        exact()
                        row["video_db"] = round(last[0], 2)
                        continue
                    assert wait_until(exact, 30, step=0.25), (
                        f"{codec}: the text stayed at {last[0]:.1f} dB"
                    )
                    row["sharp_db"] = last[0]
                    page.locator("#stats-toggle").click()  # the text alone at 1:1
                    page.screenshot(path=str(ARTIFACTS / f"qemu-seabios-sharp-{codec}.png"))
                    assert stats(page)["backend"], "the stats box names no encoder"
                finally:
                    page.close()
            if row:
                figures[codec] = row
        assert "mjpeg" in figures and "sharp_db" in figures["mjpeg"]
        publish(
            "sharp-seabios",
            {"psnr_db": figures},
            "SeaBIOS text, canvas vs screendump (dB, video -> sharp): "
            + ", ".join(
                f"{c} {r.get('video_db')} -> {r.get('sharp_db')}" for c, r in figures.items()
            ),
        )
