"""The guest follows the viewer's window: a page with "resize guest" on, resized, makes
QEMU's virtio-vga guest change mode (its serial console says the new preferred mode) and
the canvas get pictures of the new size; with plain VGA, which cannot, the page says so
and scales. QEMU 7.2 and 10.0, Chromium. The time from a resize to the first picture of
the new size is measured (not asserted) and published."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from saffron.bench import guest as build_guest
from saffron.bench.process import free_port
from saffron.bench.qemus import Qemu
from saffron.bench.spice_gtk import SYSTEM_PYTHON
from tests.e2e.spice.test_remote_viewer import xvfb
from tests.support.artifacts import ARTIFACTS, publish
from tests.support.gtk import run_gtk_client
from tests.support.process import run_saffron

VIRTIO = [
    "-machine",
    "q35",
    "-accel",
    "tcg",
    "-nodefaults",
    "-device",
    f"virtio-vga,xres={build_guest.VIRTIO_XRES},yres={build_guest.VIRTIO_YRES}",
]
VGA = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA"]
XRESIZE = Path(__file__).resolve().parent.parent / "support" / "xresize.py"
SIZES = [(800, 600), (1024, 640), (1280, 800), (960, 720)]
"""Viewports to resize to (multiples of 8: what the guest's modes are made of)."""


def stats(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("window.saffronStats"))


def wait_for(test: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def modes(serial: Path) -> list[str]:
    return re.findall(r"saffron-guest: mode (\d+x\d+)", serial.read_text(errors="replace"))


WATCH = """([w, h]) => {
    window.__resized = null;
    const t0 = performance.now();
    const look = () => {
        const s = window.saffronStats;
        if (s.width === w && s.height === h) window.__resized = performance.now() - t0;
        else requestAnimationFrame(look);
    };
    requestAnimationFrame(look);
}"""
"""Times, in the page, from now to the first picture of w x h drawn."""


def test_the_guest_follows_the_browser_window(qemu: Qemu, browser: Any, tmp_path: Path) -> None:
    guest = build_guest.build_guest()
    serial = tmp_path / "serial.log"
    with run_saffron(
        "qemu",
        "--fps",
        "30",
        "--",
        *qemu.command(*VIRTIO, "-m", "256", *guest.qemu_args(serial)),
        timeout=60,
    ) as saffron:
        wait_for(lambda: "saffron-guest: ready" in serial.read_text(), 90, "the guest to boot")
        first = (build_guest.VIRTIO_XRES, build_guest.VIRTIO_YRES)
        assert modes(serial)[:1] == [f"{first[0]}x{first[1]}"]
        page = browser.new_page(viewport={"width": 1120, "height": 704})
        try:
            page.goto(saffron.url + "?codec=mjpeg")
            wait_for(lambda: stats(page)["width"] == first[0], 30, "the guest's first screen")
            # "resize guest" off: the guest keeps its size, the canvas is scaled
            time.sleep(1)
            assert modes(serial) == [f"{first[0]}x{first[1]}"]
            page.locator("#resize-guest").check()
            wait_for(lambda: "1120x704" in modes(serial), 30, "the guest's mode to follow")
            wait_for(lambda: stats(page)["width"] == 1120, 30, "the canvas to follow")
            assert stats(page)["height"] == 704
            times = []
            for w, h in SIZES:
                time.sleep(1)  # a user's resizes, not a flood: the server's spacing is not timed
                page.evaluate(WATCH, [w, h])
                page.set_viewport_size({"width": w, "height": h})
                wait_for(lambda: page.evaluate("window.__resized") is not None, 30, f"{w}x{h}")
                times.append(float(page.evaluate("window.__resized")))
                # the guest's console prints its mode ten times a second: it may come after
                mode = f"{w}x{h}"
                wait_for(lambda m=mode: modes(serial)[-1:] == [m], 10, f"the guest's {mode}")
            # the page hears it with its statistics, once a second
            wait_for(lambda: stats(page)["resizable"] == "yes", 5, "the page to hear it")
            page.screenshot(path=str(ARTIFACTS / f"{qemu.id}-guest-resized.png"))
        finally:
            page.close()
        log = saffron.output()
    assert "cannot follow" not in log
    median = statistics.median(times)
    publish(
        f"guest-resize-browser-{qemu.id}",
        {"resize_to_picture_ms": [round(t) for t in times], "median_ms": round(median)},
        f"QEMU {qemu.version}, virtio-vga, Chromium: window resize -> picture of the new size, "
        f"median {median:.0f} ms over {len(times)} ({', '.join(f'{t:.0f}' for t in times)})",
    )


def test_plain_vga_cannot_resize_so_the_page_scales(qemu: Qemu, browser: Any) -> None:
    """SeaBIOS's text screen on VGA: SetUIInfo is refused, the log says why once, the
    page says so and the picture keeps its size (scaled to the window)."""
    with run_saffron(
        "qemu", "--fps", "30", "--", *qemu.command(*VGA, "-m", "64"), timeout=60
    ) as saffron:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        try:
            page.goto(saffron.url + "?codec=mjpeg&resize=1")
            wait_for(lambda: stats(page)["width"] == 720, 60, "the SeaBIOS text screen")
            wait_for(lambda: stats(page)["resizable"] == "no", 10, "the page to hear it")
            assert "cannot" in page.locator("#resize-note").inner_text()
            for w, h in [(900, 600), (1100, 800)]:
                page.set_viewport_size({"width": w, "height": h})
                time.sleep(1)
            s = stats(page)
            assert (s["width"], s["height"]) == (720, 400)
            box = page.locator("#screen").bounding_box()
            assert box is not None and round(box["width"]) == 1100  # scaled to the window
        finally:
            page.close()
        log = saffron.output()
    assert log.count("cannot follow the viewers' windows") == 1, log
    assert "SetUIInfo is not supported" in log


def test_the_guest_follows_spice_gtk(qemu: Qemu, tmp_path: Path) -> None:
    """spice-gtk with "resize-guest" sends its window size to the guest's agent: Saffron
    says an agent is connected, answers its capabilities, takes the monitors config and
    asks QEMU; the surface spice-gtk gets follows."""
    guest = build_guest.build_guest()
    serial = tmp_path / "serial.log"
    port = free_port()
    vm = qemu.command(*VIRTIO, "-m", "256", *guest.qemu_args(serial))
    with run_saffron("qemu", "--spice", f"127.0.0.1:{port}", "--fps", "30", "--", *vm) as saffron:
        wait_for(lambda: "saffron-guest: ready" in serial.read_text(), 90, "the guest to boot")
        sizes = ",".join(f"{w}x{h}" for w, h in SIZES)
        report = run_gtk_client(port, "--resize", sizes, timeout=120)
        for w, h in SIZES[-1:]:
            mode = f"{w}x{h}"
            wait_for(lambda m=mode: modes(serial)[-1:] == [m], 10, f"the guest's {mode}")
        log = saffron.output()
    assert not report["errors"], report
    assert [tuple(r[:2]) for r in report["resized"]] == SIZES
    assert [f"{w}x{h}" for w, h in SIZES] == [m for m in modes(serial) if m != modes(serial)[0]]
    assert "agent data beyond" not in log
    times = [r[2] for r in report["resized"]]
    median = statistics.median(times)
    publish(
        f"guest-resize-spice-gtk-{qemu.id}",
        {"resize_to_surface_ms": [round(t) for t in times], "median_ms": round(median)},
        f"QEMU {qemu.version}, virtio-vga, spice-gtk: window size -> surface of the new size, "
        f"median {median:.0f} ms over {len(times)} (spice-gtk itself waits 1 s before it sends)",
    )


def test_the_guest_follows_remote_viewer(qemu: Qemu, tmp_path: Path) -> None:
    """remote-viewer (virt-viewer 11) under Xvfb, its window resized as a window manager
    would: the guest's mode becomes the size of its display area (the window less its
    menu and toolbar). Measured: resize -> the guest's new mode on its serial console,
    spice-gtk's own second of waiting included."""
    missing = [t for t in ("remote-viewer", "Xvfb", "xwininfo") if shutil.which(t) is None]
    assert not missing, f"not installed: {', '.join(missing)} (scripts/apt-packages.txt)"
    guest = build_guest.build_guest()
    serial = tmp_path / "serial.log"
    port = free_port()
    vm = qemu.command(*VIRTIO, "-m", "256", *guest.qemu_args(serial))
    times = []
    with (
        run_saffron("qemu", "--spice", f"127.0.0.1:{port}", "--fps", "30", "--", *vm),
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
            window = ""

            def found() -> bool:
                nonlocal window
                tree = subprocess.run(
                    ["xwininfo", "-root", "-tree", "-display", display],
                    capture_output=True,
                    text=True,
                ).stdout
                match = re.search(r"(0x[0-9a-f]+) \"QEMU [^\"]*\": \(\"remote-viewer\"", tree)
                window = match.group(1) if match else ""
                return bool(window)

            wait_for(found, 30, "remote-viewer's window")
            time.sleep(2)  # connected and drawn
            for w, h in [(800, 650), (1000, 720)]:
                seen = len(modes(serial))
                began = time.monotonic()
                subprocess.run([SYSTEM_PYTHON, str(XRESIZE), window, str(w), str(h)], env=env)
                wait_for(lambda n=seen: len(modes(serial)) > n, 20, f"a mode for {w}x{h}")
                times.append((time.monotonic() - began) * 1000)
                mw, mh = (int(v) for v in modes(serial)[-1].split("x"))
                # the display area: the window less borders, menu and toolbar
                assert w - 40 <= mw <= w and h - 160 <= mh <= h, (w, h, mw, mh)
            time.sleep(1)  # the new picture drawn, for a person to look at
            png = ARTIFACTS / f"{qemu.id}-remote-viewer-resized.png"
            shot = ["import", "-window", "root", "-display", display, str(png)]
            subprocess.run(shot, check=False)
        finally:
            viewer.terminate()
            viewer.wait(10)
    median = statistics.median(times)
    publish(
        f"guest-resize-remote-viewer-{qemu.id}",
        {"resize_to_guest_mode_ms": [round(t) for t in times], "median_ms": round(median)},
        f"QEMU {qemu.version}, virtio-vga, remote-viewer: window resized -> the guest's new "
        f"mode, median {median:.0f} ms over {len(times)} (spice-gtk waits about 1 s itself)",
    )
