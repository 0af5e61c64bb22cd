"""VMs that libvirt runs: `saffron serve --libvirt DOMAIN`, against a real libvirtd.

A libvirtd and a virtlogd are started for the session (tests/support/libvirtd.py);
each test defines a domain booting the test guest with a D-Bus display, peer to peer
(``p2p='yes'``, through ``virDomainOpenGraphicsFD``) or on the VM's own bus, and checks
what Chromium and spice-gtk see across a ``virsh destroy`` + ``virsh start``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saffron.bench import guest as build_guest
from saffron.bench.guest import Guest
from saffron.bench.process import free_port, start_saffron
from tests.e2e.test_qemu_web import canvas, stats, wait_for
from tests.support.artifacts import ARTIFACTS, publish
from tests.support.gtk import run_gtk_client
from tests.support.libvirtd import (
    CONF_PREFIX,
    QEMU_USER,
    defined_domain,
    guest_files,
    running_libvirtd,
)
from tests.support.process import run_saffron
from tests.support.qemu import wait_serial

P2P = "<graphics type='dbus' p2p='yes'/>"
BUS = "<graphics type='dbus'/>"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[bool]:
    """A running libvirtd (and virtlogd), stopped at the end if this session started it;
    True when it is ours (its read-only socket open to QEMU's user)."""
    work = Path(tempfile.mkdtemp(prefix=CONF_PREFIX))
    try:
        with running_libvirtd(work) as ours:
            yield ours
    except PermissionError as exc:
        pytest.skip(str(exc))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def guest() -> Guest:
    return build_guest.build_guest()


@pytest.fixture(scope="module")
def files(guest: Guest) -> Iterator[Path]:
    where = guest_files(guest)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def guest_shown(page: Any) -> bool:
    s = stats(page)
    return bool(s["width"] == build_guest.WIDTH and s["height"] == build_guest.HEIGHT)


def waits(page: Any) -> bool:
    """The page says it waits for the VM ("Waiting for the VM…" when it opened with no
    picture, "waiting for the VM" when the picture went)."""
    return "waiting for the vm" in page.locator("#status").inner_text().lower()


def band_moves(page: Any) -> None:
    band = slice(0, build_guest.BAND_ROWS_MAX)
    first = canvas(page, band).astype(int)
    wait_for(
        lambda: np.abs(canvas(page, band).astype(int) - first).mean() > 1,
        20,
        "the guest's band to move",
    )


def restart_and_time(page: Any, dom: Any) -> dict[str, float]:
    """``virsh destroy``, the page says it waits, ``virsh start``: seconds from the start
    to the first frame and to the guest's own 1024x768 picture, on the same page."""
    dom.destroy()
    try:
        wait_for(
            lambda: waits(page),
            20,
            "the page to say it waits for the VM",
        )
    except AssertionError as exc:
        status = page.locator("#status").inner_text()
        raise AssertionError(f"{exc}: the page says {status!r}, {stats(page)}") from None
    before = stats(page)["framesDecoded"]
    t0 = time.monotonic()
    dom.start()
    first = guest_at = 0.0
    deadline = t0 + 90
    while time.monotonic() < deadline:
        s = stats(page)
        if not first and s["framesDecoded"] > before:
            first = time.monotonic() - t0
        if first and guest_shown(page):
            guest_at = time.monotonic() - t0
            break
        time.sleep(0.05)
    assert guest_at, f"no picture back in 90 s after virsh start (first frame {first:.1f} s)"
    assert page.locator("#status").inner_text() == ""
    band_moves(page)  # the guest's init draws: it has booted
    drawing = time.monotonic() - t0
    return {
        "first_frame_s": round(first, 2),
        "guest_mode_s": round(guest_at, 2),
        "guest_drawing_s": round(drawing, 2),
    }


def gtk_sees_the_guest(report: dict[str, Any], dump: Path) -> None:
    assert (report.get("width"), report.get("height")) == (
        build_guest.WIDTH,
        build_guest.HEIGHT,
    ), report
    px = np.load(dump)
    top = px[: build_guest.BAND_ROWS_MAX, :, :3].astype(int)
    assert top.std() > 10, "spice-gtk's surface is not the guest's moving noise"


def test_p2p_browser_and_spice_gtk_across_a_restart(
    libvirtd: bool, browser: Any, guest: Guest, files: Path
) -> None:
    """p2p: Chromium and spice-gtk see the guest, keep their connections through
    ``virsh destroy`` + ``virsh start`` (a new QEMU, a new openGraphicsFD) and see it
    again; the time from ``virsh start`` to the picture is published."""
    with defined_domain("saffron-test-p2p", guest, files, P2P) as dom:
        spice = free_port()
        with run_saffron(
            "serve", "--libvirt", dom.name, "--spice", f"127.0.0.1:{spice}", "--fps", "30",
            log_name="saffron-libvirt-p2p.log",
        ) as saffron:  # fmt: skip
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            try:
                page.goto(saffron.url + "?codec=mjpeg")
                wait_for(lambda: guest_shown(page), 90, "the guest's screen in the browser")
                band_moves(page)
                assert page.title().startswith(dom.name)
                page.screenshot(path=str(ARTIFACTS / "libvirt-guest-browser.png"))

                dump = ARTIFACTS / "libvirt-p2p-gtk.npy"
                seen: dict[str, Any] = {}

                def restart() -> None:
                    gtk_sees_the_guest({"width": 1024, "height": 768}, dump)
                    seen.update(restart_and_time(page, dom))

                report = run_gtk_client(
                    spice,
                    "--codec", "mjpeg", "--settle", "3", "--seconds", "1",
                    "--still", "--quiet", "0",
                    "--cycles", "2", "--dump", str(dump), "--timeout", "170",
                    timeout=180,
                    on_phase={"still-1": restart},
                )  # fmt: skip
                assert seen, f"spice-gtk never reached its first picture: {report}"
                assert not report["errors"], report
                gtk_sees_the_guest(report, dump)  # the same connection, after the restart
                assert "attached to QEMU VM 'saffron-test-p2p'" in saffron.output()
                assert saffron.output().count("attached to QEMU") >= 2
                publish(
                    "libvirt-restart",
                    seen,
                    f"libvirt p2p, virsh start -> in the browser: first frame "
                    f"{seen['first_frame_s']} s, the guest's 1024x768 mode "
                    f"{seen['guest_mode_s']} s, its init drawing {seen['guest_drawing_s']} s",
                )
            finally:
                page.close()


def test_bus_refuses_root_and_says_what_to_do(libvirtd: bool, guest: Guest, files: Path) -> None:
    """Without p2p the VM's bus takes only QEMU's user: one line says so, and how to fix it."""
    if os.geteuid() != 0:
        pytest.skip("the refusal is of root")
    with defined_domain("saffron-test-bus-root", guest, files, BUS) as dom:
        assert dom.dbus_address().startswith("unix:path=/run/libvirt/qemu/dbus/")
        with run_saffron("serve", "--libvirt", dom.name) as saffron:
            wait_for(lambda: "shut Saffron" in saffron.output(), 30, "the refusal")
            time.sleep(3)  # retries: still said once
            out = saffron.output()
            lines = [ln for ln in out.splitlines() if "shut Saffron" in ln]
            assert len(lines) == 1, out
            assert f"run Saffron as the domain's QEMU user, {QEMU_USER}" in lines[0]
            assert P2P in lines[0]
            assert saffron.proc.poll() is None


def _runs_saffron(user: str, python: str, path: str) -> bool:
    done = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", python, "-c",
         "import saffron.cli, libvirt, numpy, av"],
        env={**os.environ, "PYTHONPATH": path}, capture_output=True, cwd="/",
    )  # fmt: skip
    return done.returncode == 0


