"""Sharp still pictures in Chromium: once the demo stops after a drag, the page's canvas
is the source frame exactly (PSNR >= 45 dB where the server chose JPEG tiles), for every
codec the page decodes; moving again goes back to video without stale tiles."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from saffron.sources.demo import DemoSource
from tests.support.artifacts import ARTIFACTS
from tests.support.canvas import psnr, read_canvas
from tests.support.harness import Running, saffron
from tests.support.wait import wait_until

SIZE = (960, 540)
CODECS = ["h264", "vp8", "vp9", "av1", "mjpeg"]
LOSSY_FLOOR_DB = 45.0
TIMEOUT = 30.0
"""Generous: a safety net for slow machines, not a speed the test asserts."""


@pytest.fixture(scope="module")
def still_demo() -> Any:
    producer = functools.partial(DemoSource, still=True)
    with saffron(producer=producer, size=SIZE, web=("127.0.0.1", 0), level=20) as run:  # type: ignore[arg-type]
        yield run


def source(run: Running) -> np.ndarray:
    frame = run.server.display.last_frame
    assert frame is not None
    return np.ascontiguousarray(frame.pixels[..., 2::-1])


def drag(page: Any, steps: int = 12) -> None:
    box = page.locator("#screen").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(steps):
        page.mouse.move(x + 9 * i, y + 4 * i)
        page.wait_for_timeout(30)
    page.mouse.up()


def sharp_enough(page: Any, run: Running, jpeg_before: int) -> tuple[bool, float]:
    """Whether the canvas is the source exactly, or within the lossy floor when the
    server chose JPEG tiles since ``jpeg_before``."""
    value = psnr(read_canvas(page), source(run))
    jpeg = page.evaluate("window.saffronStats.stillJpeg") > jpeg_before
    return value == float("inf") or (jpeg and value >= LOSSY_FLOOR_DB), value


@pytest.mark.parametrize("codec", CODECS)
def test_still_demo_is_exact_after_a_drag(browser: Any, still_demo: Running, codec: str) -> None:
    web = still_demo.server.web
    assert web is not None and codec in web.codecs, f"no {codec} encoder on this host"
    page = browser.new_page(viewport={"width": SIZE[0], "height": SIZE[1]})
    try:
        page.goto(f"http://127.0.0.1:{still_demo.web_port}/?codec={codec}")
        page.wait_for_function("() => window.saffronStats.framesDecoded > 0", timeout=30000)
        shown_codec = page.evaluate("window.saffronStats.codec")
        assert shown_codec == codec, f"this Chromium does not decode {codec}"
        for round_ in range(2):
            jpeg = page.evaluate("window.saffronStats.stillJpeg")
            shown = page.evaluate("window.saffronStats.framesDecoded")
            drag(page)
            page.wait_for_function(
                f"() => window.saffronStats.framesDecoded > {shown}", timeout=30000
            )
            last: list[float] = [0.0]

            def sharp(jpeg: int = jpeg, last: list[float] = last) -> bool:
                # A tile of the old picture left over the video would never let this hold.
                ok, last[0] = sharp_enough(page, still_demo, jpeg)
                return ok

            assert wait_until(sharp, TIMEOUT, step=0.1), (
                f"{codec}, drag {round_ + 1}: the canvas stayed at {last[0]:.1f} dB"
            )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"sharp-demo-{codec}.png"))
    finally:
        page.close()
