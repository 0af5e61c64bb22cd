"""WHIP to a real media server: Saffron publishes the pattern to Debian's Janus through
simple-whip-server, and Chromium watches it through Janus's own JavaScript.

All of it runs in a network namespace the module makes (saffron.bench.whip.contained:
lo and an interface d0 with 10.203.0.1, nothing connected outside), with the test's own
thread inside it: ICE stacks leave loopback out, and outside a namespace the media
would go over the host's own address. The test starts Janus and simple-whip-server
(saffron.bench.whip.JanusWhip), a Chromium of its own, and Saffron in-process
(tests/support/harness.py: its loop thread starts inside too), so its WHIP viewer's
counters can be read beside what the page decoded.
"""

from __future__ import annotations

import ipaddress
import logging
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saffron.bench import netns
from saffron.bench.whip import (
    TOKEN,
    JanusWhip,
    Namespace,
    ViewerPage,
    contained,
    ice_pairs,
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


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    """The module's namespace, this thread inside it until the module is done. What this
    needs is installed by ``make setup``: missing, the tests fail and say what, not skip."""
    for why in (missing(), netns.missing()):
        if why is not None:
            pytest.fail(f"cannot run the WHIP test: {why}")
    with contained() as ns:
        yield ns


@pytest.fixture(scope="module")
def janus(namespace: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JanusWhip]:
    with JanusWhip(tmp_path_factory.mktemp("janus")) as j:
        yield j


@pytest.fixture(scope="module")
def browser(namespace: Namespace) -> Iterator[object]:
    """Chromium inside the namespace (Playwright's driver, and the browser it starts,
    are children of this thread); conftest's would be outside."""
    from playwright.sync_api import sync_playwright

    from saffron.bench.chromium import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def sockets_outside(namespace: Namespace) -> list[str]:
    """The TCP and UDP sockets of this namespace on an address that is neither loopback
    nor the namespace's own (nor a wildcard or multicast): there should be none."""
    out = subprocess.run(["ss", "-tunaH"], capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        for field in line.split()[4:6]:
            host = field.rsplit(":", 1)[0].strip("[]").split("%")[0]
            if host == "*" or host == namespace.address:
                continue
            ip = ipaddress.ip_address(host)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not (ip.is_loopback or ip.is_unspecified or ip.is_multicast):
                bad.append(line)
    return bad


def test_chromium_watches_saffron_through_janus(
    namespace: Namespace, janus: JanusWhip, browser: Any, tmp_path: Path
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

            # Every packet stayed in the namespace: the peers met on its own address.
            # Saffron's candidates and Janus's, and the pairs Chromium uses with Janus.
            ours = {c.rsplit(":", 1)[0] for c in viewer.ice_local + viewer.ice_remote}
            assert ours == {namespace.address}, (viewer.ice_local, viewer.ice_remote)
            pairs = ice_pairs(page)  # Chromium hides its own address (""): Janus's is there
            assert pairs and {a for pair in pairs for a in pair} <= {namespace.address, ""}, pairs
            assert {remote for _, remote in pairs} == {namespace.address}, pairs
            assert sockets_outside(namespace) == []

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


def test_a_publish_that_fails_is_retried_and_recovers(namespace: Namespace, tmp_path: Path) -> None:
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