@contextlib.contextmanager
def _python_for(user: str) -> Iterator[tuple[str, str]]:
    """A Python that ``user`` may run with Saffron and its packages: the interpreter and a
    PYTHONPATH. Where this checkout or its venv sits in a folder ``user`` cannot enter
    (root's home, a CI runner's work folder), Saffron and the venv's packages are linked
    (or copied) into a temporary folder it can read, removed afterwards."""
    site = sysconfig.get_paths()["purelib"]
    pythons = [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"]
    path = f"{ROOT / 'src'}:{site}"
    for python in pythons:
        if _runs_saffron(user, python, path):
            yield python, path
            return
    copy = Path(tempfile.mkdtemp(prefix="saffron-for-qemu-user-"))
    try:
        copy.chmod(0o755)
        for source, name in ((ROOT / "src", "src"), (Path(site), "site-packages")):
            try:
                shutil.copytree(source, copy / name, symlinks=True, copy_function=os.link)
            except (OSError, shutil.Error):  # another file system: copy instead
                shutil.rmtree(copy / name, ignore_errors=True)
                shutil.copytree(source, copy / name, symlinks=True)
        path = f"{copy / 'src'}:{copy / 'site-packages'}"
        for python in pythons:
            if _runs_saffron(user, python, path):
                yield python, path
                return
        raise AssertionError(f"no Python here that {user} may run with Saffron's packages")
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@contextlib.contextmanager
def _saffron_as_the_qemu_user(domain: str, log_name: str, *args: str) -> Iterator[Any]:
    """``saffron serve --libvirt domain`` run as QEMU's user (the VM's bus takes no other),
    on a free web port; ``args`` are more options."""
    port = free_port()
    with _python_for(QEMU_USER) as (python, path):
        argv = [
            "setpriv", f"--reuid={QEMU_USER}", f"--regid={QEMU_USER}", "--init-groups",
            python, "-m", "saffron.cli", "serve", "--libvirt", domain,
            "--web", f"127.0.0.1:{port}", "--fps", "30", *args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": path, "HOME": "/tmp"}
        with start_saffron(argv, ARTIFACTS / log_name, env=env, web_port=port) as saffron:
            yield saffron


def test_bus_as_the_qemu_user_across_a_restart(
    libvirtd: bool, browser: Any, guest: Guest, files: Path
) -> None:
    """Saffron run as libvirt-qemu attaches through the VM's bus, and through the new
    bus (a new address) after ``virsh destroy`` + ``virsh start``."""
    if not libvirtd:
        pytest.skip("a libvirtd this session did not start may not let QEMU's user read")
    with defined_domain("saffron-test-bus", guest, files, BUS) as dom:
        first_address = dom.dbus_address()
        with _saffron_as_the_qemu_user(dom.name, "saffron-libvirt-bus.log") as saffron:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            try:
                page.goto(saffron.url + "?codec=mjpeg")
                wait_for(lambda: guest_shown(page), 90, "the guest's screen in the browser")
                times = restart_and_time(page, dom)
                assert dom.dbus_address() != first_address
                assert "through its own bus" in saffron.output()
                assert saffron.output().count("attached to QEMU") >= 2, saffron.output()
                (ARTIFACTS / "libvirt-bus-restart.json").write_text(json.dumps(times))
            finally:
                page.close()


def test_the_words_for_a_domain_that_cannot_be_shown(
    libvirtd: bool, guest: Guest, files: Path
) -> None:
    """No such domain, or no D-Bus display: Saffron says so and exits 2."""
    done = subprocess.run(
        [sys.executable, "-m", "saffron.cli", "serve", "--libvirt", "saffron-test-none"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "there is no libvirt domain 'saffron-test-none' on qemu:///system" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    with defined_domain("saffron-test-nographics", guest, files, "", start=False) as dom:
        done = subprocess.run(
            [sys.executable, "-m", "saffron.cli", "serve", "--libvirt", dom.name],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2
        assert f"the libvirt domain '{dom.name}' has no D-Bus display" in done.stderr
        assert P2P in done.stderr


def test_a_domain_not_running_yet(libvirtd: bool, browser: Any, guest: Guest, files: Path) -> None:
    """Not running: Saffron says so, the page waits, and the VM shows once started."""
    with (
        defined_domain("saffron-test-later", guest, files, P2P, start=False) as dom,
        run_saffron("serve", "--libvirt", dom.name, "--fps", "30") as saffron,
    ):
        assert "is not running: waiting for it to start" in saffron.output()
        page = browser.new_page()
        try:
            page.goto(saffron.url + "?codec=mjpeg")
            wait_for(lambda: waits(page), 20, "the page to say it waits")
            dom.start()
            wait_for(lambda: guest_shown(page), 90, "the guest once started")
        finally:
            page.close()


AUDIO_P2P = (
    "<graphics type='dbus' p2p='yes'><audio id='1'/></graphics>"
    "<audio id='1' type='dbus'/>"
    "<sound model='ich9'><audio id='1'/></sound>"
)
"""libvirt 9.0's form of a D-Bus display with sound (the ``audio='1'`` attribute is refused)."""


def test_p2p_sound_on_qemu_7_2_is_not_asked_for(libvirtd: bool, guest: Guest, files: Path) -> None:
    """QEMU 7.2 (libvirt's) crashes when an audio listener registers over a peer-to-peer
    connection (it keys listeners by a bus name that connection has none of): Saffron
    leaves the sound alone there, says so, and the VM keeps running."""
    with defined_domain("saffron-test-audio", guest, files, AUDIO_P2P) as dom, run_saffron(
        "serve", "--libvirt", dom.name, log_name="saffron-libvirt-audio.log"
    ) as saffron:  # fmt: skip
        wait_for(lambda: "attached to QEMU" in saffron.output(), 60, "the attach")
        time.sleep(2)
        assert dom.running(), "the VM crashed"
        assert "crashes when sound is asked for over a peer-to-peer" in saffron.output()
        assert "QEMU's display is gone" not in saffron.output()


CLIPBOARD = (
    "<channel type='qemu-vdagent'><source><clipboard copypaste='yes'/></source>"
    "<target type='virtio' name='com.redhat.spice.0'/></channel>"
)
"""A qemu-vdagent channel (QEMU's ``clipboard=on``) on the virtio-serial port a guest
agent reads: QEMU's D-Bus clipboard then has a guest to talk to."""
SOUND_AND_CLIPBOARD = (
    "<graphics type='dbus'><audio id='1'/></graphics>"
    "<audio id='1' type='dbus'/>"
    "<sound model='ac97'><audio id='1'/></sound>" + CLIPBOARD
)
"""Sound and clipboard as libvirt 9.0 writes them: the card's ``<audio id>`` names a D-Bus
audiodev the display plays, and the clipboard's channel."""
PCSPK = ("-machine", "pcspk-audiodev=audio1")
"""The test guest beeps on the PC speaker, which libvirt 9.0 cannot give an audiodev
(its ``<sound model='pcspk'>`` is ``-soundhw pcspk``, which QEMU 7.2 no longer has): the
speaker plays into libvirt's ``audio1`` through ``<qemu:commandline>``."""
HOST_TEXT = "from the host, through libvirt ✓"


def test_bus_sound_and_clipboard(libvirtd: bool, guest: Guest, files: Path) -> None:
    """On the VM's own bus (where QEMU 7.2 takes an audio listener), a domain with a D-Bus
    audiodev and a qemu-vdagent channel: Saffron plays the guest's 440 Hz tone to
    spice-gtk, and spice-gtk's copy reaches the guest's clipboard."""
    if not libvirtd:
        pytest.skip("a libvirtd this session did not start may not let QEMU's user read")
    spice = free_port()
    with (
        defined_domain(
            "saffron-test-sound", guest, files, SOUND_AND_CLIPBOARD, qemu_args=PCSPK
        ) as dom,
        _saffron_as_the_qemu_user(
            dom.name, "saffron-libvirt-sound.log", "--spice", f"127.0.0.1:{spice}"
        ) as saffron,
    ):
        wait_serial(dom.serial, "saffron-guest: ready", 90)
        wait_serial(dom.serial, "saffron-guest: agent connected", 30)
        out = saffron.output()
        assert "listening to the guest's sound" in out, out
        assert "sharing the guest's clipboard" in out, out
        report = run_gtk_client(spice, "--tone", "3", "--codec", "mjpeg", timeout=90)
        assert report["errors"] == [], report
        assert report.get("playback_start") == [1, 2, 48000], report  # S16, stereo, 48 kHz
        audio = report["audio"]
        assert audio.get("peak_hz") == pytest.approx(build_guest.TONE_HZ, rel=0.03), audio
        report = run_gtk_client(spice, "--copy", HOST_TEXT, timeout=90)
        assert report["errors"] == [], report
        wait_serial(dom.serial, f"saffron-guest: clipboard {HOST_TEXT}", 30)
        assert dom.running()


def test_p2p_clipboard_both_ways(libvirtd: bool, guest: Guest, files: Path) -> None:
    """p2p with a qemu-vdagent channel (QEMU 7.2's D-Bus clipboard takes a peer-to-peer
    peer, unlike its sound): spice-gtk's copy reaches the guest, the guest's reaches it."""
    spice = free_port()
    with (
        defined_domain("saffron-test-p2p-clipboard", guest, files, P2P + CLIPBOARD) as dom,
        run_saffron(
            "serve", "--libvirt", dom.name, "--spice", f"127.0.0.1:{spice}",
            log_name="saffron-libvirt-p2p-clipboard.log",
        ) as saffron,
    ):  # fmt: skip
        wait_serial(dom.serial, "saffron-guest: agent connected", 90)
        wait_for(lambda: "attached to QEMU" in saffron.output(), 60, "the attach")
        assert "sharing the guest's clipboard" in saffron.output()
        report = run_gtk_client(spice, "--copy", HOST_TEXT, timeout=90)
        assert report["errors"] == [], report
        wait_serial(dom.serial, f"saffron-guest: clipboard {HOST_TEXT}", 30)
        assert f"{build_guest.GUEST_TEXT} 1" in report.get("offered", []), report
        assert dom.running()
