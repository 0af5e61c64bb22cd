"""Many VMs on one host behind one reverse proxy: Debian's nginx in front of two Saffrons
(two still demos of different sizes, each with a password, ``--base-path /vm/a/`` and
``/vm/b/``, ``--trusted-proxy 127.0.0.1``), one ``server`` with one ``location`` per VM
as the README gives it. Chromium opens both through nginx: each page shows its own
picture, signing in to one does not open the other, and a key reaches only its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saffron.bench.process import SaffronProcess, free_port
from tests.e2e.test_browser import wait_stats
from tests.support.artifacts import ARTIFACTS
from tests.support.canvas import read_canvas
from tests.support.nginx import Nginx, nginx
from tests.support.process import run_saffron

FPS = 15  # two demos and Chromium on two cores; the demos are still anyway
SIZES = {"a": (640, 360), "b": (480, 270), "c": (320, 180)}
"""a and b: still demos under --base-path; c: the pattern, without one, behind a location
that strips /vm/c/ and says so in X-Forwarded-Prefix."""
PASSWORD = "correct horse"


@dataclass
class Proxied:
    proxy: Nginx
    saffrons: dict[str, SaffronProcess]

    def url(self, vm: str) -> str:
        return f"{self.proxy.url}/vm/{vm}/"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    root = tmp_path_factory.mktemp("proxy")
    password = root / "password"
    password.write_text(PASSWORD + "\n")
    with ExitStack() as stack:
        saffrons = {}
        for vm, (w, h) in SIZES.items():
            source = ["--source", "pattern"] if vm == "c" else ["--still"]
            base = [] if vm == "c" else ["--base-path", f"/vm/{vm}/"]
            saffrons[vm] = stack.enter_context(
                run_saffron(
                    "serve",
                    *source,
                    "--fps",
                    str(FPS),
                    "--size",
                    f"{w}x{h}",
                    *base,
                    "--trusted-proxy",
                    "127.0.0.1",
                    "--password-file",
                    str(password),
                    "--spice",
                    f"127.0.0.1:{free_port()}",
                    log_name=f"saffron-proxied-{vm}.log",
                )
            )
        ports = {f"/vm/{vm}/": s.web_port or 0 for vm, s in saffrons.items()}
        stripped = {"/vm/c/": ports.pop("/vm/c/")}
        proxy = stack.enter_context(nginx(root / "nginx", ports, stripped))
        yield Proxied(proxy, saffrons)


def sign_in(page: Any, url: str) -> None:
    page.goto(url)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    wait_stats(page, "window.saffronStats.framesDecoded >= 1")


CHANGED = 2.0
"""Mean difference per channel (of 255) that is a change of picture: a recolour of the
demo moved it by 10 here, the other page's still picture by 0 (a late sharp refresh of a
still picture would move it by well under one)."""


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def changed(page: Any, before: np.ndarray, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        if difference(read_canvas(page), before) > CHANGED:
            return True
    return False


def test_two_vms_through_nginx_each_its_own_picture_sign_in_and_input(
    browser: Any, proxied: Proxied
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        a, b = context.new_page(), context.new_page()
        sign_in(a, proxied.url("a"))
        assert a.url == proxied.url("a"), "the sign-in leads back to the page under its path"

        # Signed in to a, b still asks for its own password.
        b.goto(proxied.url("b"))
        assert b.locator("input[name=password]").count() == 1, "a's sign-in opened b"
        sign_in(b, proxied.url("b"))

        # One cookie per Saffron, each on its own path: b's did not replace a's.
        cookies = {c["name"]: c["path"] for c in context.cookies()}
        assert cookies == {"saffron_session_vm_a": "/vm/a/", "saffron_session_vm_b": "/vm/b/"}
        a.reload()
        wait_stats(a, "window.saffronStats.framesDecoded >= 1")

        # Each shows its own picture.
        for vm, page in (("a", a), ("b", b)):
            w, h = SIZES[vm]
            stats = wait_stats(page, f"window.saffronStats.width === {w}")
            assert (stats["width"], stats["height"]) == (w, h)
            assert read_canvas(page).shape == (h, w, 3)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        a.screenshot(path=str(ARTIFACTS / "nginx-vm-a.png"))
        b.screenshot(path=str(ARTIFACTS / "nginx-vm-b.png"))

        # A key on a's page recolours a's demo, and b's stays as it was.
        a.wait_for_timeout(500)
        still_a, still_b = read_canvas(a), read_canvas(b)
        a.bring_to_front()
        a.locator("#screen").click()
        a.keyboard.press("KeyC")
        assert changed(a, still_a), "the key did not reach a"
        assert difference(read_canvas(b), still_b) < CHANGED, "a's key reached b"
        b.bring_to_front()
        b.locator("#screen").click()
        b.keyboard.press("KeyC")
        assert changed(b, still_b), "the key did not reach b"

        # Each Saffron saw its page come through the proxy, for the client nginx named.
        for vm in ("a", "b"):
            log = proxied.saffrons[vm].output()
            assert "127.0.0.1 (through proxy 127.0.0.1:" in log, log
            assert "signed in with the password" in log
    finally:
        context.close()


def test_a_saffron_behind_a_prefix_nginx_strips(browser: Any, proxied: Proxied) -> None:
    """c runs without --base-path; nginx strips /vm/c/ and names it in X-Forwarded-Prefix:
    the page's relative links and WebSocket work, and its cookie is on /vm/c/."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        sign_in(page, proxied.url("c"))
        assert page.url == proxied.url("c")
        stats = wait_stats(page, "window.saffronStats.framesDecoded > 5")
        assert (stats["width"], stats["height"]) == SIZES["c"]
        cookies = {c["name"]: c["path"] for c in context.cookies()}
        assert cookies == {"saffron_session_vm_c": "/vm/c/"}
    finally:
        context.close()


def test_spice_html5_through_nginx(browser: Any, proxied: Proxied) -> None:
    """spice-html5 from a's web port, through nginx: ``spice-html5/`` leads to its page
    told to use ``vm/a/spice``, which nginx upgrades to a WebSocket like the page's."""
    context = browser.new_context(viewport={"width": 1300, "height": 800})
    try:
        page = context.new_page()
        sign_in(page, proxied.url("a"))  # spice-html5's files are behind the sign-in too
        page.goto(proxied.url("a") + f"spice-html5/?password={PASSWORD.replace(' ', '%20')}")
        w, h = SIZES["a"]
        page.wait_for_function(
            f"""() => {{ const c = document.querySelector('#spice-screen canvas');
                        return c && c.width === {w} && c.height === {h}; }}""",
            timeout=30000,
        )
        assert "path=vm/a/spice" in page.url
        page.screenshot(path=str(ARTIFACTS / "nginx-spice-html5-vm-a.png"))
    finally:
        context.close()


def test_nginx_config_is_the_readme_s() -> None:
    """The README shows users the location block the test runs nginx with."""
    from tests.support.nginx import LOCATION, STRIPPED, UPGRADE_MAP

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    shown = LOCATION.format(path="/vm/web1/", port=8101)
    stripped = STRIPPED.format(path="/vm/web1/", port=8101)
    for line in (UPGRADE_MAP + shown + stripped).splitlines():
        assert line.strip() in readme, line
