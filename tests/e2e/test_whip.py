"""WHIP to a real media server: Saffron publishes the pattern to Debian's Janus through
simple-whip-server, and Chromium watches it through Janus's own JavaScript.

The test starts Janus and simple-whip-server (saffron.bench.whip.JanusWhip) and stops
them; Saffron runs in-process (tests/support/harness.py), so its WHIP viewer's counters
can be read beside what the page decoded.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saffron.bench.whip import (
    TOKEN,
    JanusWhip,
    ViewerPage,
    missing,
    page_state,
    take_ages,
    wait_watching,
)
from tests.support.artifacts import ARTIFACTS, publish
from tests.support.harness import saffron
from tests.support.wait import wait_until

FPS = 30
SIZE = (640, 360)

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


@pytest.fixture(scope="module")
def janus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JanusWhip]:
    with JanusWhip(tmp_path_factory.mktemp("janus")) as j:
        yield j


def test_chromium_watches_saffron_through_janus(
    janus: JanusWhip, browser: Any, tmp_path: Path
) -> None:
    with (
        saffron(size=SIZE, web=None, publish_whip=janus.whip_url, whip_token=TOKEN) as s,
        ViewerPage(tmp_path / "page", janus.janus_ws) as vp,
    ):
        page = browser.new_page()
        try:
            page.goto(vp.url)
            wait_watching(page)
            whip = s.server.whip
            assert whip is not None
            viewer = whip.viewer
            assert viewer is not None and viewer.connected, janus.logs()

            # Frames decoded grow, at the rate Saffron sends them to the media server.
            time.sleep(1)
            take_ages(page)
            before, sent0, t0 = page_state(page), viewer.sent, time.monotonic()
            time.sleep(4)
            after, sent1, span = page_state(page), viewer.sent, time.monotonic() - t0
            decoded, sent = after["presented"] - before["presented"], sent1 - sent0
            assert decoded > 0 and sent > 0, (before, after, janus.logs())
            assert decoded >= 0.8 * sent, (decoded, sent)

            # The picture is not blank, and its capture stamp reads back.
            assert after["blank"] is False, after
            assert (after["width"], after["height"]) == SIZE
            ages = take_ages(page)
            assert ages, after
            assert after["errors"] == [], after["errors"]

            # RTCP from Janus reached the viewer: REMB (the room's cap) sets its rate.
            assert wait_until(lambda: viewer.remb_reports > 0, 15), janus.logs()
            assert viewer.rate_kbps() is not None

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "whip-janus-chromium.png"
            page.locator("video").screenshot(path=str(shot))
            publish(
                "whip_janus",
                {
                    "decoded_fps": round(decoded / span, 1),
                    "sent_fps": round(sent / span, 1),
                    "source_fps": FPS,
                    "age_median_ms": round(statistics.median(ages), 1),
                    "remb_kbps": viewer.rate_kbps(),
                    "keyframe_requests": viewer.keyframe_requests,
                    "screenshot": str(shot),
                },
                f"WHIP via Janus: {decoded / span:.1f} fps decoded in Chromium "
                f"(sent {sent / span:.1f}), frame age median {statistics.median(ages):.0f} ms",
            )
        finally:
            page.close()
        records = s.records
    # Saffron stopped: it DELETEd its WHIP resource.
    whip_log = [text for _, name, text in records.since(0) if name == "saffron.whip"]
    assert any("deleted" in text for text in whip_log), whip_log


def test_a_publish_that_fails_is_retried_and_recovers(tmp_path: Path) -> None:
    """Nothing listens yet: Saffron says so and tries again; once Janus is up it publishes."""
    later = JanusWhip(tmp_path)
    with saffron(size=SIZE, web=None, publish_whip=later.whip_url, whip_token=TOKEN) as s:
        whip = s.server.whip
        assert whip is not None

        def said(text: str) -> bool:
            return any(text in t for t in s.records.texts(logging.WARNING))

        assert wait_until(lambda: said("cannot reach the media server"), 30)
        assert said("trying again in 1 s")
        with later:
            assert wait_until(lambda: whip.publishes == 1, 60), later.logs()
            assert whip.failures >= 1
