"""Debian's spice-html5 0.3.0 in Chromium, straight to Saffron: no websockify.

The page comes from /usr/share/spice-html5 through a small aiohttp app, which also
carries SPICE on /spice (the web server's path); the other case connects the page to
the SPICE port itself, where Saffron answers the WebSocket upgrade.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from tests.support.artifacts import ARTIFACTS
from tests.support.harness import SpiceRunning, spice_server
from tests.support.wait import wait_until

HTML5 = Path("/usr/share/spice-html5")

# CI installs spice-html5 (scripts/apt-packages.txt): missing, these tests fail, not skip.


@contextmanager
def web_server(srv: SpiceRunning) -> Iterator[int]:
    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/spice", srv.server.aiohttp_handler)
        app.router.add_static("/", HTML5)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = srv.run(start())
    try:
        yield int(runner.addresses[0][1])
    finally:
        srv.run(runner.cleanup())


CANVAS = """() => {
    const c = document.getElementById('spice_surface_0');
    if (!c) return null;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let s = '';
    for (let i = 0; i < d.length; i += 0x8000) {
        s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
    }
    return {w: c.width, h: c.height, b64: btoa(s)};
}"""

VIDEO = """() => {
    const v = document.querySelector('#spice-screen video');
    if (!v) return null;
    const q = v.getVideoPlaybackQuality();
    return {w: v.videoWidth, h: v.videoHeight, frames: q.totalVideoFrames, t: v.currentTime};
}"""


def canvas(page: Any) -> np.ndarray | None:
    data = page.evaluate(CANVAS)
    if data is None:
        return None
    raw = base64.b64decode(data["b64"])
    return np.frombuffer(raw, np.uint8).reshape(data["h"], data["w"], 4)


@pytest.mark.parametrize(
    ("codec", "via", "password"),
    [("mjpeg", "aiohttp", "pw"), ("vp8", "port", None)],
)
def test_spice_html5_shows_the_scene(
    browser: Any, codec: str, via: str, password: str | None
) -> None:
    with (
        spice_server(fps=30, codecs=[codec], password=password) as (srv, scene),
        web_server(srv) as web_port,
    ):
        assert scene is not None
        port = web_port if via == "aiohttp" else srv.port
        page = browser.new_page(viewport={"width": 800, "height": 640})
        logs: list[str] = []
        page.on("console", lambda m: logs.append(m.text))
        try:
            query = f"host=127.0.0.1&port={port}&path=spice"
            if password is not None:
                query += f"&password={password}"
            page.goto(f"http://127.0.0.1:{web_port}/spice_auto.html?{query}")
            page.wait_for_function(
                "() => { const c = document.getElementById('spice_surface_0');"
                " return c && c.width === 640 && c.height === 480; }",
                timeout=30_000,
            )
            assert wait_until(lambda: srv.codecs_sent.get(codec, 0) > 30, timeout=30)
            if codec == "vp8":
                video = page.wait_for_function(
                    f"() => {{ const v = ({VIDEO})(); return v && v.frames > 20 ? v : null; }}",
                    timeout=30_000,
                ).json_value()
                assert (video["w"], video["h"]) == (640, 480)
            else:
                page.wait_for_timeout(1000)
                px = canvas(page)
                assert px is not None and px[..., :3].std() > 20, "the canvas is blank"
            page.screenshot(path=str(ARTIFACTS / f"spice-html5-{codec}-moving.png"))
            # Still: the page gets the picture losslessly on its canvas (for VP8 the
            # <video> above it is taken away first).
            scene.pause()

            def exact() -> bool:
                frame = srv.display.last_frame  # the producer may finish one more frame
                px = canvas(page)
                if px is None or frame is None:
                    return False
                return np.array_equal(px[..., :3], frame.pixels[..., 2::-1])  # BGRX -> RGB

            if not wait_until(exact, timeout=15, step=0.5):
                px, frame = canvas(page), srv.display.last_frame
                assert px is not None and frame is not None
                bad = np.any(px[..., :3] != frame.pixels[..., 2::-1], axis=2)
                ys, xs = np.nonzero(bad)
                stats = srv.call(lambda: srv.server.stats())
                page.screenshot(path=str(ARTIFACTS / f"spice-html5-{codec}-failed.png"))
                raise AssertionError(
                    f"{bad.sum()} pixels differ in x {xs.min()}-{xs.max()} y {ys.min()}-{ys.max()}"
                    f"; server: {stats}; page: {logs[-8:]}"
                )
            assert page.evaluate(VIDEO) is None
            page.screenshot(path=str(ARTIFACTS / f"spice-html5-{codec}-still.png"))
        finally:
            page.close()


def test_spice_html5_wrong_password(browser: Any) -> None:
    with (
        spice_server(fps=30, codecs=["mjpeg"], password="right") as (srv, _),
        web_server(srv) as web_port,
    ):
        page = browser.new_page()
        try:
            page.goto(
                f"http://127.0.0.1:{web_port}/spice_auto.html?host=127.0.0.1&port={srv.port}"
                "&password=wrong"
            )
            page.wait_for_timeout(3000)
            assert page.evaluate("document.getElementById('spice_surface_0')") is None
            assert not srv.server.sessions
        finally:
            page.close()
