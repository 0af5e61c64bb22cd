"""WHIP to a real media server: Saffron publishes the pattern to Debian's Janus through
simple-whip-server, and Chromium watches it through Janus's own JavaScript.

All of it runs in a network namespace the module makes (saffron.bench.whip.contained:
lo and an interface d0 with 10.203.0.1, nothing connected outside), with the test's own
thread inside it: ICE stacks leave loopback out, and outside a namespace the media
would go over the host's own address. The test starts Janus and simple-whip-server
(saffron.bench.whip.JanusWhip), a Chromium of its own, and Saffron in-process
(tests/support/harness.py: its loop thread starts inside too), so its WHIP viewer's
counters can be read beside what the page decoded. A real VM is published the same way by
``saffron qemu`` as a subprocess of the test's thread, so inside the namespace too.
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

from saffron.bench import guest as build_guest
from saffron.bench import netns
from saffron.bench.qemus import Qemu
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
from tests.support.process import run_saffron
from tests.support.qemu import wait_serial
from tests.support.wait import wait_until

FPS = 30
SIZE = (640, 360)
BASE = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA", "-m", "256"]

KEY_A = 30
"""evdev KEY_A: the guest paints its key strip B=30, G=0x5A, R=0xA5 when it arrives."""


@pytest.fixture(scope="module")
def guest() -> build_guest.Guest:
    """The test guest, built before the namespace is entered: its first build downloads
    Debian packages, and nothing inside the namespace reaches out."""
    return build_guest.build_guest()


@pytest.fixture(scope="module")
def namespace(guest: build_guest.Guest) -> Iterator[Namespace]:
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


def janus_pixel(page: Any, y: int, x0: int, x1: int) -> list[float]:
    """The mean R, G, B of row ``y`` from ``x0`` to ``x1`` of the last frame the page
    drew from Janus's video (its hidden canvas holds every frame it presented)."""
    rgb: list[float] = page.evaluate(
        """([y, x0, x1]) => {
        const c = document.getElementById('c').getContext('2d');
        const d = c.getImageData(x0, y, x1 - x0, 1).data;
        const s = [0, 0, 0];
        for (let i = 0; i < d.length; i += 4) { s[0] += d[i]; s[1] += d[i+1]; s[2] += d[i+2]; }
        return s.map(v => v / (d.length / 4));
    }""",
        [y, x0, x1],
    )
    return rgb


@pytest.mark.parametrize("qemu", ["7.2"], indirect=True, ids=["qemu7.2"])
def test_chromium_watches_a_vm_through_janus(
    namespace: Namespace,
    janus: JanusWhip,
    browser: Any,
    qemu: Qemu,
    guest: build_guest.Guest,
    tmp_path: Path,
) -> None:
    """``saffron qemu --publish-whip``: the test guest's screen reaches Chromium through
    Janus at the guest's size, and a key pressed on Saffron's own page shows there as the
    guest's key strip in that key's colour. One QEMU is enough: what is tested is the
    publish, which does not depend on how the picture came out of QEMU."""
    serial = tmp_path / "serial.log"
    with (
        run_saffron(
            "qemu",
            "--fps",
            str(FPS),
            "--publish-whip",
            janus.whip_url,
            "--whip-token",
            TOKEN,
            "--",
            *qemu.command(*BASE, *guest.qemu_args(serial)),
            timeout=60,
            log_name="whip-janus-vm-saffron.log",
        ) as s,
        ViewerPage(tmp_path / "page", janus.janus_ws) as vp,
    ):
        wait_serial(serial, "saffron-guest: ready", 90)
        page, own = browser.new_page(), browser.new_page()
        try:
            page.goto(vp.url)
            size = (build_guest.WIDTH, build_guest.HEIGHT)

            def watching() -> bool:
                st = page_state(page)
                return st["presented"] > 0 and (st["width"], st["height"]) == size

            assert wait_until(watching, 60, step=0.2), (page_state(page), janus.logs(), s.output())
            assert "publishing" in s.output() and "over WHIP" in s.output(), s.output()

            # Saffron's own page sends the key; the guest paints its strip; Janus's copy shows it.
            own.goto(s.url + "?codec=mjpeg")
            assert wait_until(
                lambda: own.evaluate("window.saffronStats.width") == build_guest.WIDTH, 30
            )
            own.locator("#screen").focus()
            row = build_guest.KEY_ROW + build_guest.KEY_ROWS // 2
            g_mark, r_mark = build_guest.KEY_MARK
            want = (r_mark, g_mark, KEY_A)
            last: list[float] = []

            def key_shown() -> bool:
                nonlocal last
                last = janus_pixel(page, row, 48, build_guest.WIDTH - 48)
                return all(abs(got - w) < 16 for got, w in zip(last, want, strict=True))

            assert not key_shown(), last  # not there before the key
            own.keyboard.press("KeyA")
            wait_serial(serial, f"key {KEY_A}", 20)
            assert wait_until(key_shown, 20, step=0.2), (last, want)

            # The guest's band keeps moving: frames keep coming through Janus.
            before = page_state(page)["presented"]
            assert wait_until(lambda: page_state(page)["presented"] > before + 5, 20, step=0.2)
            state = page_state(page)
            assert state["errors"] == [], state["errors"]

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "whip-janus-vm.png"
            page.locator("video").screenshot(path=str(shot))
            publish(
                "whip_janus_vm",
                {
                    "frames": state["presented"],
                    "key_rgb": [round(v) for v in last],
                    "screenshot": str(shot),
                },
                f"WHIP via Janus: the guest's {size[0]}x{size[1]} screen in Chromium, "
                f"key strip {[round(v) for v in last]} for KEY_A",
            )
        finally:
            own.close()
            page.close()
