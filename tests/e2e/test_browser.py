"""The whole path: `saffron serve` to Debian's Chromium through Playwright."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saffron.bench.process import free_port
from tests.support.artifacts import ARTIFACTS
from tests.support.process import run_saffron

FPS = 30  # two cores carry Saffron and Chromium's software decoder at this rate


def canvas_pixels(page: Any) -> np.ndarray:
    """What the page's canvas shows, read back from the canvas itself."""
    data = page.evaluate(
        """() => {
        const c = document.getElementById('screen');
        const ctx = c.getContext('2d');
        const d = ctx.getImageData(0, 0, c.width, c.height);
        return {w: c.width, h: c.height, px: Array.from(d.data.filter((_, i) => i % 16 === 0))};
    }"""
    )
    px = np.array(data["px"], np.uint8)
    return px


def csp_violations(page: Any) -> list[str]:
    """Console lines in which Chromium refused something under the page's
    Content-Security-Policy, filled in as the page runs."""
    seen: list[str] = []
    page.on(
        "console",
        lambda msg: seen.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return seen


def wait_stats(page: Any, predicate: str, timeout: float = 30) -> dict[str, Any]:
    page.wait_for_function(f"() => window.saffronStats && ({predicate})", timeout=timeout * 1000)
    return dict(page.evaluate("window.saffronStats"))


@pytest.mark.parametrize("codec", ["h264", "vp8", "mjpeg"])
def test_browser_shows_the_demo(browser: Any, codec: str) -> None:
    # 960x540 leaves the two cores room for Chromium's software decoder beside the encoder.
    with run_saffron("serve", "--fps", str(FPS), "--size", "960x540") as saffron:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        refused = csp_violations(page)
        try:
            page.goto(saffron.url + f"?codec={codec}")
            stats = wait_stats(page, "window.saffronStats.framesDecoded > 10")
            assert stats["codec"] == codec
            assert (stats["width"], stats["height"]) == (960, 540)
            # Frames decoded against frames the producer made, over the same span.
            made0, shown0 = saffron.metric("saffron_producer_frames_total"), stats["framesDecoded"]
            page.wait_for_timeout(4000)
            made1 = saffron.metric("saffron_producer_frames_total")
            shown1 = page.evaluate("window.saffronStats.framesDecoded")
            ratio = (shown1 - shown0) / max(made1 - made0, 1)
            assert ratio > 0.7, f"the page showed {ratio:.0%} of the producer's frames"

            px = canvas_pixels(page)
            assert px.std() > 10, "the canvas is blank or one colour"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"browser-{codec}.png"))
            stats = page.evaluate("window.saffronStats")
            assert stats["bitrateKbps"] > 0 and stats["latencyMs"] > 0
            assert page.locator("#s-codec").inner_text() == codec
            assert not refused, refused
        finally:
            page.close()


def test_sign_in_watch_and_sign_out_under_the_csp(browser: Any, tmp_path: Path) -> None:
    """The login form, the page and its sign-out button work with inline script and
    style forbidden; signing out ends the page's session and shows the form again."""
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    with run_saffron("serve", "--fps", str(FPS), "--password-file", str(password)) as saffron:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        refused = csp_violations(page)
        try:
            page.goto(saffron.url + "?codec=mjpeg")
            page.fill("input[name=password]", "correct horse")
            page.click("button[type=submit]")
            wait_stats(page, "window.saffronStats.framesDecoded > 5")
            page.click("#signout button")
            page.wait_for_selector("input[name=password]", timeout=10000)
            assert "signed out" in saffron.output()
            assert not refused, refused
        finally:
            page.close()


def wait_for_change(page: Any, before: np.ndarray, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        if np.abs(canvas_pixels(page).astype(int) - before.astype(int)).mean() > 2:
            return True
    return False


def test_mouse_drag_turns_the_scene_and_a_key_recolours_it(browser: Any) -> None:
    """With --still the demo moves only when input moves it, so any change is the input's."""
    with run_saffron("serve", "--still", "--fps", str(FPS)) as saffron:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        try:
            # Without the sharp refresh: its tiles, drawn whenever they arrive, change the
            # canvas of a still picture too (test_sharp.py tests them).
            page.goto(saffron.url + "?codec=h264&sharp=0")
            wait_stats(page, "window.saffronStats.framesDecoded >= 1")
            page.wait_for_timeout(500)
            still = canvas_pixels(page)
            page.wait_for_timeout(500)
            assert np.array_equal(still, canvas_pixels(page)), "the still demo should not move"

            box = page.locator("#screen").bounding_box()
            assert box is not None
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            for i in range(1, 21):
                page.mouse.move(cx + i * 15, cy + i * 4)
            page.mouse.up()
            assert wait_for_change(page, still), "dragging did not turn the scene"
            page.screenshot(path=str(ARTIFACTS / "browser-dragged.png"))

            turned = canvas_pixels(page)
            page.keyboard.press("KeyC")
            assert wait_for_change(page, turned), "a key press did not change the colour"
            assert "web viewer 127.0.0.1 watches h264" in saffron.output()
        finally:
            page.close()


def test_spice_html5_from_the_web_port_shows_the_demo(browser: Any) -> None:
    """The URL `saffron serve --spice` prints: Debian's spice-html5 page, served by the web
    port, speaking SPICE over a WebSocket on the same port (no websockify)."""
    spice = free_port()
    with run_saffron("serve", "--spice", f"127.0.0.1:{spice}", "--fps", str(FPS)) as saffron:
        url = next(
            line.split(" at ", 1)[1].strip()
            for line in saffron.output().splitlines()
            if "spice-html5 at" in line
        )
        page = browser.new_page(viewport={"width": 1300, "height": 800})
        try:
            page.goto(url)
            page.wait_for_function(
                """() => { const c = document.querySelector('#spice-screen canvas');
                           return c && c.width === 1280 && c.height === 720; }""",
                timeout=30000,
            )
            # VP8 plays in a <video> that spice-html5 lays over its canvas; MJPEG and
            # still refreshes draw on the canvas. Either way the scene must be moving.
            shown = """() => {
                const v = document.querySelector('#spice-screen video');
                if (v && v.videoWidth > 0) return ['video', v.currentTime];
                const c = document.querySelector('#spice-screen canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let sum = 0; for (let i = 0; i < d.length; i += 4096) sum += d[i] + d[i + 1];
                return ['canvas', sum];
            }"""
            page.wait_for_function(f"() => ({shown})()[1] > 0", timeout=30000)
            kind, first = page.evaluate(shown)
            page.wait_for_timeout(2000)
            kind2, second = page.evaluate(shown)
            assert kind == kind2 and second != first, (kind, first, kind2, second)
            if kind == "video":
                assert second > first, "the VP8 video is not playing"
            page.screenshot(path=str(ARTIFACTS / "spice-html5-demo.png"))
        finally:
            page.close()
